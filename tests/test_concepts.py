"""Deep feature factorization: NMF against scikit-learn, concepts recovered by hand, labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from camlens.concepts import concept_overlays, factorize, nmf, save_concepts
from camlens.errors import InputError
from tests.conftest import GapNet, HandNet, hook_count, tiny_tv

A = torch.tensor([1.0, 0.0, 1.0, 0.0])  # concept a lights channels 0 and 2
B = torch.tensor([0.0, 2.0, 0.0, 1.0])  # concept b lights channels 1 and 3


def _two_concepts() -> tuple[Tensor, Tensor]:
    """Images (2, 4, 6, 6) whose positions are a or b times a positive intensity: the left half
    of image 0 and the top half of image 1 show a, the rest b. Returns images and the a-mask."""
    g = torch.Generator().manual_seed(0)
    is_a = torch.zeros(2, 6, 6, dtype=torch.bool)
    is_a[0, :, :3] = True
    is_a[1, :3, :] = True
    strength = 0.5 + torch.rand(2, 6, 6, generator=g)
    vec = torch.where(is_a[..., None], A, B)  # (2, 6, 6, 4)
    x = (vec * strength[..., None]).movedim(-1, 1).contiguous()
    x[:, 0] = torch.where(~is_a, -3.0, x[:, 0])  # negative where b is: the ReLU removes it
    return x, is_a


def _head() -> Tensor:
    # class 0 reads a, class 1 reads b, class 2 a bit of everything
    return torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0], [0.4, 0.4, 0.4, 0.4]])


def test_nmf_matches_scikit_learn_on_reconstruction_error() -> None:
    decomposition = pytest.importorskip("sklearn.decomposition")
    torch.manual_seed(0)
    model = GapNet(channels=12).eval()
    with torch.no_grad():
        acts = model.features(torch.randn(6, 3, 20, 20))
    v = acts.movedim(1, -1).reshape(-1, 12)
    for k in (2, 4, 6):
        errors = {}
        for init in ("nndsvda", "random"):
            sk = decomposition.NMF(k, init=init, solver="mu", max_iter=200, tol=0, random_state=0)
            sk.fit(v.numpy())
            errors[init] = float(sk.reconstruction_err_)
        w, h = nmf(v, k, iters=200)
        ours = float((v - w @ h).norm())
        assert ours <= min(errors.values()) * 1.05, k
        # the same init and updates as scikit-learn's: the same error, not only as good
        assert ours == pytest.approx(errors["nndsvda"], rel=1e-3), k
        assert bool((w >= 0).all()) and bool((h >= 0).all())


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_no_worse_than_pytorch_grad_cams_dff() -> None:
    peer = pytest.importorskip("pytorch_grad_cam.feature_factorization.deep_feature_factorization")
    torch.manual_seed(0)
    model = GapNet(channels=12).eval()
    x = torch.randn(4, 3, 20, 20)
    with torch.no_grad():
        acts = model.features(x).numpy()
    v = acts.transpose(1, 0, 2, 3).reshape(12, -1)  # the peer factorises (C, positions)
    assert (v.min(axis=1) == 0).all()  # ReLU'd: the peer's offset is 0, the same matrix
    for k in (3, 5):
        concepts, raw = peer.dff(acts.copy(), k)
        theirs = np.linalg.norm(v - concepts @ raw.transpose(1, 0, 2, 3).reshape(k, -1))
        ours = factorize(model, x, k, "features").error * np.linalg.norm(v)
        assert ours <= theirs * 1.05, k


def test_nmf_is_seeded_and_descends() -> None:
    v = torch.rand(50, 8)
    w1, h1 = nmf(v, 3, iters=20, seed=4, init="random")
    w2, h2 = nmf(v, 3, iters=20, seed=4, init="random")
    w3, _ = nmf(v, 3, iters=20, seed=5, init="random")
    assert torch.equal(w1, w2) and torch.equal(h1, h2) and not torch.equal(w1, w3)
    errors = [float((v - torch.mm(*nmf(v, 3, iters=n))).norm()) for n in (0, 5, 50)]
    assert errors[0] > errors[1] > errors[2]


def test_two_concepts_are_found_where_they_are() -> None:
    model = HandNet(_head(), torch.tensor([0.0, 0.0, 100.0])).train()
    x, is_a = _two_concepts()
    out = factorize(model, x, 2, "features", iters=500)
    assert out.concepts.shape == (2, 4) and out.raw.shape == (2, 2, 6, 6)
    assert out.maps.shape == (2, 2, 6, 6) and out.layer == "features"
    cos = out.concepts @ torch.stack([A / A.norm(), B / B.norm()]).T  # unit concept vectors
    first_is_a = bool(cos[0, 0] > cos[0, 1])
    order = [0, 1] if first_is_a else [1, 0]
    assert cos[order[0], 0] > 0.999 and cos[order[1], 1] > 0.999
    # the weights sit where each concept is, and the factors rebuild the ReLU'd activations
    ra, rb = out.raw[:, order[0]], out.raw[:, order[1]]
    assert float(ra[~is_a].max()) < 1e-2 * float(ra.max())
    assert float(rb[is_a].max()) < 1e-2 * float(rb.max())
    rebuilt = torch.einsum("kc,bkhw->bchw", out.concepts, out.raw)
    torch.testing.assert_close(rebuilt, x.clamp_min(0), atol=1e-2, rtol=1e-2)
    assert out.error < 1e-2
    # labels: a -> class 0, b -> class 1; the bias of class 2 (100) is not used
    assert out.labels is not None and out.label_scores is not None
    assert out.labels[order[0], 0] == 0 and out.labels[order[1], 0] == 1
    want = _head() @ (A / A.norm())
    assert out.label_scores[order[0], 0] == pytest.approx(float(want[0]), abs=1e-3)
    # maps: upsampled weights over each concept's peak in the batch
    assert float(out.maps.amax(dim=(0, 2, 3)).min()) == pytest.approx(1.0)
    assert model.training and hook_count(model) == 0


def test_maps_are_upsampled_and_comparable_across_images() -> None:
    torch.manual_seed(0)
    model = GapNet(channels=10).eval()
    x = torch.randn(3, 3, 24, 24)
    out = factorize(model, x, 3, "features")
    assert out.raw.shape == (3, 3, 12, 12) and out.maps.shape == (3, 3, 24, 24)
    peak = out.maps.amax(dim=(0, 2, 3))
    assert peak.tolist() == pytest.approx([1.0] * 3)
    assert bool((out.maps >= 0).all())
    assert out.labels is not None and out.labels.shape == (3, 3)  # GAP + linear head found
    # chunks of the batch give the same activations, so the same factorisation
    again = factorize(model, x, 3, "features", batch_size=2)
    torch.testing.assert_close(again.concepts, out.concepts)


def test_tokens_and_a_head_that_is_not_gap_linear() -> None:
    model = tiny_tv().eval()
    out = factorize(model, torch.randn(2, 3, 32, 32), 4, "encoder.layers.encoder_layer_1.ln_1")
    assert out.raw.shape == (2, 4, 4, 4) and out.maps.shape == (2, 4, 32, 32)
    assert out.concepts.shape == (4, 16) and out.labels is None  # a class-token head
    assert hook_count(model) == 0


def test_picture(tmp_path) -> None:
    torch.manual_seed(0)
    model = GapNet(channels=10).eval()
    x = torch.rand(2, 3, 24, 24)
    out = factorize(model, x, 3, "features")
    pics = concept_overlays(x, out.maps, preset="none")
    assert pics.shape == (2, 24, 24, 3) and pics.dtype == torch.uint8
    # alpha 0 leaves the image; full alpha on a pixel with weight 1 paints the concept's colour
    plain = concept_overlays(x, out.maps, alpha=0.0, preset="none", grey=False)
    assert torch.equal(plain, (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8))
    grey = concept_overlays(x, out.maps, alpha=0.0, preset="none")
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    assert torch.equal(grey[..., 1], (luma * 255).round().to(torch.uint8))
    # each pixel: its strongest concept's colour, by that concept's weight over the image's top
    from camlens.viz import colormap_lut

    colours = (colormap_lut("tab10") * 255).round().int()
    maps = torch.zeros(1, 3, 2, 2)
    maps[0, 2, 0, 0], maps[0, 0, 0, 0], maps[0, 1, 1, 0] = 0.5, 0.2, 0.25
    one = concept_overlays(torch.zeros(1, 3, 2, 2), maps, alpha=1.0, preset="none")
    assert one[0, 0, 0].tolist() == colours[2].tolist()  # 0.5 / 0.5: full colour
    assert one[0, 1, 0].tolist() == (colours[1] * 0.5).round().int().tolist()  # 0.25 / 0.5
    assert one[0, 1, 1].tolist() == [0, 0, 0]
    batch_scale = concept_overlays(torch.zeros(1, 3, 2, 2), maps, 1.0, "none", per_image=False)
    assert batch_scale[0, 0, 0].tolist() == (colours[2] * 0.5).round().int().tolist()
    path = save_concepts(x, out, tmp_path / "c.png", names=["a", "b", "c", "d", "e"], preset="none")
    assert path.is_file() and path.stat().st_size > 1000


def test_bad_arguments() -> None:
    model = GapNet(channels=10).train()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(InputError, match="k must be"):
        factorize(model, x, 11, "features")
    assert model.training and hook_count(model) == 0  # given back as it came, also on errors
    with pytest.raises(InputError, match="one layer"):
        factorize(model, x, 2, ["features.1", "features.3"])
    with pytest.raises(InputError, match="non-negative"):
        nmf(-torch.rand(4, 4), 2)
    with pytest.raises(InputError, match="init"):
        nmf(torch.rand(4, 4), 2, init="svd")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_the_models_device() -> None:
    torch.manual_seed(0)
    model = GapNet(channels=10).eval().cuda()
    x = torch.randn(3, 3, 24, 24, device="cuda")
    out = factorize(model, x, 3, "features")
    cpu = factorize(model.cpu(), x.cpu(), 3, "features")
    assert out.maps.device.type == "cuda" and out.labels is not None
    torch.testing.assert_close(out.concepts.cpu(), cpu.concepts, atol=1e-3, rtol=1e-3)

"""The per-channel terms T_k of each channel-sum method (what ``eigen_smooth`` projects):
each T_k = w_k A^k with w_k computed by hand on small tensors, their sum over k the method's
raw map, for one target (B, K, *spatial) and several ((B, T, K, *spatial)), images and volumes,
with the defaults the methods document."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from camlens.cams import ablationcam, cam, iscam, scorecam, sscam, xgradcam
from camlens.cams.ablation import ablationcam_terms
from camlens.cams.cam import cam_terms
from camlens.cams.fem import fem, fem_terms, randomcam, randomcam_terms
from camlens.cams.finer import finercam, finercam_terms
from camlens.cams.gradient import xgradcam_terms
from camlens.cams.score import iscam_terms, scorecam_terms, sscam_terms, weighted_terms
from camlens.errors import MethodNotFoundError
from camlens.maps import minmax, upsample
from camlens.probe import Probe
from tests.cams.test_rerun_units import TARGETS, LayerRun, head, input_probe, signed_acts
from tests.conftest import whole

B_, K_ = 2, 3


def by_loops(w: Tensor, acts: Tensor) -> Tensor:
    """T[b, k] = w[b, k] A[b, k], or T[b, t, k] = w[b, k, t] A[b, k], written as loops."""
    several = w.ndim == 3
    lead = (w.shape[0], w.shape[2]) if several else (w.shape[0],)
    out = torch.zeros(*lead, *acts.shape[1:], dtype=acts.dtype)
    for b in range(acts.shape[0]):
        for k in range(acts.shape[1]):
            if several:
                for t in range(w.shape[2]):
                    out[b, t, k] = w[b, k, t] * acts[b, k]
            else:
                out[b, k] = w[b, k] * acts[b, k]
    return out


@pytest.mark.parametrize("spatial", [(4, 5), (2, 4, 5)], ids=["image", "volume"])
def test_weighted_terms_by_hand(spatial: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(B_, K_, *spatial, generator=gen, dtype=torch.float64)
    w = torch.randn(B_, K_, generator=gen, dtype=torch.float64)
    got = weighted_terms(w, acts)
    assert got.shape == (B_, K_, *spatial)
    assert torch.equal(got, by_loops(w, acts))
    w3 = torch.randn(B_, K_, 4, generator=gen, dtype=torch.float64)  # T = 4 targets
    got = weighted_terms(w3, acts)
    assert got.shape == (B_, 4, K_, *spatial)
    assert torch.equal(got, by_loops(w3, acts))


@pytest.mark.parametrize("spatial", [(4, 5), (2, 4, 5)], ids=["image", "volume"])
def test_cam_terms_by_hand(spatial: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(1)
    acts = torch.randn(B_, K_, *spatial, generator=gen, dtype=torch.float64)
    w = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], dtype=torch.float64)
    got = cam_terms(acts, w)
    assert got.shape == (B_, K_, *spatial) and torch.equal(got, by_loops(w, acts))
    assert torch.allclose(got.sum(dim=1), cam(acts, w), atol=1e-12)


# -- the Score-CAM family: w_k = softmax_k(C_k), C_k scored on masked images by hand ----------


def score(x: Tensor, cls: int) -> Tensor:
    return head(x[None])[0, cls]


def hand_weights(acts: Tensor, probe: Probe, method: str, targets: Tensor) -> Tensor:
    """(B, K) softmax weights of Score-CAM, SS-CAM (activation noise, N = 10, sigma = 2) or
    IS-CAM (10 steps), each masked image scored one by one."""
    bsz, k_ch = acts.shape[:2]
    size = tuple(probe.images.shape[2:])
    c = torch.empty(bsz, k_ch)
    if method == "sscam":  # every item's noise drawn at once (one chunk), image, channel, sample
        gen = torch.Generator().manual_seed(0)
        noise = torch.randn((bsz * k_ch * 10, *size), generator=gen) * 2.0
    for b in range(bsz):
        x, cls = probe.images[b], int(targets[b])
        for k in range(k_ch):
            up = upsample(acts[b, k][None], size)[0]
            mask = minmax(up[None])[0]
            if method == "scorecam":
                c[b, k] = score(x * mask, cls)
            elif method == "iscam":
                c[b, k] = sum(score(x * (i / 10) * mask, cls) for i in range(1, 11)) / 10
            else:
                first = (b * k_ch + k) * 10
                noisy = [minmax((up + noise[first + n])[None])[0] for n in range(10)]
                c[b, k] = sum(score(x * m, cls) for m in noisy) / 10
    return c.softmax(dim=1)


SCORE = {
    "scorecam": (scorecam_terms, lambda a, p: scorecam(a, p)),
    "sscam": (sscam_terms, lambda a, p: sscam(a, p, 10, 2.0, "activation")),
    "iscam": (iscam_terms, lambda a, p: iscam(a, p, steps=10)),
}


@pytest.mark.parametrize("method", list(SCORE))
def test_score_terms_by_hand_with_the_defaults(method: str) -> None:
    terms_fn, raw_fn = SCORE[method]
    acts = signed_acts()  # signed channels, constant ones, a biased head
    terms = terms_fn(acts, input_probe(acts, 1000))
    w = hand_weights(acts, input_probe(acts, 1000), method, TARGETS)
    assert terms.shape == (3, 3, 4, 4)
    assert torch.allclose(terms, by_loops(w, acts), atol=1e-6)
    assert torch.allclose(terms.sum(dim=1), raw_fn(acts, input_probe(acts, 1000)), atol=1e-6)


@pytest.mark.parametrize("method", list(SCORE))
def test_score_terms_with_several_targets(method: str) -> None:
    """(B, T) targets: (B, T, K, h, w), column t the terms of target column t alone."""
    terms_fn, raw_fn = SCORE[method]
    acts = signed_acts()
    both = torch.stack([TARGETS, torch.tensor([1, 1, 0])], dim=1)
    terms = terms_fn(acts, input_probe(acts, 1000, both))
    assert terms.shape == (3, 2, 3, 4, 4)
    for t in range(2):
        one = terms_fn(acts, input_probe(acts, 1000, both[:, t]))
        assert torch.allclose(terms[:, t], one, atol=1e-6)
    assert not torch.allclose(terms[:, 0], terms[:, 1])
    raw = raw_fn(acts, input_probe(acts, 1000, both))
    assert torch.allclose(terms.sum(dim=2), raw, atol=1e-6)


def test_scorecam_scores_each_informative_channel_once() -> None:
    """One masked image per non-constant channel (6 of the 9 here) and one black image per
    image for the 3 constant ones: 9 images through the model, for the terms as for the map."""
    acts = signed_acts()
    for fn in (scorecam_terms, scorecam):
        seen: list[int] = []
        images = input_probe(acts, 1000).images

        def run(x: Tensor, _owner: Tensor, seen: list[int] = seen) -> Tensor:
            seen.append(x.shape[0])
            return head(x)

        fn(acts, Probe(run, images, acts, TARGETS, None))
        assert sum(seen) == 9


# -- Ablation-CAM: w_k = (y - y_k) / y ----------------------------------------------------------


@pytest.mark.parametrize("volume", [False, True])
def test_ablationcam_terms_by_hand(volume: bool) -> None:
    """Scores below 1 in magnitude, so the default eps = 1e-7 (not a larger one) is the guard
    that leaves them alone; an all-zero channel has weight 0."""
    acts = signed_acts()
    acts[0, 2] = 0.0
    if volume:
        acts = torch.stack([acts, 0.5 * acts.flip(-1)], dim=2)  # (3, 3, 2, 4, 4)
    y = head(acts).gather(1, TARGETS[:, None])[:, 0]
    assert 1e-3 < float(y.abs().min()) < 1.0
    terms = ablationcam_terms(acts, Probe(LayerRun(), acts, acts, TARGETS, y))
    w = torch.zeros(3, 3)
    for b in range(3):
        for k in range(3):
            if bool(acts[b, k].ne(0).any()):
                ablated = acts[b].clone()
                ablated[k] = 0
                w[b, k] = (y[b] - score(ablated, int(TARGETS[b]))) / y[b]
    assert terms.shape == acts.shape
    assert torch.allclose(terms, by_loops(w, acts), atol=1e-5)
    raw = ablationcam(acts, Probe(LayerRun(), acts, acts, TARGETS, y))
    assert torch.allclose(terms.sum(dim=1), raw, atol=1e-6)


# -- FEM and Random-CAM ---------------------------------------------------------------------


def test_fem_terms_defaults_by_hand() -> None:
    """k = 2 and weighting="paper": mu_k 1[A^k > mu_k + 2 sigma_k]. Channel 0 has a value
    between mu + 2 sigma and mu + 3 sigma, so the default k is seen."""
    acts = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    acts[0, 0, 1, 2] = acts[0, 0, 3, 3] = 1.0  # z = (7 / 8) / (sqrt(7) / 8) = 2.65 for both
    acts[0, 1] = -1.0
    acts[0, 1, 0, 0] = 20.0
    expected = torch.zeros_like(acts)
    for k in range(2):
        a = acts[0, k]
        mu, sigma = a.mean(), a.std(correction=0)
        expected[0, k] = mu * (a > mu + 2 * sigma).double()
    assert bool((acts[0, 0] > acts[0, 0].mean() + 2 * acts[0, 0].std(correction=0)).any())
    assert not bool((acts[0, 0] > acts[0, 0].mean() + 3 * acts[0, 0].std(correction=0)).any())
    assert torch.equal(fem_terms(acts), expected)
    assert torch.equal(fem_terms(acts).sum(dim=1), fem(acts))
    msg = "weighting must be 'paper' or 'fraction', got 'x'"
    with pytest.raises(ValueError, match=whole(msg)):
        fem_terms(acts, weighting="x")


def test_randomcam_terms_by_hand() -> None:
    """w ~ U[-1, 1] drawn in the activations' dtype from seed 0 (the default)."""
    acts = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    w = torch.rand(2, 3, generator=gen, dtype=torch.float64) * 2 - 1
    terms = randomcam_terms(acts)
    assert terms.dtype == torch.float64
    assert torch.equal(terms, by_loops(w, acts))
    assert torch.equal(terms.sum(dim=1), randomcam(acts))


# -- XGrad-CAM and Finer-CAM ----------------------------------------------------------------


def test_xgradcam_terms_by_hand() -> None:
    """w_k = sum_ij (A^k_ij / sum A^k) g^k_ij; a channel summing to 0 gets w_k = 0."""
    acts = torch.tensor([[[[1.0, 3.0]], [[2.0, -2.0]], [[0.5, 0.5]]]], dtype=torch.float64)
    grads = torch.tensor([[[[4.0, -1.0]], [[5.0, 7.0]], [[2.0, 6.0]]]], dtype=torch.float64)
    w = torch.tensor([[(1 * 4 + 3 * -1) / 4, 0.0, (0.5 * 2 + 0.5 * 6) / 1]], dtype=torch.float64)
    terms = xgradcam_terms(acts, grads)
    assert torch.equal(terms, by_loops(w, acts))
    assert torch.equal(terms.sum(dim=1), xgradcam(acts, grads))


def test_finercam_terms() -> None:
    """The base's terms on the contrast's gradients: Grad-CAM's mean_ij g^k A^k by default."""
    gen = torch.Generator().manual_seed(2)
    acts = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    grads = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    terms = finercam_terms(acts, grads)
    assert torch.allclose(terms, by_loops(grads.mean(dim=(2, 3)), acts), atol=1e-12)
    assert torch.allclose(terms.sum(dim=1), finercam(acts, grads), atol=1e-12)
    hires = finercam_terms(acts, grads, base="hirescam")
    assert torch.equal(hires, grads * acts)
    msg = (
        "eigen_smooth with finercam needs a base with per-channel terms (gradcam, gradcampp, "
        "layercam, hirescam, xgradcam, gradcam_elementwise); got 'eigengradcam'"
    )
    with pytest.raises(MethodNotFoundError, match=whole(msg)):
        finercam_terms(acts, grads, base="eigengradcam")
    msg = (
        "finercam's base must be a gradient method that takes (acts, grads), such as gradcam, "
        "gradcampp, layercam, hirescam or xgradcam; got 'scorecam'"
    )
    for fn in (finercam_terms, finercam):
        with pytest.raises(MethodNotFoundError, match=whole(msg)):
            fn(acts, grads, base="scorecam")

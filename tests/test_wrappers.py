"""eigen_smooth, aug_smooth and sess: by hand, as identities of the plain method, and against
pytorch-grad-cam."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import camlens
from camlens.errors import InputError
from camlens.maps import minmax, to_heatmap
from camlens.wrappers import AUGMENTATIONS, _gaussian_blur, principal_projection, sess_windows


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    return model, torch.randn(2, 3, 64, 64)


# -- eigen_smooth ---------------------------------------------------------------------------------


def test_principal_projection_by_hand() -> None:
    """Positions (row-major) carry the channel vectors [1, 0], [3, 0], [1, 1], [3, 1]: centred
    [-1, -.5], [1, -.5], [-1, .5], [1, .5], covariance diag(4, 1), so v_1 = +-[1, 0] and the
    projection is +-[-1, 1, -1, 1]; it correlates positively with the channel sums [1, 3, 2, 4]
    for the + sign. Without the centring v_1 would lean towards the mean [2, .5]."""
    terms = torch.tensor([[[[1.0, 3.0], [1.0, 3.0]], [[0.0, 0.0], [1.0, 1.0]]]])
    out = principal_projection(terms.double())
    assert torch.allclose(out, torch.tensor([[[-1.0, 1.0], [-1.0, 1.0]]], dtype=torch.float64))
    assert torch.allclose(principal_projection(-terms.double()), -out)  # sign follows the sum


def test_eigen_smooth_is_the_projection_of_the_method_terms(resnet) -> None:
    from camlens.cams.gradient import gradcam_terms

    model, x = resnet
    ex = camlens.explain(model, x, "gradcam", layer="layer3", target=[3, 7], eigen_smooth=True)
    acts: dict[str, torch.Tensor] = {}
    plain = camlens.explain(model, x, "hirescam", layer="layer3", target=[3, 7])  # sanity
    assert plain.raw["layer3"].shape == ex.raw["layer3"].shape == (2, 4, 4)
    # the same activations and gradients through a hand-made capture
    handle = model.layer3.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    try:
        out = model(x)
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(out.gather(1, torch.tensor([[3], [7]])).sum(), acts["a"])
    expected = principal_projection(gradcam_terms(acts["a"].detach(), g))
    assert torch.allclose(ex.raw["layer3"], expected, atol=1e-5)
    assert not torch.allclose(minmax(ex.raw["layer3"]), minmax(plain.raw["layer3"]), atol=1e-2)
    # several targets per image: column 0 is the call above
    two = camlens.explain(
        model, x, "gradcam", layer="layer3", target=torch.tensor([[3, 1], [7, 2]]),
        eigen_smooth=True,
    )  # fmt: skip
    assert torch.allclose(two.raw["layer3"][:, 0], ex.raw["layer3"], atol=1e-5)
    with pytest.raises(InputError, match="terms"):
        camlens.explain(model, x, "eigencam", layer="layer4", eigen_smooth=True)


def test_eigen_smooth_agrees_with_pytorch_grad_cam(resnet) -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    targets = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    model, _ = resnet
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with pgc.GradCAM(model=model, target_layers=[model.layer3]) as extractor:
        theirs = extractor(
            input_tensor=x,
            targets=[targets.ClassifierOutputTarget(c) for c in (3, 7)],
            eigen_smooth=True,
        )
    theirs = minmax(torch.from_numpy(theirs).float())
    ex = camlens.explain(model, x, "gradcam", layer="layer3", target=[3, 7], eigen_smooth=True)
    raw = ex.raw["layer3"]
    for b in range(2):  # their sign is LAPACK's: one of the two signs is theirs
        errors = [
            (to_heatmap(s * raw[b : b + 1], (96, 96))[0] - theirs[b]).abs().max() for s in (1, -1)
        ]
        assert min(errors) < 2e-2


# -- aug_smooth ------------------------------------------------------------------------------


def test_aug_smooth_is_the_mean_of_six_plain_maps_mapped_back(resnet) -> None:
    model, x = resnet
    ex = camlens.explain(model, x, "gradcam", layer="layer3", target=[3, 7], aug_smooth=True)
    maps, raws = [], []
    for flip, factor in AUGMENTATIONS:
        xa = (x.flip(-1) if flip else x) * factor
        one = camlens.explain(model, xa, "gradcam", layer="layer3", target=[3, 7])
        maps.append(one.maps.flip(-1) if flip else one.maps)
        raws.append(one.raw["layer3"].flip(-1) if flip else one.raw["layer3"])
    assert len(maps) == 6
    assert torch.allclose(ex.maps, minmax(torch.stack(maps).mean(0)), atol=1e-5)
    assert torch.allclose(ex.raw["layer3"], torch.stack(raws).mean(0), atol=1e-5)
    assert torch.equal(ex.targets, torch.tensor([3, 7]))
    plain = camlens.explain(model, x, "gradcam", layer="layer3", target=[3, 7])
    assert torch.allclose(ex.scores, plain.scores, atol=1e-5)


def test_aug_smooth_several_targets_are_decided_on_the_originals(resnet) -> None:
    model, x = resnet
    top = camlens.explain(model, x, "layercam", layer="layer3", target=camlens.targets.top(2),
                          aug_smooth=True)  # fmt: skip
    assert top.maps.shape == (2, 2, 64, 64)
    assert torch.equal(top.targets, model(x).topk(2, dim=1).indices)
    first = camlens.explain(model, x, "layercam", layer="layer3", target=top.targets[:, 0],
                            aug_smooth=True)  # fmt: skip
    assert torch.allclose(top.maps[:, 0], first.maps, atol=1e-5)
    # gradient-free methods too (one batched pass of the Score-CAM probe)
    assert camlens.explain(model, x, "eigencam", layer="layer4", aug_smooth=True).maps.shape == (
        2, 64, 64,
    )  # fmt: skip


def test_aug_smooth_agrees_with_pytorch_grad_cam(resnet) -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    pytest.importorskip("ttach")
    targets = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    model, _ = resnet
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    with pgc.GradCAM(model=model, target_layers=[model.layer3]) as extractor:
        theirs = extractor(
            input_tensor=x,
            targets=[targets.ClassifierOutputTarget(c) for c in (3, 7)],
            aug_smooth=True,
        )
    theirs = minmax(torch.from_numpy(theirs).float())
    ex = camlens.explain(model, x, "gradcam", layer="layer3", target=[3, 7], aug_smooth=True)
    assert (ex.maps - theirs).abs().max() < 3e-2  # OpenCV vs torch bilinear resizing


# -- SESS -----------------------------------------------------------------------------------------


def test_sess_windows_and_blur_by_hand() -> None:
    # 224: scales 224, 288, ..., 928 (step 64): 1 + 4 + 4 + 4 + 9 * 4 + 16 * 3 + 25 = 122
    scales = [224 + 64 * i for i in range(12)]
    assert len(sess_windows(224, 224, scales)) == 122
    assert sess_windows(4, 4, [4, 6]) == [(4, 0, 0), (6, 0, 0), (6, 2, 0), (6, 0, 2), (6, 2, 2)]
    cv2 = pytest.importorskip("cv2")
    img = np.random.default_rng(0).random((20, 24)).astype(np.float32)
    ours = _gaussian_blur(torch.from_numpy(img)[None])[0].numpy()
    assert np.allclose(ours, cv2.GaussianBlur(img, (11, 11), 5.0, 0), atol=1e-5)


def test_sess_agrees_with_pytorch_grad_cam(resnet) -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    targets = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    if not hasattr(pgc, "SESS"):
        pytest.skip("this pytorch-grad-cam has no SESS")
    model, x = resnet
    cam = pgc.SESS(model, [model.layer3], num_scales=3)
    theirs = cam(x, [targets.ClassifierOutputTarget(c) for c in (3, 7)])
    theirs = minmax(torch.from_numpy(theirs).float())
    ex = camlens.explain(model, x, "gradcam", layer="layer3", target=[3, 7], sess=True,
                         sess_num_scales=3)  # fmt: skip
    assert ex.maps.shape == (2, 64, 64)
    assert (ex.maps - theirs).abs().max() < 5e-2  # OpenCV vs torch resizing of every window
    two = camlens.explain(model, x, "gradcam", layer="layer3", target=camlens.targets.top(2),
                          sess=True, sess_num_scales=3)  # fmt: skip
    first = camlens.explain(model, x, "gradcam", layer="layer3", target=two.targets[:, 0],
                            sess=True, sess_num_scales=3, sess_chunk=1)  # fmt: skip
    assert torch.allclose(two.maps[:, 0], first.maps, atol=1e-5)


def test_wrapper_option_errors(resnet) -> None:
    model, x = resnet
    with pytest.raises(InputError, match="square"):
        camlens.explain(model, torch.randn(1, 3, 64, 48), "gradcam", sess=True)
    with pytest.raises(InputError, match="sess=True"):
        camlens.explain(model, x, "gradcam", sess_num_scales=2)
    with pytest.raises(InputError, match="not both"):
        camlens.explain(model, x, "gradcam", sess=True, aug_smooth=True)
    with pytest.raises(InputError, match="terms"):
        camlens.explain(model, x, "fullgrad", eigen_smooth=True)


def test_aug_smooth_wraps_model_level_methods_too() -> None:
    from camlens.demo import load_model, shapes

    vit = load_model("vit")
    images, labels, _ = shapes(2, seed=0, size=96, instances=1)
    ex = camlens.explain(vit, images, "legrad", target=labels, aug_smooth=True)
    maps = []
    for flip, factor in AUGMENTATIONS:
        one = camlens.explain(vit, (images.flip(-1) if flip else images) * factor, "legrad",
                              target=labels)  # fmt: skip
        maps.append(one.maps.flip(-1) if flip else one.maps)
    assert torch.allclose(ex.maps, minmax(torch.stack(maps).mean(0)), atol=1e-5)


@pytest.mark.parametrize(
    "method, options",
    [
        ("fem", {}),
        ("fem", {"weighting": "fraction", "k": 1.0}),
        ("randomcam", {"seed": 3}),
    ],
)
def test_activation_methods_terms_sum_to_the_method_and_eigen_smooth_projects_them(
    resnet, method: str, options: dict
) -> None:
    """FEM and Random-CAM expose their per-channel terms: their channel sum is the method's raw
    map, and eigen_smooth is the principal projection of the same terms."""
    from camlens.registry import get_method

    model, x = resnet
    info = get_method(method)
    acts: dict[str, torch.Tensor] = {}
    handle = model.layer3.register_forward_hook(lambda m, i, o: acts.setdefault("a", o.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    a = acts["a"].double()
    terms = info.terms(a, **options)
    assert terms.shape == a.shape
    assert torch.allclose(terms.sum(dim=1), info.fn(a, **options), atol=1e-10)
    seed = options.pop("seed", 0)
    ex = camlens.explain(model, x, method, layer="layer3", eigen_smooth=True, seed=seed, **options)
    want = principal_projection(
        info.terms(acts["a"], **options, **({"seed": seed} if method == "randomcam" else {}))
    )
    assert torch.allclose(ex.raw["layer3"], want, atol=1e-5)


def test_finercam_eigen_smooth_projects_its_base_terms(resnet) -> None:
    """Finer-CAM's terms are its base method's (on the contrast's gradients), so eigen_smooth
    applies to it with any base that has terms."""
    from camlens.cams.finer import finercam_terms
    from camlens.cams.gradient import gradcam_terms, layercam_terms

    a, g = (
        torch.randn(2, 5, 3, 3, dtype=torch.float64),
        torch.randn(2, 5, 3, 3, dtype=torch.float64),
    )
    assert torch.equal(finercam_terms(a, g), gradcam_terms(a, g))
    assert torch.equal(finercam_terms(a, g, base="layercam"), layercam_terms(a, g))
    model, x = resnet
    ex = camlens.explain(model, x, "finercam", layer="layer3", target=[3, 7], eigen_smooth=True)
    assert ex.raw["layer3"].shape == (2, 4, 4) and torch.isfinite(ex.raw["layer3"]).all()


@pytest.mark.parametrize(
    "method, options",
    [
        ("scorecam", {}),
        ("iscam", {"steps": 2}),
        ("sscam", {"samples": 2}),
        ("ablationcam", {}),
        ("fem", {}),
        ("randomcam", {}),
        ("finercam", {"base": "layercam"}),
        ("gradcampp", {}),
    ],
)
def test_the_terms_of_every_channel_sum_method_add_up_to_the_method(
    resnet, monkeypatch, method: str, options: dict
) -> None:
    """With the principal projection replaced by the channel sum, eigen_smooth must give the
    plain method back: each method's terms are its own channel sum's summands, for one target
    and for several targets per image (Score-CAM's (B, T, K, ...) terms)."""
    import camlens.wrappers as W

    model, x = resnet
    monkeypatch.setattr(W, "principal_projection", lambda t: t.sum(dim=1))
    for target in ([3, 7], torch.tensor([[3, 1], [7, 2]])):
        plain = camlens.explain(model, x, method, layer="layer3", target=target, **options)
        summed = camlens.explain(
            model, x, method, layer="layer3", target=target, eigen_smooth=True, **options
        )
        assert summed.raw["layer3"].shape == plain.raw["layer3"].shape
        assert torch.allclose(summed.raw["layer3"], plain.raw["layer3"], rtol=1e-4, atol=1e-4)

"""Cross-checks against the peer libraries, where they are installed (the dev extra has them)."""

from __future__ import annotations

import pytest
import torch
import torchvision

import camlens
from camlens.maps import minmax


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(2, 3, 96, 96)
    return model, x


# Not Grad-CAM++: torchcam 0.5 sums A * g^3 over space in the denominator (the paper multiplies
# sum_ab A_ab by g_ij^3) and its masked in-place division is a no-op, so it is not eq. (19).
@pytest.mark.parametrize(("ours", "theirs"), [("gradcam", "GradCAM"), ("layercam", "LayerCAM")])
def test_against_torchcam(setup, ours: str, theirs: str) -> None:
    methods = pytest.importorskip("torchcam.methods")
    model, x = setup
    extractor = getattr(methods, theirs)(model, target_layer="layer4")
    try:
        out = model(x)
        cams = extractor([3, 7], out)[0]  # (B, h, w), ReLU + normalised
    finally:
        extractor.remove_hooks()
    ex = camlens.explain(model, x, method=ours, layer="layer4", target=[3, 7])
    expected = minmax(cams.detach())
    assert torch.allclose(minmax(ex.raw["layer4"].clamp(min=0)), expected, atol=1e-4)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [("gradcam", "GradCAM"), ("gradcampp", "GradCAMPlusPlus"), ("layercam", "LayerCAM")],
)
def test_against_pytorch_grad_cam(setup, ours: str, theirs: str) -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    targets_mod = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    model, x = setup
    with getattr(pgc, theirs)(model=model, target_layers=[model.layer4]) as extractor:
        targets = [targets_mod.ClassifierOutputTarget(c) for c in (3, 7)]
        maps = extractor(input_tensor=x, targets=targets)  # numpy (B, H, W), cv2-resized
    ex = camlens.explain(model, x, method=ours, layer="layer4", target=[3, 7])
    theirs_t = torch.from_numpy(maps).float()
    # Same maths; they resize with OpenCV (uint8-free, float): allow interpolation differences.
    assert torch.allclose(ex.maps, minmax(theirs_t), atol=2e-2)
    assert torch.equal(ex.maps.flatten(1).argmax(1), minmax(theirs_t).flatten(1).argmax(1))

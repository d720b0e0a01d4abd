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


@pytest.fixture(scope="module")
def scaled_setup(setup):
    """The same network with its classifier's weights times 100. pytorch-grad-cam's Grad-CAM++
    adds eps = 1e-6 to the denominator 2 g^2 + sum A g^3; at this layer g ~ w / 9 ~ 5e-3, so
    2 g^2 ~ 5e-5 and eps alone moves the maps by ~2e-2. With g ~ 0.5 the eps is ~1e-5 of the
    denominator and the two implementations of eq. (19) must agree to float precision."""
    import copy

    model, x = setup
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled.fc.weight.mul_(100.0)
    return scaled, x


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [("gradcam", "GradCAM"), ("gradcampp", "GradCAMPlusPlus"), ("layercam", "LayerCAM")],
)
def test_against_pytorch_grad_cam(scaled_setup, ours: str, theirs: str) -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    targets_mod = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    model, x = scaled_setup
    with getattr(pgc, theirs)(model=model, target_layers=[model.layer4]) as extractor:
        targets = [targets_mod.ClassifierOutputTarget(c) for c in (3, 7)]
        maps = extractor(input_tensor=x, targets=targets)  # numpy (B, H, W), cv2-resized
        # Their map at the layer's resolution, before ReLU, from the tensors they captured.
        acts = extractor.activations_and_grads.activations[0].cpu().numpy()
        grads = extractor.activations_and_grads.gradients[0].cpu().numpy()
        layer_cam = extractor.get_cam_image(
            x, model.layer4, targets, acts, grads, eigen_smooth=False
        )
    ex = camlens.explain(model, x, method=ours, layer="layer4", target=[3, 7])
    theirs_raw = torch.from_numpy(layer_cam).float()
    ours_raw = ex.raw["layer4"]
    scale = float(theirs_raw.abs().max())
    assert scale > 0
    assert torch.allclose(ours_raw, theirs_raw, rtol=1e-4, atol=1e-5 * scale)
    # The displayed maps: same maths; they resize with OpenCV, we with torch's bilinear
    # interpolation (align_corners=False), which differ by up to ~1e-2 at 3x3 -> 96x96.
    theirs_t = torch.from_numpy(maps).float()
    assert torch.allclose(ex.maps, minmax(theirs_t), atol=2e-2)
    assert torch.equal(ex.maps.flatten(1).argmax(1), minmax(theirs_t).flatten(1).argmax(1))

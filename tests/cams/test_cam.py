"""CAM: the linear head's weights at every position."""

from __future__ import annotations

import pytest
import torch
import torchvision

import camlens
from camlens.cams import cam
from tests.conftest import capture


def test_cam_sums_back_to_the_logit() -> None:
    """sum_ij CAM / Z + b^c == S^c: the defining property of a GAP + linear head."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(3, 3, 64, 64)
    ex = camlens.explain(model, x, method="cam", layer="layer4", target=[1, 2, 9])
    raw = ex.raw["layer4"]
    z = raw.shape[-1] * raw.shape[-2]
    rebuilt = raw.sum(dim=(1, 2)) / z + model.fc.bias.detach()[ex.targets]
    assert torch.allclose(rebuilt, ex.scores, atol=1e-4)


def test_cam_formula() -> None:
    acts = torch.arange(8, dtype=torch.float32).view(1, 2, 2, 2)
    weights = torch.tensor([[2.0, -1.0]])
    expected = 2 * acts[0, 0] - acts[0, 1]
    assert torch.equal(cam(acts, weights)[0], expected)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0"])
def test_cam_matches_gradcam_times_z_on_torchvision(name: str) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    layer = "layer4" if name == "resnet18" else "features"
    x = torch.randn(2, 3, 64, 64)
    c = camlens.explain(model, x, method="cam", layer=layer).raw[layer]
    g = camlens.explain(model, x, method="gradcam", layer=layer).raw[layer]
    z = c.shape[-1] * c.shape[-2]
    assert torch.allclose(g * z, c, rtol=1e-3, atol=1e-6 * float(c.abs().max()))


def test_cam_needs_no_gradient_and_works_in_inference_mode() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        ex = camlens.explain(model, x, method="cam", layer="layer4")
    acts = capture(model, model.layer4, x)
    w = model.fc.weight.detach()[ex.targets]
    assert torch.allclose(ex.raw["layer4"], torch.einsum("bk,bkhw->bhw", w, acts), atol=1e-5)

"""Layer resolution, the automatic layer, and CAM's head detection."""

from __future__ import annotations

import pytest
import torch
import torchvision

from camlens.layers import find_last_spatial_layer, resolve_layers

AUTO = {
    "resnet18": "layer4",
    "resnet50": "layer4",
    "vgg11": "features",
    "densenet121": "features",
    "mobilenet_v3_small": "features",
    "efficientnet_b0": "features",
    "convnext_tiny": "features",
}


@pytest.mark.parametrize(("name", "expected"), AUTO.items())
def test_automatic_layer_on_torchvision(name: str, expected: str) -> None:
    model = getattr(torchvision.models, name)(weights=None).eval()
    assert find_last_spatial_layer(model, torch.randn(2, 3, 64, 64)) == expected


def test_resolve_names_modules_and_lists() -> None:
    model = torchvision.models.resnet18(weights=None)
    assert resolve_layers(model, "layer4")[0] == ("layer4", model.layer4)
    assert resolve_layers(model, model.layer3[1].conv2)[0][0] == "layer3.1.conv2"
    pairs = resolve_layers(model, ["layer3", model.layer4, "layer3"])
    assert [n for n, _ in pairs] == ["layer3", "layer4"]


def test_a_convs_relu_in_a_sequential_is_the_automatic_layer_and_cam_applies() -> None:
    from torch import nn

    import camlens

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    ).eval()
    x = torch.randn(2, 3, 16, 16)
    assert find_last_spatial_layer(model, x) == "3"
    ex = camlens.explain(model, x, "cam")
    grad = camlens.explain(model, x, "gradcam", target=ex.targets)
    assert torch.allclose(grad.raw["3"], ex.raw["3"] / 64, atol=1e-6)

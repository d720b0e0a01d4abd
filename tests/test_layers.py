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

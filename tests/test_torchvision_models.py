"""Every method on the torchvision model list of DESIGN.md (weights=None)."""

from __future__ import annotations

import pytest
import torch
import torchvision

import camlens
from tests.conftest import hook_count

MODELS = [
    "resnet18",
    "resnet50",
    "vgg11",
    "vgg16",
    "densenet121",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "convnext_tiny",
]
HAS_GAP_LINEAR_HEAD = {"resnet18", "resnet50", "efficientnet_b0"}


@pytest.mark.parametrize("name", MODELS)
def test_every_method_on_torchvision(name: str) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=7)
    x = torch.randn(2, 3, 64, 64)
    for method in camlens.methods():
        if method == "cam" and name not in HAS_GAP_LINEAR_HEAD:
            with pytest.raises(camlens.UnsupportedModelError):
                camlens.explain(model, x, method=method, target=[0, 6])
            continue
        ex = camlens.explain(model, x, method=method, target=[0, 6])
        assert ex.maps.shape == (2, 64, 64)
        assert torch.isfinite(ex.maps).all()
        assert ((ex.maps >= 0) & (ex.maps <= 1)).all()
        assert ex.targets.tolist() == [0, 6]
        (raw,) = ex.raw.values()
        assert raw.ndim == 3 and raw.shape[0] == 2 and torch.isfinite(raw).all()
    assert hook_count(model) == 0
    assert model.training  # torchvision builds in train mode; it must stay so

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
# One forward per channel (x samples): run on every model at a cost the suite can afford, i.e.
# with the fewest samples; the channel-heavy models get them on the cheap ones below.
RERUN_INPUT = {
    "scorecam": {},
    "sscam": {"samples": 1},
    "iscam": {"steps": 1},
    "occlusion": {"window": 32, "stride": 32},  # black boxes: forwards per window / mask
    "rise": {"n": 8},
}
CHEAP = {"resnet18", "mobilenet_v3_small"}
ATTENTION_ONLY = {"gae", "rollout"}  # methods for vision transformers
BLOCKS_ONLY = {"legrad"}  # reads a transformer's blocks and readout
MULTI_LAYER = {"refinecam"}  # needs layer=[...]: without it, an error that names layers


@pytest.mark.parametrize("name", MODELS)
def test_every_method_on_torchvision(name: str) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=7)
    x = torch.randn(2, 3, 64, 64)
    for method in camlens.methods():
        options = RERUN_INPUT.get(method, {})
        if method in RERUN_INPUT and name not in CHEAP:
            continue
        if method == "smoothgradcampp":
            options = {"samples": 2}
        if method in ATTENTION_ONLY:  # CNNs run no attention: a clear error, not a map
            with pytest.raises(camlens.UnsupportedModelError, match="attention"):
                camlens.explain(model, x, method=method, target=[0, 6])
            continue
        if method in BLOCKS_ONLY:
            with pytest.raises(camlens.UnsupportedModelError, match="transformer blocks"):
                camlens.explain(model, x, method=method, target=[0, 6])
            continue
        if method in MULTI_LAYER:
            with pytest.raises(camlens.LayerError, match="several layers"):
                camlens.explain(model, x, method=method, target=[0, 6])
            continue
        if method == "cam" and name not in HAS_GAP_LINEAR_HEAD:
            with pytest.raises(camlens.UnsupportedModelError):
                camlens.explain(model, x, method=method, target=[0, 6])
            continue
        ex = camlens.explain(model, x, method=method, target=[0, 6], batch_size=256, **options)
        assert ex.maps.shape == (2, 64, 64), method
        assert torch.isfinite(ex.maps).all()
        assert ((ex.maps >= 0) & (ex.maps <= 1)).all()
        assert ex.targets.tolist() == [0, 6]
        (raw,) = ex.raw.values()
        assert raw.ndim == 3 and raw.shape[0] == 2 and torch.isfinite(raw).all(), method
    assert hook_count(model) == 0
    assert model.training  # torchvision builds in train mode; it must stay so

"""Ultralytics YOLO models for the tests: built offline from their yaml, random weights scaled so
that boxes and class scores vary across the image (Ultralytics' own initialisation gives almost
the same box at every anchor)."""

from __future__ import annotations

import math
import os
import tempfile

import pytest
import torch
from torch import Tensor, nn

from camlens.detection.yolo import import_ultralytics

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="camlens-yolo-"))

# Import Ultralytics through camlens before anything else does: its import patches
# PIL.Image.open and torch.save process-wide, which camlens undoes (other tests read bad files).
try:
    import_ultralytics()
except ImportError:
    pytest.skip("ultralytics is not installed (the [yolo] extra)", allow_module_level=True)


def randomise(model: nn.Module, seed: int = 0, gain: float = 1.6, cls_scale: float = 0.3) -> None:
    """Random conv weights N(0, gain^2 / fan_in) (the DFL's fixed conv is left alone), and the
    class convolutions scaled by ``cls_scale`` with bias -3, so that scores spread below 1; the
    box convolutions' biases favour short distances, so that boxes are a few strides wide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Conv2d) and mod.weight.requires_grad:
                fan = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * gain / math.sqrt(fan))
        head = model.model[-1]
        for seq in head.cv3:
            seq[-1].weight.mul_(cls_scale)
            seq[-1].bias.fill_(-3.0)
        for seq in head.cv2:  # DFL bins favour short distances: boxes of a few strides
            bins = torch.arange(head.reg_max, dtype=torch.float32)
            seq[-1].bias.copy_((-0.4 * bins).repeat(4))


def smooth_images(batch: int, h: int, w: int, seed: int = 0) -> Tensor:
    """Smooth random images in [0, 1] (a blurred noise field: regions, not pixel noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(batch, 3, h, w, generator=g), 9, 1, 4)
    mean, std = x.mean(dim=(1, 2, 3), keepdim=True), x.std(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) / std * 0.25 + 0.5).clamp(0, 1)


_CACHE: dict[str, nn.Module] = {}


def yolo(config: str) -> nn.Module:
    """A randomised YOLO model from its yaml (built once per session, eval mode)."""
    if config not in _CACHE:
        from camlens.detection.yolo import load_model

        torch.manual_seed(0)
        model = load_model(config)
        randomise(model)
        _CACHE[config] = model
    return _CACHE[config]


def threshold_for(model: nn.Module, x: Tensor, n: int = 12) -> float:
    """A class-score threshold that leaves at least ``n`` candidate anchors in every image."""
    with torch.no_grad():
        y = model(x)[0]
    y = y[0] if isinstance(y, (tuple, list)) else y
    nc = model.model[-1].nc
    best = y[:, 4 : 4 + nc].amax(1)  # (B, A)
    top = best.topk(n + 1, dim=1).values
    # half-way between the n-th and (n+1)-th scores: no score sits on the threshold, so batch
    # numerics cannot move a candidate across it
    return float(((top[:, -2] + top[:, -1]) / 2).min())


@pytest.fixture(params=["yolov8n.yaml", "yolo11n.yaml"])
def det_model(request: pytest.FixtureRequest) -> nn.Module:
    return yolo(request.param)

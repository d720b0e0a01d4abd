"""Ultralytics YOLO models for the tests: built offline from their yaml, random weights scaled so
that boxes and class scores vary across the image (Ultralytics' own initialisation gives almost
the same box at every anchor)."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
from torch import Tensor, nn

from camlens.detection.yolo import import_ultralytics
from camlens.testing.yolo import randomise

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="camlens-yolo-"))

# Import Ultralytics through camlens before anything else does: its import patches
# PIL.Image.open and torch.save process-wide, which camlens undoes (other tests read bad files).
try:
    import_ultralytics()
except ImportError:
    pytest.skip("ultralytics is not installed (the [yolo] extra)", allow_module_level=True)


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

"""The shipped demo model: loads safely, is small, and reaches the accuracy bar."""

from __future__ import annotations

from importlib import resources

import torch

import camlens
from camlens.demo import CLASSES, load_model, shapes
from camlens.demo.model import WEIGHTS_FILE
from camlens.demo.train import accuracy


def test_weights_ship_in_the_package_and_are_small() -> None:
    ref = resources.files("camlens.demo").joinpath(WEIGHTS_FILE)
    assert ref.is_file()
    assert len(ref.read_bytes()) < 2 * 2**20


def test_accuracy_on_fresh_images() -> None:
    # The full bar (>= 97% on shapes(1000, seed=12345)) is what `camlens demo` reports; here a
    # faster sample of the same test set must clear it too.
    model = load_model()
    x, y, _ = shapes(300, seed=12345)
    assert accuracy(model, x, y) >= 0.97
    x, y, _ = shapes(90, seed=777, instances=2)
    assert accuracy(model, x, y) >= 0.93


def test_cam_applies_and_equals_gradcam_times_z() -> None:
    model = load_model()
    x, y, _ = shapes(6, seed=9)
    c = camlens.explain(model, x, method="cam", layer="features", target=y).raw["features"]
    g = camlens.explain(model, x, method="gradcam", layer="features", target=y).raw["features"]
    assert c.shape == (6, 12, 12)
    assert torch.allclose(g * 144, c, rtol=1e-3, atol=1e-5 * float(c.abs().max()))
    assert len(CLASSES) == model.fc.out_features

"""The shapes generator: determinism, masks, instances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from camlens.demo.shapes import CLASSES, draw, shape_mask, shapes


def test_contract_and_determinism() -> None:
    x, y, m = shapes(24, seed=3)
    assert x.shape == (24, 3, 96, 96) and x.dtype == torch.float32
    assert y.shape == (24,) and y.dtype == torch.long and m.shape == (24, 96, 96)
    assert m.dtype == torch.bool
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    x2, y2, m2 = shapes(24, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(m, m2)
    x3, _, _ = shapes(24, seed=4)
    assert not torch.equal(x, x3)
    assert len(CLASSES) >= 6
    assert torch.bincount(y, minlength=len(CLASSES)).tolist() == [4] * 6  # balanced


def test_masks_are_the_objects_pixels() -> None:
    x, _y, m = shapes(30, seed=1)
    areas = m.flatten(1).sum(1)
    assert (areas > 40).all()  # every image has a visible object
    assert (areas < 0.35 * 96 * 96).all()
    # The object is drawn in one colour (+ small noise): its pixels vary far less than the image.
    for i in range(30):
        inside = x[i][:, m[i]]
        assert inside.std(dim=1).max() < 0.08
        assert x[i].flatten(1).std(dim=1).max() > inside.std(dim=1).max()


def test_two_instances_cover_two_components() -> None:
    from scipy import ndimage

    _, _, m = shapes(12, seed=5, instances=2)
    for mask in m:
        _labels, count = ndimage.label(mask.numpy())
        # A ring or cross is one component; two objects make at least two.
        assert count >= 2, count


@pytest.mark.parametrize("name", CLASSES)
def test_shape_masks_by_geometry(name: str) -> None:
    yy, xx = np.mgrid[-50:51, -50:51].astype(float)
    mask = shape_mask(name, xx, yy, 40.0)
    centre = mask[50, 50]
    assert centre == (name != "ring")  # the ring has a hole
    assert not mask[0, 0] and mask.sum() > 300
    if name == "circle":
        assert abs(mask.sum() - np.pi * 40**2) < 0.02 * np.pi * 40**2


def test_draw_and_bad_arguments() -> None:
    img, mask = draw(seed=1, label=3, size=32)
    assert img.shape == (3, 32, 32) and mask.shape == (32, 32) and mask.any()
    with pytest.raises(ValueError):
        shapes(2, size=8)
    with pytest.raises(ValueError, match="unknown shape"):
        shape_mask("hexagon", np.zeros(1), np.zeros(1), 1.0)

"""Localisation metrics on cases whose value is known by construction."""

from __future__ import annotations

import pytest
import torch

from camlens.errors import InputError
from camlens.metrics import energy_pointing_game, iou, pointing_game


def _mask() -> torch.Tensor:
    m = torch.zeros(2, 10, 10, dtype=torch.bool)
    m[:, 2:5, 3:7] = True
    return m


def test_map_equal_to_the_mask_scores_one() -> None:
    m = _mask()
    maps = m.float()
    assert pointing_game(maps, m).tolist() == [1.0, 1.0]
    assert energy_pointing_game(maps, m).tolist() == [1.0, 1.0]
    assert iou(maps, m).tolist() == [1.0, 1.0]


def test_map_outside_the_mask_scores_zero() -> None:
    m = _mask()
    maps = (~m).float()
    assert pointing_game(maps, m).tolist() == [0.0, 0.0]
    assert energy_pointing_game(maps, m).tolist() == [0.0, 0.0]
    assert iou(maps, m).tolist() == [0.0, 0.0]


def test_hand_computed_values_and_tolerance() -> None:
    m = _mask()[:1]  # 12 pixels
    maps = torch.zeros(1, 10, 10)
    maps[0, 2, 3] = 1.0  # inside
    maps[0, 8, 8] = 3.0  # the maximum, outside: 3 rows and 1 column from (4, 6)
    assert pointing_game(maps, m).item() == 0.0
    assert pointing_game(maps, m, tolerance=3).item() == 0.0  # distance sqrt(4^2 + 2^2) > 3
    assert pointing_game(maps, m, tolerance=5).item() == 1.0
    assert energy_pointing_game(maps, m).item() == pytest.approx(0.25)
    # threshold 0.5 on raw values: only the pixel at 3.0 and the one at 1.0 are >= 0.5.
    assert iou(maps, m).item() == pytest.approx(1 / 13)


def test_empty_maps_score_zero_not_nan() -> None:
    m = _mask()
    z = torch.zeros(2, 10, 10)
    for fn in (pointing_game, energy_pointing_game, iou):
        out = fn(z, m)
        assert out.tolist() == [0.0, 0.0]


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="same shape"):
        pointing_game(torch.zeros(1, 4, 4), torch.zeros(1, 5, 5, dtype=torch.bool))

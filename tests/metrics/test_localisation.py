"""Localisation metrics on cases whose value is known by construction."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from camlens.errors import InputError
from camlens.metrics import (
    box_localisation,
    boxes_to_masks,
    component_boxes,
    connected_components,
    energy_pointing_game,
    iou,
    largest_component_box,
    pointing_game,
)


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


# -- bounding boxes ------------------------------------------------------------------------


def test_connected_components_match_scipy_8_connectivity() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 23, 31, generator=gen) > 0.55
    labels = connected_components(masks)
    for i in range(len(masks)):
        ref, n = ndimage.label(masks[i].numpy(), structure=np.ones((3, 3)))
        ours = labels[i].numpy()
        assert (ours > 0).sum() == (ref > 0).sum()
        # the same partition: a one-to-one map between our labels and scipy's
        pairs = {(a, b) for a, b in zip(ours[ours > 0], ref[ref > 0], strict=True)}
        assert len(pairs) == n == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def test_largest_component_box_is_the_box_of_the_biggest_blob() -> None:
    maps = torch.zeros(2, 20, 30)
    maps[0, 2:5, 3:6] = 1.0  # 9 px, the brightest
    maps[0, 10:18, 12:25] = 0.5  # 104 px, above 20% of the max: the largest
    maps[1, 4:9, 7:8] = 0.3  # a single bar
    boxes = largest_component_box(maps, threshold=0.2)
    assert boxes.tolist() == [[12.0, 10.0, 25.0, 18.0], [7.0, 4.0, 8.0, 9.0]]
    # at 60% of the max only the bright square is left
    assert largest_component_box(maps[:1], threshold=0.6).tolist() == [[3.0, 2.0, 6.0, 5.0]]


def test_an_empty_map_gives_the_empty_box_and_a_miss() -> None:
    maps = torch.zeros(1, 8, 8)
    assert largest_component_box(maps).tolist() == [[0.0, 0.0, 0.0, 0.0]]
    assert box_localisation(maps, torch.tensor([[0.0, 0.0, 4.0, 4.0]])).tolist() == [0.0]


def test_box_localisation_by_construction() -> None:
    maps = torch.zeros(3, 40, 40)
    maps[0, 10:20, 10:20] = 1.0  # exactly the box: IoU 1
    maps[1, 10:20, 10:30] = 1.0  # box twice as wide: IoU 0.5, still a hit
    maps[2, 10:20, 10:31] = 1.0  # a little wider: IoU 100/210 < 0.5, a miss
    gt = torch.tensor([[10.0, 10.0, 20.0, 20.0]]).repeat(3, 1)
    assert box_localisation(maps, gt).tolist() == [1.0, 1.0, 0.0]
    # any of several ground-truth boxes may be hit
    many = [torch.tensor([[0.0, 0.0, 5.0, 5.0], [10.0, 10.0, 20.0, 20.0]])] * 3
    assert box_localisation(maps, many).tolist() == [1.0, 1.0, 0.0]


def test_component_boxes_give_one_box_per_object() -> None:
    masks = torch.zeros(2, 30, 30, dtype=torch.bool)
    masks[0, 2:6, 3:9] = True
    masks[0, 20:25, 20:22] = True
    boxes = component_boxes(masks)
    assert sorted(boxes[0].tolist()) == [[3.0, 2.0, 9.0, 6.0], [20.0, 20.0, 22.0, 25.0]]
    assert boxes[1].shape == (0, 4)
    # the masks themselves, as maps, localise every object of a one-object mask
    one = masks[:1].clone()
    one[0, 20:25] = False
    assert box_localisation(one.float(), component_boxes(one)).tolist() == [1.0]


def test_box_localisation_rejects_wrong_box_shapes() -> None:
    with pytest.raises(InputError, match=r"\(B, 4\)"):
        box_localisation(torch.zeros(2, 8, 8), torch.zeros(3, 4))
    with pytest.raises(InputError, match="one per map"):
        box_localisation(torch.zeros(2, 8, 8), [torch.zeros(1, 4)])


def test_boxes_to_masks_round_trips_with_component_boxes() -> None:
    boxes = [torch.tensor([[2.0, 1.0, 5.0, 4.0], [7.0, 6.0, 9.0, 10.0]]), torch.zeros(0, 4)]
    masks = boxes_to_masks(boxes, (12, 10))
    assert masks.shape == (2, 12, 10)
    assert int(masks[0].sum()) == 3 * 3 + 2 * 4 and not masks[1].any()
    assert sorted(component_boxes(masks)[0].tolist()) == sorted(boxes[0].tolist())
    # pointing game with boxes: the peak inside the box is a hit
    maps = torch.zeros(1, 12, 10)
    maps[0, 2, 3] = 1.0
    assert (
        pointing_game(maps, boxes_to_masks(torch.tensor([[2.0, 1.0, 5.0, 4.0]]), (12, 10))).item()
        == 1.0
    )


# -- edges: tolerance disks, thresholds, ties, empty and mixed batches, whole messages --------


def _raises(msg: str):
    return pytest.raises(InputError, match="^" + re.escape(msg) + "$")


def test_pointing_tolerance_is_the_euclidean_distance_to_the_mask() -> None:
    """A hit within ``tolerance`` px: scipy's exact distance transform says which pixels are."""
    ndimage = pytest.importorskip("scipy.ndimage")
    mask = torch.zeros(11, 11, dtype=torch.bool)
    mask[2:4, 3:7] = True
    mask[8, 8] = True  # a lone pixel
    dist = torch.from_numpy(ndimage.distance_transform_edt(~mask.numpy()))
    maps = torch.eye(121).view(121, 11, 11)  # one map per peak position
    masks = mask.expand(121, 11, 11)
    assert pointing_game(maps, masks).tolist() == (dist.flatten() == 0).float().tolist()
    for tol in (1, 2, 3):
        expected = (dist.flatten() <= tol).float()
        assert pointing_game(maps, masks, tolerance=tol).tolist() == expected.tolist(), tol


def test_a_map_without_a_positive_value_misses_even_on_the_mask() -> None:
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[:, 0, 0] = True  # the first pixel, where argmax lands for a constant map
    maps = torch.zeros(3, 4, 4)
    maps[1] = -1.0
    maps[2, 0, 0] = 0.5  # a positive peak beside two empty maps
    assert pointing_game(maps, masks).tolist() == [0.0, 0.0, 1.0]
    assert energy_pointing_game(maps, masks).tolist() == [0.0, 0.0, 1.0]


def test_energy_of_small_values_by_hand() -> None:
    masks = torch.zeros(2, 3, 3, dtype=torch.bool)
    masks[:, 0] = True
    maps = torch.zeros(2, 3, 3)
    maps[0, 0, 1], maps[0, 2, 2], maps[0, 1, 1] = 0.2, 0.2, -0.4  # 0.2 / 0.4, negatives clipped
    maps[1, 0, 0], maps[1, 0, 2], maps[1, 2, 0] = 0.05, 0.1, 0.15  # 0.15 / 0.3
    torch.testing.assert_close(energy_pointing_game(maps, masks), torch.tensor([0.5, 0.5]))
    maps[1, 2, 0] = 0.45  # 0.15 / 0.6
    torch.testing.assert_close(energy_pointing_game(maps, masks), torch.tensor([0.5, 0.25]))


def test_iou_threshold_is_inclusive_and_edge_cases() -> None:
    masks = torch.zeros(3, 2, 2, dtype=torch.bool)
    masks[0, 0, 0] = True
    masks[1, 0, 0] = True
    maps = torch.zeros(3, 2, 2)
    maps[0, 0, 0] = 0.5  # exactly at the threshold: found; union of one pixel, IoU 1
    maps[1, 0, 0], maps[1, 1, 1] = 0.7, 0.5  # 1 / 2
    # image 2: nothing above the threshold and an empty mask: nothing was found, 0
    assert iou(maps, masks).tolist() == [1.0, 0.5, 0.0]
    assert iou(maps, masks, threshold=0.6).tolist() == [0.0, 1.0, 0.0]


def test_shape_errors_in_full() -> None:
    with _raises(
        "maps and masks must both be (B, H, W) of the same shape, got (1, 4, 4) and (1, 5, 5); "
        "upsample the maps to the mask size first"
    ):
        pointing_game(torch.zeros(1, 4, 4), torch.zeros(1, 5, 5, dtype=torch.bool))
    with _raises("masks must be (B, H, W), got (4, 4)"):
        connected_components(torch.zeros(4, 4, dtype=torch.bool))
    with _raises("maps must be (B, H, W), got (4, 4)"):
        largest_component_box(torch.zeros(4, 4))
    with _raises("boxes must be (B, 4) = (2, 4) or a list of (n, 4) tensors, got (3, 4)"):
        box_localisation(torch.zeros(2, 8, 8), torch.zeros(3, 4))
    with _raises("got 1 box sets for 2 maps; pass one per map"):
        box_localisation(torch.zeros(2, 8, 8), [torch.zeros(1, 4)])
    with _raises("boxes must be (B, 4) or a list of (n, 4), got (2, 5)"):
        boxes_to_masks(torch.zeros(2, 5), (4, 4))
    with _raises("boxes must be (B, 4) or a list of (n, 4), got (4,)"):
        boxes_to_masks(torch.zeros(4), (4, 4))


def test_largest_component_box_per_image_edges() -> None:
    maps = torch.zeros(5, 6, 6)
    maps[0, 0, 0] = 0.1  # one pixel in the corner, its own peak
    # image 1 is empty
    maps[2, 1:3, 1:4] = 1.0  # 6 px at the peak
    maps[2, 4:6, 0:4] = 0.2  # 8 px at exactly 20% of the peak: included by default
    maps[3, 5, 5] = 2.0  # a lone pixel at the last raster position
    maps[4, 0, 2:5] = 0.3  # a bar on the first row: default threshold 0.2 keeps the dim bar
    maps[4, 3:5, 3] = 1.0
    assert largest_component_box(maps).tolist() == [
        [0.0, 0.0, 1.0, 1.0],
        [0.0, 0.0, 0.0, 0.0],
        [0.0, 4.0, 4.0, 6.0],
        [5.0, 5.0, 6.0, 6.0],
        [2.0, 0.0, 5.0, 1.0],
    ]
    assert largest_component_box(maps[2:3], threshold=0.5).tolist() == [[1.0, 1.0, 4.0, 3.0]]


def test_component_boxes_of_a_lone_corner_pixel() -> None:
    masks = torch.zeros(2, 5, 5, dtype=torch.bool)
    masks[0, 0, 0] = True
    masks[1, 4, 4] = True
    masks[1, 0, 1:3] = True
    boxes = component_boxes(masks)
    assert boxes[0].tolist() == [[0.0, 0.0, 1.0, 1.0]]
    assert sorted(boxes[1].tolist()) == [[1.0, 0.0, 3.0, 1.0], [4.0, 4.0, 5.0, 5.0]]


def test_box_iou_by_hand() -> None:
    from camlens.metrics.localisation import _box_iou

    a = torch.tensor([[1.0, 0.0, 5.0, 2.0], [3.0, 3.0, 4.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[2.0, 1.0, 4.0, 5.0], [6.0, 0.0, 7.0, 1.0], [3.0, 3.0, 4.0, 4.0]])
    # a0 (4 x 2) and b0 (2 x 4) overlap in 2 x 1: 2 / (8 + 8 - 2); a1 lies in b0: 1 / 8;
    # b1 touches nothing
    expected = torch.tensor(
        [[2 / 14, 0.0, 0.0], [1 / 8, 0.0, 1.0], [0.0, 0.0, 0.0]]  # two empty boxes: 0
    )
    torch.testing.assert_close(_box_iou(a, b), expected)
    assert _box_iou(a[2:], a[2:]).tolist() == [[0.0]]
    # ground-truth boxes may be fractional: a union below one pixel is still a true ratio
    half = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    quarter = torch.tensor([[0.0, 0.0, 0.5, 0.25]])
    torch.testing.assert_close(
        _box_iou(half, torch.cat([half, quarter])), torch.tensor([[1.0, 0.5]])
    )


def test_box_localisation_per_image_threshold_and_empty_sets() -> None:
    maps = torch.zeros(2, 10, 10)
    maps[0, 0:2, 0:2] = 1.0  # image 0: a small bright square
    maps[0, 5:10, 5:10] = 0.5  # and a large dim one
    maps[1, 5:10, 5:10] = 1.0
    gt = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]])
    # at 20% the dim square is image 0's largest: a miss; at 60% only the bright one is left.
    # image 1's box is not image 0's (a miss for image 0 even though image 1 hits gt 0's box).
    assert box_localisation(maps, gt).tolist() == [0.0, 0.0]
    assert box_localisation(maps, gt, threshold=0.6).tolist() == [1.0, 0.0]
    sets = [torch.zeros(0, 4), torch.tensor([[5.0, 5.0, 10.0, 10.0]])]
    assert box_localisation(maps, sets).tolist() == [0.0, 1.0]
    # an empty map's empty box does not "hit" an empty ground-truth box
    assert box_localisation(torch.zeros(1, 4, 4), torch.zeros(1, 4)).tolist() == [0.0]


def test_box_localisation_compares_each_map_with_its_own_boxes() -> None:
    maps = torch.zeros(2, 10, 10)
    maps[0, 0:3, 0:3] = 1.0
    maps[1, 5:9, 5:9] = 1.0
    gt = torch.tensor([[5.0, 5.0, 9.0, 9.0], [5.0, 5.0, 9.0, 9.0]])
    assert box_localisation(maps, gt).tolist() == [0.0, 1.0]


def test_boxes_to_masks_pixel_centres_on_the_edges() -> None:
    """A pixel is covered when its centre (i + 0.5) is in [x0, x1) x [y0, y1)."""
    masks = boxes_to_masks(torch.tensor([[0.5, 1.5, 2.5, 3.5]]), (5, 4))
    expected = torch.zeros(1, 5, 4, dtype=torch.bool)
    expected[0, 1:3, 0:2] = True
    assert torch.equal(masks, expected)
    empty = boxes_to_masks([], (3, 2))
    assert empty.shape == (0, 3, 2) and empty.dtype == torch.bool


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_boxes_to_masks_stay_on_the_boxes_device() -> None:
    masks = boxes_to_masks(torch.tensor([[0.0, 0.0, 2.0, 1.0]], device="cuda"), (3, 3))
    assert masks.device.type == "cuda" and int(masks.sum()) == 2

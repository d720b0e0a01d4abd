"""Unit tests of camlens.targets' detection targets on hand-made detector outputs: box_iou, the
given boxes per image, match_given, stack_rows and Detections.select (torchvision's list of dicts
and an Ultralytics-shaped YOLO output), with hand-computed scores, ids, boxes and paddings."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import Tensor

import camlens
from camlens import targets as T
from camlens.detection.yolo import select_yolo
from camlens.targets import Detections, _per_image, box_iou, match_given, stack_rows
from tests.conftest import raises_whole


def outside_camlens(filename: str) -> bool:
    """A warning's file is not camlens' own: it points at the code that called camlens (this
    test file, or a wrapper around camlens' functions such as a mutation tool's)."""
    return not Path(filename).resolve().is_relative_to(Path(camlens.__file__).parent.resolve())


@contextmanager
def no_warning() -> Iterator[None]:
    """A block in which any warning fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# -- box_iou ---------------------------------------------------------------------------------------


def test_box_iou_of_boxes_that_are_not_squares_nor_at_the_origin() -> None:
    a = torch.tensor([[1.0, 2.0, 4.0, 8.0], [0.0, 0.0, 2.0, 1.0]])  # 3 x 6 and 2 x 1
    b = torch.tensor(
        [[2.0, 3.0, 5.0, 6.0], [1.0, 2.0, 4.0, 8.0], [10.0, 10.0, 12.0, 12.0], [4.0, 2.0, 6.0, 8.0]]
    )
    # a0 and b0: overlap 2 x 3 = 6, union 18 + 9 - 6 = 21; b3 only touches a0's edge
    expected = torch.tensor([[6 / 21, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(box_iou(a, b), expected)
    assert box_iou(a, b).shape == (2, 4)


def test_box_iou_of_boxes_smaller_than_a_pixel() -> None:
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    b = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.25, 0.5], [0.25, 0.0, 0.75, 0.5]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[1.0, 0.5, 1 / 3]]))


def test_box_iou_of_empty_and_inverted_boxes_is_zero() -> None:
    a = torch.tensor([[1.0, 1.0, 1.0, 1.0], [5.0, 5.0, 1.0, 1.0]])  # a point; x2 < x1
    b = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 10.0, 10.0]])
    assert torch.equal(box_iou(a, b), torch.zeros(2, 2))
    assert box_iou(a, torch.zeros(0, 4)).shape == (2, 0)


# -- the given boxes and labels, per image ---------------------------------------------------------


def test_given_boxes_and_labels_per_image() -> None:
    assert _per_image(None, 2, "boxes") == [None, None]
    one = torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 2.0, 2.0], [0.0, 1.0, 2.0, 3.0]])
    assert all(b is one for b in _per_image(one, 2, "boxes"))  # (T, 4): for every image
    labels = torch.tensor([3, 1, 2])
    assert all(lab is labels for lab in _per_image(labels, 2, "labels"))  # (T,): for every image
    stacked = torch.arange(24.0).view(2, 3, 4)  # (B, T, 4), T != B
    assert [b.tolist() for b in _per_image(stacked, 2, "boxes")] == stacked.tolist()
    table = torch.tensor([[1, 2, 3], [4, 5, 6]])  # (B, T) labels
    assert [lab.tolist() for lab in _per_image(table, 2, "labels")] == table.tolist()
    listed = _per_image([[[0, 0, 4, 4]], None], 2, "boxes")
    assert torch.equal(listed[0], torch.tensor([[0, 0, 4, 4]])) and listed[1] is None
    listed = _per_image((7, [1, 2]), 2, "labels")
    assert torch.equal(listed[0], torch.tensor(7)) and torch.equal(listed[1], torch.tensor([1, 2]))
    boxes, labels = T.detections(boxes=stacked, labels=table).given(2)
    assert [b.tolist() for b in boxes] == stacked.tolist()
    assert [lab.tolist() for lab in labels] == table.tolist()
    assert T.detections().given(3) == ([None] * 3, [None] * 3)


@pytest.mark.parametrize(
    ("value", "what"),
    [
        ([[0, 0, 1, 1]] * 3, "boxes"),  # a list for 3 images
        (torch.zeros(3, 2, 4), "boxes"),  # (B, T, 4) for 3 images
        (torch.zeros(2), "boxes"),  # 1-D, as many numbers as images
        (torch.zeros(4), "boxes"),  # one box, not (T, 4)
        (5, "boxes"),
        (torch.zeros(3, 2, dtype=torch.long), "labels"),  # (B, T) labels for 3 images
        ([1], "labels"),
        (torch.tensor(1), "labels"),
    ],
)
def test_given_values_that_do_not_fit_the_batch(value, what: str) -> None:
    message = f"detections({what}=...) needs one entry per image (2) or one tensor for all"
    with raises_whole(camlens.TargetError, message):
        _per_image(value, 2, what)
    with raises_whole(camlens.TargetError, message):
        T.detections(**{what: value}).given(2)


# -- match_given -----------------------------------------------------------------------------------

# three detections: d1's IoU with (0, 0, 10, 10) is exactly 0.5
D_BOXES = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [20.0, 20.0, 30.0, 30.0]])
D_LABELS = torch.tensor([1, 2, 1])
GIVEN = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 29], [50, 50, 60, 60]])  # ints on purpose


def d_scores() -> Tensor:
    return torch.tensor([0.9, 0.8, 0.7], requires_grad=True)


def test_match_given_any_label() -> None:
    scores = d_scores()
    s, ids, boxes, matched = match_given(GIVEN, None, D_BOXES, scores, D_LABELS, 0.5)
    # box 0 is d0 (IoU 1), box 1 is d2 (IoU 90 / 100), box 2 meets nothing: 0 and id -1
    assert torch.allclose(s, torch.tensor([0.9, 0.7, 0.0]))
    assert ids.dtype == torch.long and torch.equal(ids, torch.tensor([1, 1, -1]))
    assert torch.equal(matched, torch.tensor([True, True, False]))
    assert boxes.dtype == torch.float32 and torch.equal(boxes, GIVEN.float())
    (grad,) = torch.autograd.grad(s.sum(), scores)
    assert torch.equal(grad, torch.tensor([1.0, 0.0, 1.0]))  # no gradient for the unmatched box


def test_match_given_by_label_and_the_iou_threshold_at_equality() -> None:
    want = torch.tensor([2, 1, 1])
    scores = d_scores()
    s, ids, _, matched = match_given(GIVEN, want, D_BOXES, scores, D_LABELS, 0.5)
    # box 0 of label 2 can only be d1, whose IoU is 0.5 == the threshold; d0 (IoU 1) is label 1
    assert torch.allclose(s, torch.tensor([0.8, 0.7, 0.0]))
    assert torch.equal(ids, want)  # an unmatched box keeps its given label
    assert torch.equal(matched, torch.tensor([True, True, False]))
    (grad,) = torch.autograd.grad(s.sum(), scores)
    assert torch.equal(grad, torch.tensor([0.0, 1.0, 1.0]))
    s, ids, _, matched = match_given(GIVEN, want, D_BOXES, d_scores(), D_LABELS, 0.51)
    assert torch.allclose(s, torch.tensor([0.0, 0.7, 0.0])) and torch.equal(ids, want)
    assert torch.equal(matched, torch.tensor([False, True, False]))
    # IoU 0 with the only detection of the label still matches at threshold 0, not a -1 of
    # another label
    s, ids, _, matched = match_given(GIVEN[2:], want[2:], D_BOXES, d_scores(), D_LABELS, 0.0)
    assert torch.equal(matched, torch.tensor([True])) and torch.allclose(s, torch.tensor([0.9]))


def test_match_given_one_flat_box() -> None:
    s, ids, boxes, _ = match_given(
        torch.tensor([20.0, 20.0, 30.0, 30.0], dtype=torch.float64), None, D_BOXES, d_scores(),
        D_LABELS, 0.5,
    )  # fmt: skip
    assert boxes.shape == (1, 4) and boxes.dtype == torch.float32
    assert torch.allclose(s, torch.tensor([0.7])) and torch.equal(ids, torch.tensor([1]))


def test_match_given_without_detections() -> None:
    none = (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    s, ids, boxes, matched = match_given(GIVEN[:2], None, *none, 0.5)
    assert s.dtype == torch.float32 and torch.equal(s, torch.zeros(2))
    assert ids.dtype == torch.long and torch.equal(ids, torch.tensor([-1, -1]))
    assert torch.equal(matched, torch.tensor([False, False]))
    assert torch.equal(boxes, GIVEN[:2].float())
    s, ids, _, matched = match_given(GIVEN[:2], torch.tensor([4, 0]), *none, 0.0)
    assert torch.equal(s, torch.zeros(2)) and torch.equal(ids, torch.tensor([4, 0]))
    assert torch.equal(matched, torch.tensor([False, False]))


@pytest.mark.parametrize("want", [[1, 2], [1, 2, 3, 4], [[1, 2, 3, 4]]])
def test_match_given_wants_one_label_per_box(want) -> None:
    with raises_whole(camlens.TargetError, "detections(): give one label per box"):
        match_given(GIVEN, torch.tensor(want), D_BOXES, d_scores(), D_LABELS, 0.5)


# -- stack_rows ------------------------------------------------------------------------------------


def test_stack_rows_pads_to_the_most_boxes() -> None:
    leaf = torch.tensor([0.9, 0.8, 0.6], requires_grad=True)
    i32, f64 = torch.int32, torch.float64
    rows = [
        (leaf[:2], torch.tensor([1, 2], dtype=i32),
         torch.tensor([[0, 0, 4, 4], [1, 1, 3, 3]], dtype=f64), torch.tensor([True, False])),
        (leaf[:0], torch.zeros(0, dtype=i32), torch.zeros(0, 4, dtype=f64),
         torch.zeros(0, dtype=torch.bool)),
        (leaf[2:], torch.tensor([5], dtype=i32), torch.tensor([[2, 2, 6, 8]], dtype=f64),
         torch.tensor([True])),
    ]  # fmt: skip
    more = [torch.tensor([7, 3], dtype=torch.int32), torch.zeros(0, dtype=torch.int32)]
    with no_warning():
        sel = stack_rows(rows, 0.5, {"anchors": [*more, torch.tensor([9])]})
    assert torch.allclose(sel.scores, torch.tensor([[0.9, 0.8], [0.0, 0.0], [0.6, 0.0]]))
    assert sel.ids.dtype == torch.long
    assert torch.equal(sel.ids, torch.tensor([[1, 2], [-1, -1], [5, -1]]))
    boxes = torch.tensor(
        [[[0, 0, 4, 4], [1, 1, 3, 3]], [[0, 0, 0, 0], [0, 0, 0, 0]], [[2, 2, 6, 8], [0, 0, 0, 0]]]
    )
    assert sel.extras["boxes"].dtype == torch.float32
    assert torch.equal(sel.extras["boxes"], boxes.float())
    matched = torch.tensor([[True, False], [False, False], [True, False]])
    assert torch.equal(sel.extras["matched"], matched)
    anchors = sel.extras["anchors"]
    assert anchors.dtype == torch.long
    assert torch.equal(anchors, torch.tensor([[7, 3], [-1, -1], [9, -1]]))
    assert set(sel.extras) == {"boxes", "matched", "anchors"}
    (grad,) = torch.autograd.grad(sel.scores.sum(), leaf)
    assert torch.equal(grad, torch.ones(3))


def test_stack_rows_of_one_box_per_image_and_of_one_image() -> None:
    row = (torch.tensor([0.7]), torch.tensor([2]), torch.ones(1, 4), torch.tensor([True]))
    with no_warning():
        sel = stack_rows([row, row], 0.5)
        one = stack_rows([row], 0.5)
    assert sel.scores.shape == (2, 1) and set(sel.extras) == {"boxes", "matched"}
    assert torch.equal(one.ids, torch.tensor([[2]]))
    assert one.extras["boxes"].shape == (1, 1, 4)


def test_stack_rows_warns_when_nothing_is_left_at_the_callers_line() -> None:
    empty = (torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, 4),
             torch.zeros(0, dtype=torch.bool))  # fmt: skip
    message = (
        "detections(): no detection to explain (none scored >= 0.25 or matched a given box); "
        "the maps are empty"
    )
    with pytest.warns(UserWarning, match="^" + re.escape(message) + "$") as record:
        sel = stack_rows([empty, empty], 0.25)
    assert len(record) == 1 and outside_camlens(record[0].filename)
    assert torch.equal(sel.scores, torch.zeros(2, 1))  # one padded target per image
    assert torch.equal(sel.ids, torch.full((2, 1), -1))
    assert torch.equal(sel.extras["boxes"], torch.zeros(2, 1, 4))
    assert torch.equal(sel.extras["matched"], torch.zeros(2, 1, dtype=torch.bool))


# -- Detections.select on a torchvision detector's output ------------------------------------------


def torchvision_output(labels: bool = True) -> list[dict[str, Tensor]]:
    """Two images' detections, in descending score as torchvision returns them."""
    out = [
        {
            "boxes": torch.tensor(
                [
                    [0.0, 0.0, 10.0, 10.0],
                    [20.0, 20.0, 30.0, 30.0],
                    [0.0, 0.0, 10.0, 5.0],
                    [5.0, 5.0, 8.0, 8.0],
                ]
            ),
            "scores": torch.tensor([0.9, 0.7, 0.5, 0.3], requires_grad=True),
            "labels": torch.tensor([1, 1, 2, 3]),
        },
        {
            "boxes": torch.tensor([[1.0, 1.0, 4.0, 4.0]]),
            "scores": torch.tensor([0.6], requires_grad=True),
            "labels": torch.tensor([2]),
        },
    ]
    if not labels:
        for det in out:
            del det["labels"]
    return out


def test_every_detection_above_the_threshold() -> None:
    out = torchvision_output()
    with no_warning():
        sel = T.detections().select(out, 2)
    # 0.5 is kept (>= the default threshold 0.5), 0.3 is not; image 1 is padded
    assert torch.allclose(sel.scores, torch.tensor([[0.9, 0.7, 0.5], [0.6, 0.0, 0.0]]))
    assert torch.equal(sel.ids, torch.tensor([[1, 1, 2], [2, -1, -1]]))
    assert torch.equal(sel.extras["boxes"][0], out[0]["boxes"][:3])
    padded = torch.tensor([[1.0, 1, 4, 4], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert torch.equal(sel.extras["boxes"][1], padded)
    assert torch.equal(sel.extras["matched"], torch.tensor([[True] * 3, [True, False, False]]))
    assert not sel.extras["boxes"].requires_grad
    grads = torch.autograd.grad(sel.scores.sum(), [out[0]["scores"], out[1]["scores"]])
    assert torch.equal(grads[0], torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert torch.equal(grads[1], torch.tensor([1.0]))
    assert torch.equal(T.detections(score_threshold=0.8)(out), torch.tensor([[0.9], [0.0]]))


def test_detections_without_labels_are_class_0() -> None:
    sel = T.detections(score_threshold=0.6).select(torchvision_output(labels=False), 2)
    assert sel.ids.dtype == torch.long and torch.equal(sel.ids, torch.tensor([[0, 0], [0, -1]]))


@pytest.mark.parametrize(
    ("labels", "threshold", "scores", "ids"),
    [
        ([1, 2], 0.5, [[0.9, 0.7], [0.6, 0.0]], [[1, 1], [2, -1]]),  # one label per image
        (torch.tensor([1, 3]), 0.5, [[0.9, 0.7], [0.0, 0.0]], [[1, 1], [-1, -1]]),  # for all
        (torch.tensor([1, 3]), 0.25, [[0.9, 0.7, 0.3], [0.0, 0.0, 0.0]], [[1, 1, 3], [-1] * 3]),
        ([[2, 3], [1, 2]], 0.4, [[0.5], [0.6]], [[2], [2]]),
    ],
)
def test_labels_without_boxes_keep_those_classes_above_the_threshold(
    labels, threshold: float, scores: list, ids: list
) -> None:
    sel = T.detections(labels=labels, score_threshold=threshold).select(torchvision_output(), 2)
    assert torch.allclose(sel.scores, torch.tensor(scores))
    assert torch.equal(sel.ids, torch.tensor(ids))


def test_given_boxes_are_matched_per_image() -> None:
    out = torchvision_output()
    boxes = [torch.tensor([[0, 0, 10, 10], [50, 50, 60, 60]]), torch.tensor([1, 1, 4, 4])]
    with no_warning():
        sel = T.detections(boxes=boxes).select(out, 2)
    assert torch.allclose(sel.scores, torch.tensor([[0.9, 0.0], [0.6, 0.0]]))
    assert torch.equal(sel.ids, torch.tensor([[1, -1], [2, -1]]))
    assert torch.equal(sel.extras["matched"], torch.tensor([[True, False], [True, False]]))
    expected = torch.tensor([[[0, 0, 10, 10], [50, 50, 60, 60]], [[1, 1, 4, 4], [0, 0, 0, 0]]])
    assert torch.equal(sel.extras["boxes"], expected.float())  # the given boxes, padded


def test_given_boxes_with_labels_and_the_iou_threshold() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])  # for both images
    labels = [torch.tensor([2, 1]), [2, 3]]
    sel = T.detections(boxes=boxes, labels=labels).select(torchvision_output(), 2)
    # image 0: label 2 is only the half box (IoU 0.5 == iou), label 1 at (20, 20, 30, 30)
    assert torch.allclose(sel.scores, torch.tensor([[0.5, 0.7], [0.0, 0.0]]))
    assert torch.equal(sel.ids, torch.tensor([[2, 1], [2, 3]]))
    assert torch.equal(sel.extras["matched"], torch.tensor([[True, True], [False, False]]))
    sel = T.detections(boxes=boxes, labels=labels, iou=0.6).select(torchvision_output(), 2)
    assert torch.allclose(sel.scores, torch.tensor([[0.0, 0.7], [0.0, 0.0]]))


def test_images_without_given_boxes_take_the_detections() -> None:
    boxes = [None, torch.tensor([[0.0, 0.0, 4.0, 4.0]])]  # IoU 9 / 16 with image 1's detection
    sel = T.detections(boxes=boxes, labels=[None, [2]]).select(torchvision_output(), 2)
    assert torch.allclose(sel.scores, torch.tensor([[0.9, 0.7, 0.5], [0.6, 0.0, 0.0]]))
    assert torch.equal(sel.ids, torch.tensor([[1, 1, 2], [2, -1, -1]]))


def test_detections_keep_their_settings() -> None:
    for made in (T.detections(), Detections()):
        assert (made.boxes, made.labels) == (None, None)
        assert (made.iou, made.score_threshold, made.nms_iou, made.max_det) == (0.5, 0.5, 0.7, 300)
    boxes, labels = torch.zeros(1, 4), torch.tensor([1])
    made = T.detections(boxes, labels, 0.3, 0.4, 0.6, 10)
    assert made.boxes is boxes and made.labels is labels
    assert (made.iou, made.score_threshold, made.nms_iou, made.max_det) == (0.3, 0.4, 0.6, 10)
    assert type(made.iou) is float and type(made.max_det) is int


def test_detections_refusals() -> None:
    out = torchvision_output()
    needs = (
        "detections() needs a torchvision detector's output (a list of {} dicts with boxes, "
        "labels, scores) or an Ultralytics YOLO model's, got {}"
    )
    got = "a list of 2 (a dict with keys ['boxes', 'scores', 'labels'], ...)"
    with raises_whole(camlens.UnsupportedModelError, needs.format(3, got)):
        T.detections().select(out, 3)
    with raises_whole(camlens.UnsupportedModelError, needs.format(1, got)):
        T.detections().select(out, 1)
    with raises_whole(camlens.UnsupportedModelError, needs.format(2, "a tensor of shape (2, 5)")):
        T.detections().select(torch.zeros(2, 5), 2)
    # noisy copies: the output holds B (1 + copies) images, refused as such
    for copies in (1, 2):
        with raises_whole(
            camlens.TargetError, "detection targets do not support smooth= or noisy-sample methods"
        ):
            T.detections().select(out * (1 + copies), 2, copies=copies)


class TinyDetector(torch.nn.Module):
    """A torchvision-shaped detector: one box per image scored from its ``features``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: Tensor) -> list[dict[str, Tensor]]:
        score = self.features(x).relu().mean(dim=(1, 2, 3)).sigmoid()
        box = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
        return [
            {"boxes": box, "scores": score[i : i + 1], "labels": torch.tensor([1])}
            for i in range(len(x))
        ]


def test_smooth_on_a_detector_is_refused_as_such() -> None:
    model, x = TinyDetector().eval(), torch.rand(2, 3, 8, 8)
    ex = camlens.explain(model, x, "gradcam", "features", target=T.detections(score_threshold=0))
    assert ex.maps.shape == (2, 1, 8, 8) and torch.equal(ex.targets, torch.ones(2, 1).long())
    with raises_whole(
        camlens.TargetError, "detection targets do not support smooth= or noisy-sample methods"
    ):
        camlens.explain(model, x, "gradcam", "features", target=T.detections(), smooth=2)


def test_no_detection_left_warns_at_the_explain_call() -> None:
    model, x = TinyDetector().eval(), torch.rand(2, 3, 8, 8)
    with pytest.warns(UserWarning, match="no detection to explain") as record:
        camlens.explain(model, x, "gradcam", "features", target=T.detections(score_threshold=1))
    mine = [r for r in record if "no detection" in str(r.message)]
    assert len(mine) == 1 and mine[0].filename == __file__


def test_no_detection_left_warns_at_the_callers_line() -> None:
    with pytest.warns(UserWarning, match=re.escape("(none scored >= 0.95 or")) as record:
        sel = T.detections(score_threshold=0.95).select(torchvision_output(), 2)
    assert outside_camlens(record[0].filename)
    assert torch.equal(sel.scores, torch.zeros(2, 1))


# -- Detections.select on a YOLO output ------------------------------------------------------------


def yolo_output() -> tuple[Tensor, dict[str, list[Tensor]]]:
    """An Ultralytics detector's eval output (y, raw) for one image, 2 classes, 4 anchors on one
    2 x 2 scale: y (1, 4 + 2, 4) holds (cx, cy, w, h) then the class probabilities."""
    y = torch.tensor(
        [
            [
                [5.0, 25.0, 5.0, 40.0],
                [5.0, 25.0, 5.0, 40.0],
                [10.0, 10.0, 10.0, 10.0],
                [10.0, 10.0, 10.0, 10.0],
                [0.9, 0.2, 0.1, 0.1],
                [0.1, 0.8, 0.1, 0.3],
            ]
        ]
    )
    return y, {"feats": [torch.zeros(1, 8, 2, 2)]}


def test_yolo_outputs_go_to_select_yolo() -> None:
    output = yolo_output()
    target = T.detections()
    sel = target.select(output, 1)
    assert torch.allclose(sel.scores, torch.tensor([[0.9, 0.8]]))
    assert torch.equal(sel.ids, torch.tensor([[0, 1]]))
    assert torch.equal(sel.extras["boxes"], torch.tensor([[[0.0, 0, 10, 10], [20, 20, 30, 30]]]))
    assert torch.equal(sel.extras["anchors"], torch.tensor([[0, 1]]))
    same = select_yolo(target, output, 1)
    assert torch.equal(sel.scores, same.scores) and torch.equal(sel.ids, same.ids)
    assert set(sel.extras) == set(same.extras) == {"boxes", "matched", "anchors", "levels"}
    with raises_whole(
        camlens.TargetError, "detection targets do not support smooth= or noisy-sample methods"
    ):
        target.select(output, 1, copies=1)
    with pytest.warns(UserWarning, match=re.escape("(none scored >= 0.95 or")) as record:
        sel = T.detections(score_threshold=0.95).select(output, 1)
    assert outside_camlens(record[0].filename)
    assert torch.equal(sel.scores, torch.zeros(1, 1))

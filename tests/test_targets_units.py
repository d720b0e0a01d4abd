"""Unit tests of camlens.targets: class ids, top-k, segmentation, similarity, callables and the
module's lazy names, each against hand-computed values, with every refusal checked by its whole
message (detections: tests/test_targets_detections.py)."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

import camlens
from camlens import targets as T
from camlens.targets import Selection, Target, _repeat, class_ids, logits_of, select_scores
from tests.conftest import raises_whole


def outside_camlens(filename: str) -> bool:
    """A warning's file is not camlens' own: it points at the code that called camlens (this
    test file, or a wrapper around camlens' functions such as a mutation tool's)."""
    return not Path(filename).resolve().is_relative_to(Path(camlens.__file__).parent.resolve())


# (B, classes) = (3, 5): B != classes, so an axis mix-up cannot pass unnoticed
LOGITS = torch.tensor(
    [
        [0.1, 2.0, -1.0, 0.5, 0.0],
        [3.0, -2.0, 1.0, 0.2, 0.3],
        [-0.5, -0.1, -3.0, -0.2, -0.4],
    ]
)


# -- class ids -------------------------------------------------------------------------------------


def test_class_ids_of_every_accepted_spelling() -> None:
    def same(target, expected) -> None:
        ids = class_ids(target, LOGITS)
        assert ids.dtype == torch.long
        assert torch.equal(ids, torch.tensor(expected))

    same(None, [1, 0, 1])  # each image's top class
    same(2, [2, 2, 2])
    same(torch.tensor(4), [4, 4, 4])  # a 0-D tensor: one class for all
    same(np.int64(3), [3, 3, 3])
    same([4, 0, 3], [4, 0, 3])
    same((0, 0, 1), [0, 0, 1])
    same([[0], [4], [2]], [[0], [4], [2]])  # (B, 1): one column is a table too
    same(torch.tensor([[0, 4], [1, 2], [3, 3]], dtype=torch.int32), [[0, 4], [1, 2], [3, 3]])


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (True, "target must be a class id, got True"),
        (
            "cat",
            "target must be None, an int, 3 ints, a (3, T) table of ints, a camlens.targets "
            "target or a callable; got 'cat'",
        ),
        ([0.5, 1.0, 2.0], "target class ids must be integers, got dtype torch.float32"),
        ([True, False, True], "target class ids must be integers, got dtype torch.bool"),
        ([1j, 2j, 0j], "target class ids must be integers, got dtype torch.complex64"),
    ],
)
def test_class_ids_that_are_not_integers(target, message: str) -> None:
    with raises_whole(camlens.TargetError, message):
        class_ids(target, LOGITS)


@pytest.mark.parametrize(
    "shape", [(1,), (2,), (4,), (1, 3), (2, 2), (3, 0), (3, 1, 1), (0,)], ids=str
)
def test_class_ids_of_the_wrong_shape(shape: tuple[int, ...]) -> None:
    message = (
        f"target has shape {shape} but the batch has 3 images; pass one id per image (3,), a "
        "single int for all, or (3, T) ids for T classes per image"
    )
    with raises_whole(camlens.TargetError, message):
        class_ids(torch.zeros(shape, dtype=torch.long), LOGITS)


@pytest.mark.parametrize(
    ("target", "bad"), [(5, "[5]"), ([0, 5, -1], "[-1, 5]"), ([[0, 1], [2, 7], [7, 3]], "[7]")]
)
def test_class_ids_out_of_range(target, bad: str) -> None:
    message = (
        f"target class id(s) {bad} out of range: the model has 5 classes, so ids must be in [0, 4]"
    )
    with raises_whole(camlens.TargetError, message):
        class_ids(target, LOGITS)
    assert torch.equal(class_ids(4, LOGITS), torch.full((3,), 4))  # the last class is fine


def test_logits_of_reads_the_classifier_output() -> None:
    assert logits_of(LOGITS, 3) is LOGITS
    assert logits_of({"logits": LOGITS}, 3) is LOGITS
    assert logits_of((LOGITS, torch.zeros(1)), 3) is LOGITS


@pytest.mark.parametrize(
    ("output", "batch", "hint"),
    [
        (LOGITS, 4, "embeddings"),  # 2-D, another batch
        (torch.zeros(3), 3, "embeddings"),
        (torch.zeros(3, 5, 4), 3, "segmentation"),  # 3-D with the right batch
        (torch.zeros(3, 5, 4, 4), 3, "segmentation"),
    ],
)
def test_logits_of_refuses_with_a_hint(output: Tensor, batch: int, hint: str) -> None:
    hints = {
        "embeddings": "for embeddings, pass target=camlens.targets.similarity(reference)",
        "segmentation": "for segmentation, pass target=camlens.targets.segmentation(class_id)",
    }
    message = (
        f"the model returned a tensor of shape {tuple(output.shape)}; class targets need "
        f"(B, classes) logits with B={batch}: {hints[hint]}, or a callable output -> (B,) scores"
    )
    with raises_whole(camlens.UnsupportedModelError, message):
        logits_of(output, batch)


def test_repeat_puts_each_row_copies_times_after_the_clean_rows() -> None:
    x = torch.tensor([[1, 2], [3, 4], [5, 6]])
    assert torch.equal(_repeat(x, 0), x)
    expected = [[1, 2], [3, 4], [5, 6], [1, 2], [1, 2], [3, 4], [3, 4], [5, 6], [5, 6]]
    assert torch.equal(_repeat(x, 2), torch.tensor(expected))


def noisy(copies: int) -> Tensor:
    """LOGITS followed by `copies` copies of each row whose top class differs from the clean one
    (the clean images decide the classes)."""
    rows = _repeat(LOGITS, copies)[3:]
    return torch.cat([LOGITS, rows.flip(1) + torch.arange(len(rows))[:, None]])


def test_class_targets_select_the_logits_of_the_ids() -> None:
    sel = select_scores(None, LOGITS, 3)  # copies defaults to 0
    assert torch.equal(sel.ids, torch.tensor([1, 0, 1]))
    assert torch.equal(sel.scores, torch.tensor([2.0, 3.0, -0.1]))
    assert sel.extras == {}
    table = select_scores([[0, 4], [1, 2], [3, 3]], LOGITS, 3)
    assert torch.equal(table.scores, torch.tensor([[0.1, 0.0], [-2.0, 1.0], [-0.2, -0.2]]))


def test_class_targets_with_noisy_copies_keep_the_clean_images_classes() -> None:
    out = noisy(2)  # 3 clean rows, then 2 copies of each image
    sel = select_scores(None, out, 3, copies=2)
    ids = torch.tensor([1, 0, 1, 1, 1, 0, 0, 1, 1])
    assert torch.equal(sel.ids, ids)
    assert torch.equal(sel.scores, out[torch.arange(9), ids])
    assert not torch.equal(out[3:].argmax(1), ids[3:])  # the copies alone would say otherwise


def test_a_score_function_replaces_the_logits() -> None:
    def score(logits: Tensor, ids: Tensor) -> Tensor:
        return 10 * logits.gather(1, ids[:, None])[:, 0] + ids

    sel = select_scores(2, LOGITS, 3, score=score)
    assert torch.equal(sel.scores, 10 * LOGITS[:, 2] + 2)
    table = select_scores([[0, 4], [1, 2], [3, 3]], LOGITS, 3, 0, score)
    assert torch.allclose(table.scores, torch.tensor([[1.0, 4.0], [-19.0, 12.0], [1.0, 1.0]]))


# -- top k -----------------------------------------------------------------------------------------


def test_top_k_highest_first() -> None:
    sel = T.top(2).select(LOGITS, 3)
    assert torch.equal(sel.ids, torch.tensor([[1, 3], [0, 2], [1, 3]]))
    assert torch.equal(sel.scores, torch.tensor([[2.0, 0.5], [3.0, 1.0], [-0.1, -0.2]]))
    assert repr(T.top(2)) == "top(2)"
    assert torch.equal(T.top(2)(LOGITS), sel.scores)  # a target is a plain callable too


def test_top_k_with_noisy_copies_and_a_score_function() -> None:
    out = noisy(1)
    sel = T.top(2).select(out, 3, 1, lambda logits, ids: -logits.gather(1, ids[:, None])[:, 0])
    ids = torch.tensor([[1, 3], [0, 2], [1, 3], [1, 3], [0, 2], [1, 3]])
    assert torch.equal(sel.ids, ids)
    assert torch.equal(sel.scores, -out.gather(1, ids))


@pytest.mark.parametrize("k", [0, -1, 2.5, True, "3", None])
def test_top_needs_a_positive_int(k) -> None:
    with raises_whole(camlens.TargetError, f"top(k) needs a positive int k, got {k!r}"):
        T.top(k)


def test_top_k_beyond_the_classes() -> None:
    assert T.top(5).select(LOGITS, 3).ids.shape == (3, 5)
    with raises_whole(camlens.TargetError, "top(6) but the model has 5 classes"):
        T.top(6).select(LOGITS, 3)


def test_the_base_target_and_a_target_as_a_callable() -> None:
    with pytest.raises(NotImplementedError):
        Target().select(LOGITS, 3)
    with pytest.raises(NotImplementedError):
        Target()(LOGITS)
    assert torch.equal(T.as_target(3)(LOGITS), LOGITS[:, 3])  # batch read from the output
    assert torch.equal(T.as_target(None)({"logits": LOGITS}), torch.tensor([2.0, 3.0, -0.1]))


# -- segmentation ----------------------------------------------------------------------------------

# (B, classes, H, W) = (2, 3, 2, 4). Image 0: class 1 wins at (0, 0) and (1, 1) only (not in
# every column), class 2 at (0, 3); image 1: class 0 wins everywhere, class 2 nowhere.
SEG = torch.tensor(
    [
        [
            [[0.0, 1.0, 1.0, 0.0], [2.0, 0.0, 1.0, 1.0]],
            [[3.0, -1.0, 0.0, 0.0], [0.0, 4.0, 0.0, -2.0]],
            [[-1.0, 0.0, -1.0, 5.0], [-1.0, -1.0, -1.0, -1.0]],
        ],
        [
            [[9.0, 9.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0]],
            [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]],
            [[-1.0, -2.0, -3.0, -4.0], [0.0, 0.0, 0.0, 1.0]],
        ],
    ]
)


def test_segmentation_sums_the_class_logits_over_its_predicted_pixels() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sel = T.segmentation([1, 0]).select(SEG, 2)  # 0 is a valid class
    # image 0: 3 + 4 at its two class-1 pixels; image 1: 9 at each of its 8 pixels
    assert torch.equal(sel.scores, torch.tensor([7.0, 72.0]))
    assert sel.ids.dtype == torch.long and torch.equal(sel.ids, torch.tensor([1, 0]))
    assert sel.extras == {}
    assert torch.equal(T.segmentation(2).select(SEG[:1], 1).scores, torch.tensor([5.0]))


def test_segmentation_warns_for_images_without_the_class_at_the_callers_line() -> None:
    message = (
        "segmentation(1): no pixel is predicted as the class in image(s) [1], so their score is 0 "
        "and their map empty; pass mask= to explain a region"
    )
    with pytest.warns(UserWarning, match="^" + re.escape(message) + "$") as record:
        sel = T.segmentation(1).select(SEG, 2)
    assert torch.equal(sel.scores, torch.tensor([7.0, 0.0]))
    assert len(record) == 1 and outside_camlens(record[0].filename)


def test_segmentation_warning_points_at_the_explain_call() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1))  # class 0 everywhere, 2 nowhere
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([1.0, 0.0, -1.0]))
    with pytest.warns(UserWarning, match="no pixel is predicted") as record:
        camlens.explain(model, torch.rand(2, 3, 4, 4), "gradcam", "0", target=T.segmentation(2))
    mine = [r for r in record if "no pixel" in str(r.message)]
    assert len(mine) == 1 and mine[0].filename == __file__


def test_segmentation_with_a_mask() -> None:
    hw = torch.tensor([[True, False, False, True], [False, True, False, False]])
    sel = T.segmentation(2, hw).select(SEG, 2)  # (H, W): the same mask for every image
    assert torch.equal(sel.scores, torch.tensor([3.0, -5.0]))
    weights = torch.zeros(2, 2, 4, dtype=torch.float64)  # (B, H, W) weights, in float64
    weights[0, 0, 0], weights[1, 1, 3] = 0.5, -2.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a mask is given: no warning for class 2 in image 1
        sel = T.segmentation([1, 2], weights).select(SEG, 2)
    assert torch.equal(sel.scores, torch.tensor([1.5, -2.0]))
    assert sel.scores.dtype == torch.float32  # the logits' dtype, not the mask's


def test_segmentation_with_noisy_copies_uses_the_clean_pixels() -> None:
    # one copy per image whose classes are rolled: it predicts other pixels, and the clean
    # image's pixels are kept (image 0's class 1 at (0, 0) and (1, 1): 1 + 1 in its copy)
    out = torch.cat([SEG, SEG.roll(1, dims=1) + 1])
    sel = T.segmentation([1, 0]).select(out, 2, copies=1)
    assert torch.equal(sel.ids, torch.tensor([1, 0, 1, 0]))
    assert torch.equal(sel.scores, torch.tensor([7.0, 72.0, 2.0, -1.0]))
    masked = T.segmentation(2, torch.ones(2, 4)).select(out, 2, copies=1)
    assert torch.equal(masked.scores, torch.tensor([-1.0, -9.0, 12.0, 44.0]))


def test_segmentation_of_one_dimensional_outputs() -> None:
    out = torch.tensor([[[1.0, -1.0, 2.0], [0.0, 3.0, 1.0]]])  # (B, classes, L)
    assert torch.equal(T.segmentation(1).select(out, 1).scores, torch.tensor([3.0]))


@pytest.mark.parametrize(
    ("output", "batch", "shape"), [(LOGITS, 3, (3, 5)), (SEG, 3, (2, 3, 2, 4))]
)
def test_segmentation_needs_class_maps(output: Tensor, batch: int, shape: tuple) -> None:
    message = (
        "segmentation targets need (B, classes, H, W) logits, but the model returned a tensor "
        f"of shape {shape}"
    )
    with raises_whole(camlens.UnsupportedModelError, message):
        T.segmentation(0).select(output, batch)


@pytest.mark.parametrize(
    ("class_id", "message"),
    [
        ([[0, 1], [1, 0]], "segmentation(class_id): one class per image (an int or B ints)"),
        (3, "segmentation class id out of range [0, 2]: tensor([3, 3])"),
        ([-1, 0], "segmentation class id out of range [0, 2]: tensor([-1,  0])"),
        (True, "target must be a class id, got True"),
    ],
)
def test_segmentation_class_ids(class_id, message: str) -> None:
    with raises_whole(camlens.TargetError, message):
        T.segmentation(class_id).select(SEG, 2)


@pytest.mark.parametrize("shape", [(3, 4), (2, 4, 2), (1, 2, 4), (2, 2, 4, 1)], ids=str)
def test_segmentation_masks_of_the_wrong_shape(shape: tuple[int, ...]) -> None:
    message = (
        f"segmentation mask has shape {shape}; the output's class maps are (2, 2, 4): pass "
        "(B, H, W) or (H, W) at the output's size"
    )
    with raises_whole(camlens.TargetError, message):
        T.segmentation(0, torch.ones(shape)).select(SEG, 2)


# -- similarity ------------------------------------------------------------------------------------

EMB = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])


def test_similarity_is_the_cosine_with_the_reference() -> None:
    sel = T.similarity(torch.tensor([2.0, 0.0, 0.0])).select(EMB, 2)
    assert torch.allclose(sel.scores, torch.tensor([1.0, 1 / math.sqrt(2)]))
    assert sel.ids.dtype == torch.long and torch.equal(sel.ids, torch.tensor([-1, -1]))
    per_image = torch.tensor([[0.0, 1.0, 0.0], [-1.0, -1.0, 0.0]])
    sel = T.similarity(per_image).select(EMB.view(2, 3, 1), 2)  # flattened to (B, D)
    assert torch.allclose(sel.scores, torch.tensor([0.0, -1.0]))
    # a float64 reference is read in the embeddings' dtype
    sel = T.similarity(torch.tensor([0.0, 3.0, 4.0], dtype=torch.float64)).select(EMB, 2)
    assert sel.scores.dtype == torch.float32
    assert torch.allclose(sel.scores, torch.tensor([0.0, 0.6 / math.sqrt(2)]))


def test_similarity_with_noisy_copies() -> None:
    ref = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    out = torch.cat([EMB, torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 1.0]])])  # one copy each
    sel = T.similarity(ref).select(out, 2, copies=1)
    expected = torch.tensor([0.0, 1 / math.sqrt(2), 1.0, 1 / math.sqrt(2)])
    assert torch.allclose(sel.scores, expected)
    assert torch.equal(sel.ids, torch.full((4,), -1))


def test_similarity_refusals() -> None:
    with raises_whole(
        camlens.UnsupportedModelError,
        "similarity needs (B, D) embeddings, got a tensor of shape (2, 3)",
    ):
        T.similarity(torch.ones(3)).select(EMB, 3)
    for shape in [(4,), (3, 3), (2, 3, 1), (1, 3)]:
        message = (
            f"similarity reference has shape {shape}; the embeddings are (2, 3): pass (3,) or "
            "(2, 3)"
        )
        with raises_whole(camlens.TargetError, message):
            T.similarity(torch.ones(shape)).select(EMB, 2)


# -- callables -------------------------------------------------------------------------------------


def test_a_callable_target_gives_its_scores_without_class_ids() -> None:
    sel = select_scores(lambda out: out[:, 1] * 2, LOGITS, 3)
    assert torch.equal(sel.scores, LOGITS[:, 1] * 2)
    assert sel.ids.dtype == torch.long and torch.equal(sel.ids, torch.full((3,), -1))
    target = T.as_target(lambda out: out[:, 1] * 2)
    assert torch.equal(target.select(LOGITS, 3).scores, LOGITS[:, 1] * 2)  # copies default to 0
    assert torch.equal(target(LOGITS), LOGITS[:, 1] * 2)
    sel = select_scores(lambda out: out[:, :2], noisy(1), 3, copies=1)
    assert sel.scores.shape == (6, 2) and torch.equal(sel.ids, torch.full((6, 2), -1))
    assert isinstance(sel, Selection)


@pytest.mark.parametrize(
    ("fn", "got"),
    [
        (lambda out: out[:, 0].tolist(), "a list of 3 (a float, ...)"),
        (lambda out: out[:2, 0], "a tensor of shape (2,)"),
        (lambda out: out[:, :1, None], "a tensor of shape (3, 1, 1)"),
        (lambda out: out[0, 0], "a tensor of shape ()"),
    ],
)
def test_a_callable_target_must_return_b_or_b_t_scores(fn, got: str) -> None:
    message = f"a callable target must return a (B,) = (3,) or (B, T) tensor of scores, got {got}"
    with raises_whole(camlens.TargetError, message):
        select_scores(fn, LOGITS, 3)


def test_targets_as_given() -> None:
    top = T.top(1)
    assert T.as_target(top) is top
    assert isinstance(T.as_target(torch.tensor([1, 2, 3])), T._Classes)
    assert isinstance(T.as_target(len), T._Callable)


# -- names imported on first use -------------------------------------------------------------------


def test_lazy_names_and_dir() -> None:
    from camlens import targets_output, targets_text

    assert T.output is targets_output.output and T.Output is targets_output.Output
    assert T.counterfactual is targets_output.counterfactual
    assert T.text is targets_text.text and T.Text is targets_text.Text
    with raises_whole(AttributeError, "module 'camlens.targets' has no attribute 'nothing'"):
        T.nothing  # noqa: B018
    assert not hasattr(T, "Nothing")
    names = dir(T)
    assert names == sorted(names)
    assert {"output", "counterfactual", "text", "Text", "top", "Detections"} <= set(names)

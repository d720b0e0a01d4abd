"""Pure CAM functions on hand-made tensors: the guards, defaults and bounds of each formula."""

from __future__ import annotations

import pytest
import torch

import camlens
from camlens.cams import finercam, gradcam, layercam, xgradcam
from camlens.cams.finer import contrast_score


def test_xgradcam_guards_only_channels_that_sum_to_zero() -> None:
    """w_k = sum_ij A_ij g_ij / sum_ab A_ab; 0 for a channel that sums to 0 (here with
    gradients that are not constant, so sum A g != 0 there). A channel that sums to exactly 1
    is an ordinary channel."""
    one = torch.tensor([[1.0, 0.5], [-0.5, 0.0]])  # sums to 1
    zero = torch.tensor([[1.0, -1.0], [2.0, -2.0]])  # sums to 0
    two = torch.tensor([[1.0, 1.0], [0.5, -0.5]])  # sums to 2
    acts = torch.stack([one, zero, two])[None]
    grads = torch.tensor(
        [[[1.0, 2.0], [3.0, 4.0]], [[1.0, 3.0], [0.0, 1.0]], [[2.0, 0.0], [1.0, 1.0]]]
    )[None]
    w_one = (one * grads[0, 0]).sum() / 1.0  # 1 + 1 - 1.5 = 0.5
    w_two = (two * grads[0, 2]).sum() / 2.0  # (2 + 0 + 0.5 - 0.5) / 2 = 1
    assert float(w_one) == pytest.approx(0.5) and float(w_two) == pytest.approx(1.0)
    assert torch.allclose(xgradcam(acts, grads)[0], w_one * one + w_two * two)


def test_contrast_score_reference_counts_and_batches() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.5, -1.0], [0.0, 4.0, 1.0, 2.0]])
    ids = torch.tensor([0, 3])
    # references = 1: the most similar other class (2.5; and 4.0 for the second image)
    assert torch.allclose(contrast_score(logits, ids), torch.tensor([0.5, -2.0]))
    # references >= K - 1: all the other classes, never the target itself
    for refs in (3, 4, 10):
        got = contrast_score(logits, ids, references=refs)
        assert torch.allclose(got, torch.tensor([3.0 - 2.5 / 3, 2.0 - 5.0 / 3])), refs
    # references = 2 of 4 classes: the two highest others
    got = contrast_score(logits, ids, gamma=2.0, references=2)
    assert torch.allclose(got, torch.tensor([3.0 - 2 * 1.75, 2.0 - 2 * 2.5]))
    # references < 1 means 1
    assert torch.allclose(contrast_score(logits, ids, references=0), torch.tensor([0.5, -2.0]))


def test_finercam_default_base_is_gradcam_and_refuses_itself() -> None:
    gen = torch.Generator().manual_seed(0)
    acts, grads = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen)
    assert torch.equal(finercam(acts, grads), gradcam(acts, grads))
    assert torch.equal(finercam(acts, grads, base="layercam"), layercam(acts, grads))
    for base in ("finercam", "scorecam", "cam", "eigencam"):
        with pytest.raises(camlens.MethodNotFoundError) as err:
            finercam(acts, grads, base=base)
        assert str(err.value) == (
            "finercam's base must be a gradient method that takes (acts, grads), such as "
            "gradcam, gradcampp, layercam, hirescam or xgradcam; got " + repr(base)
        )


def test_gradcampp_needs_both_higher_derivatives_for_the_exact_form() -> None:
    from camlens.cams import gradcampp

    gen = torch.Generator().manual_seed(1)
    acts, grads = torch.rand(1, 2, 3, 3, generator=gen), torch.randn(1, 2, 3, 3, generator=gen)
    extra = torch.rand(1, 2, 3, 3, generator=gen)
    closed = gradcampp(acts, grads)
    assert torch.equal(gradcampp(acts, grads, d2=extra), closed)
    assert torch.equal(gradcampp(acts, grads, d3=extra), closed)
    assert not torch.allclose(gradcampp(acts, grads, d2=extra, d3=extra), closed)

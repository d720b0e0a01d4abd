"""camlens.caller.warn_user: every warning of camlens names the user's line, not camlens'."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

import camlens
from camlens import targets as T
from camlens.caller import warn_user
from tests.conftest import GapNet, HandNet


def _line() -> int:
    """The line of the caller of this function."""
    return inspect.currentframe().f_back.f_lineno


def _only(record: list[warnings.WarningMessage], text: str) -> warnings.WarningMessage:
    found = [w for w in record if text in str(w.message)]
    assert len(found) == 1, [str(w.message) for w in record]
    return found[0]


def test_called_outside_camlens_it_names_its_caller() -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        line = _line() + 1
        warn_user("hello")
    (w,) = record
    assert (w.filename, w.lineno, w.category) == (__file__, line, UserWarning)
    assert str(w.message) == "hello"


def _negative_net() -> HandNet:
    return HandNet(torch.tensor([[-1.0, -2.0]])).eval()  # every gradient map is <= 0


@pytest.mark.parametrize("options", [{}, {"aug_smooth": True}])
def test_the_empty_map_warning_points_at_the_explain_call(options) -> None:
    x = torch.rand(2, 2, 4, 4) + 0.5
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        line = _line() + 1
        camlens.explain(_negative_net(), x, "gradcam", "features", 0, **options)
    w = _only(record, "is <= 0 everywhere")
    assert (w.filename, w.lineno) == (__file__, line)


def test_the_empty_map_warning_points_at_an_explainer_call() -> None:
    explainer = camlens.Explainer(_negative_net(), "gradcam", "features")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        line = _line() + 1
        explainer(torch.rand(1, 2, 4, 4) + 0.5, 0)
    w = _only(record, "is <= 0 everywhere")
    assert (w.filename, w.lineno) == (__file__, line)


@pytest.mark.parametrize("options", [{}, {"smooth": 2}])
def test_the_zero_gradient_warning_points_at_the_explain_call(options) -> None:
    model = GapNet().eval()
    with torch.no_grad():
        model.fc.weight.zero_()
    x = torch.rand(2, 3, 8, 8)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        line = _line() + 1
        camlens.explain(model, x, "gradcam", **options)
    w = _only(record, "is zero everywhere")
    assert (w.filename, w.lineno) == (__file__, line)


def test_a_target_warning_through_a_wrapper_points_at_the_explain_call() -> None:
    from tests.test_targets import SegNet

    torch.manual_seed(0)
    model, x, target = SegNet().eval(), torch.randn(1, 3, 8, 8), T.segmentation(2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        line = _line() + 1
        camlens.explain(model, x, "gradcam", "features", target=target, aug_smooth=True)
    w = _only(record, "no pixel is predicted")
    assert (w.filename, w.lineno) == (__file__, line)

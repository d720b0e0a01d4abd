"""The method registry."""

from __future__ import annotations

import pytest

import camlens
from camlens.registry import get_method, register


def test_foundation_methods_are_registered() -> None:
    assert {"cam", "gradcam", "gradcampp", "layercam"} <= set(camlens.methods())
    assert camlens.methods() == sorted(camlens.methods())


@pytest.mark.parametrize("alias", ["Grad-CAM", "grad_cam", "GradCAM++", "LayerCAM"])
def test_forgiving_spellings(alias: str) -> None:
    assert get_method(alias).name in {"gradcam", "gradcampp", "layercam"}


def test_metadata() -> None:
    info = camlens.method_info("gradcam")
    assert info.needs_grads and "1610.02391" in info.paper
    assert not camlens.method_info("cam").needs_grads


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        register("gradcam", inputs="grads", paper="")(lambda a, g: a)

"""The method registry."""

from __future__ import annotations

import pytest

import camlens
from camlens.registry import get_method, register


def test_foundation_methods_are_registered() -> None:
    assert {"cam", "gradcam", "gradcampp", "layercam"} <= set(camlens.methods())
    assert camlens.methods() == sorted(camlens.methods())


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("Grad-CAM", "gradcam"),
        ("grad_cam", "gradcam"),
        ("GRADCAM", "gradcam"),
        ("GradCAM++", "gradcampp"),
        ("gradcam++", "gradcampp"),
        ("Grad-CAM++", "gradcampp"),
        ("LayerCAM", "layercam"),
        ("Score-CAM", "scorecam"),
        ("HiResCAM", "hirescam"),
        ("gradcam-elementwise", "gradcam_elementwise"),
        ("Smooth-Grad-CAM++", "smoothgradcampp"),
        ("gradcam_elementwise", "gradcam_elementwise"),
    ],
)
def test_forgiving_spellings(alias: str, name: str) -> None:
    """Each spelling resolves to its own method (name and function), never a neighbour."""
    info = get_method(alias)
    assert info.name == name
    assert info.fn is getattr(camlens.cams, name)


def test_unknown_names_suggest_close_ones() -> None:
    with pytest.raises(camlens.MethodNotFoundError) as err:
        get_method("gradcan")
    message = str(err.value)
    assert message.startswith("unknown method 'gradcan'. Did you mean 'gradcam'")
    assert message.endswith(f"Registered methods: {', '.join(camlens.methods())}.")
    with pytest.raises(camlens.MethodNotFoundError, match="must be a name"):
        get_method(3)  # type: ignore[arg-type]


def test_metadata() -> None:
    info = camlens.method_info("gradcam")
    assert info.needs_grads and "1610.02391" in info.paper
    assert not camlens.method_info("cam").needs_grads


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        register("gradcam", inputs="grads", paper="")(lambda a, g: a)

"""Warnings that point at the user's line.

A fixed ``stacklevel=`` goes stale as soon as a frame is added between the user's call and the
warning (a wrapper, a runner, a helper): the warning then names a line inside camlens.
:func:`warn_user` counts camlens' frames on the stack instead.
"""

from __future__ import annotations

import sys
import warnings


def warn_user(message: str) -> None:
    """A UserWarning attributed to the caller of camlens' outermost frame on the stack: the
    user's ``explain``, ``Explainer`` or ``select`` call, however many frames of camlens (or of
    wrappers between them) lie below it. Called from outside camlens, it names its caller."""
    inside: list[int] = []  # the stack levels of camlens' frames, innermost first
    frame, level = sys._getframe(1), 2
    while frame is not None:
        if str(frame.f_globals.get("__name__")).split(".")[0] == "camlens":
            inside.append(level)
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=inside[-1] + 1 if inside else 2)

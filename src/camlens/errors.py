"""Exceptions raised by camlens.

Every message says what was wrong and what would work instead, so that a user can fix the call
without reading camlens' source.
"""

from __future__ import annotations


class CamlensError(Exception):
    """Base class of every error camlens raises on purpose."""


class InputError(CamlensError, ValueError):
    """The images (or another argument) are not what the call needs."""


class LayerNotFoundError(CamlensError, KeyError):
    """A layer name or module does not exist in the model."""

    def __str__(self) -> str:  # KeyError would otherwise print the message in quotes
        return str(self.args[0]) if self.args else ""


class LayerError(CamlensError, ValueError):
    """The layer exists but cannot be explained (e.g. its output is not spatial)."""


class TargetError(CamlensError, ValueError):
    """The target (class id, sequence or callable) does not fit the model's output."""


class UnsupportedModelError(CamlensError, ValueError):
    """The model (or its head) does not have the structure a method needs."""


class MethodNotFoundError(CamlensError, KeyError):
    """No method is registered under that name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class GradientUnavailableError(CamlensError, RuntimeError):
    """A gradient method was called where autograd cannot run (e.g. torch.inference_mode)."""

"""Float32 maths for models in float16 / bfloat16 and under ``torch.autocast``.

The model runs in whatever precision the caller chose; the maps are computed in float32:
activations and gradients are cast up before a method's formula, and autocast is switched off
around the formulas (autocast would otherwise run their matrix products in half precision).
Methods that re-run the model (Score-CAM family) re-enter the caller's autocast for those runs
only, and hand the model inputs in the dtype of the images it was given.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor

F = TypeVar("F", bound=Callable[..., Any])


def autocast_state(device_type: str) -> tuple[bool, torch.dtype | None]:
    """Whether autocast is on for ``device_type`` here, and its dtype."""
    try:
        if torch.is_autocast_enabled(device_type):
            return True, torch.get_autocast_dtype(device_type)
    except (RuntimeError, TypeError, ValueError):  # a device type autocast does not know
        pass
    return False, None


@contextlib.contextmanager
def float32_maths(device_type: str) -> Iterator[None]:
    """Autocast off for ``device_type`` (a no-op where autocast does not exist for it)."""
    try:
        ctx: Any = torch.autocast(device_type, enabled=False)
    except (RuntimeError, TypeError, ValueError):
        ctx = contextlib.nullcontext()
    with ctx:
        yield


def as_caller(fn: Callable[..., Any], device_type: str, state: tuple[bool, Any]) -> Callable:
    """``fn`` run under the caller's autocast ``state`` (from :func:`autocast_state`)."""
    enabled, dtype = state
    if not enabled:
        return fn

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, dtype=dtype, enabled=True):
            return fn(*args, **kwargs)

    return run


def _up(value: Any) -> Any:
    """Half-precision tensors (and lists of them) -> float32; float32 / float64 kept."""
    if isinstance(value, Tensor) and value.is_floating_point():
        return value.float() if torch.finfo(value.dtype).bits < 32 else value
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], Tensor):
        return type(value)(_up(v) for v in value)
    return value


def _device_type(values: Any) -> str:
    for v in values:
        if isinstance(v, Tensor):
            return v.device.type
        if isinstance(v, (list, tuple)) and v and isinstance(v[0], Tensor):
            return v[0].device.type
    return "cpu"


def full_precision(fn: F) -> F:
    """Decorator for a pure formula: its half-precision tensor arguments (and lists of them)
    become float32 (float64 stays) and autocast is off while it runs, so its sums and products
    accumulate in float32 at least."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with float32_maths(_device_type([*args, *kwargs.values()])):
            return fn(*[_up(a) for a in args], **{k: _up(v) for k, v in kwargs.items()})

    return run  # type: ignore[return-value]

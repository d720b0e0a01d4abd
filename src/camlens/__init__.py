"""camlens: class activation maps that explain what an image model looked at.

>>> import camlens
>>> ex = camlens.explain(model, images, method="gradcam")     # doctest: +SKIP
>>> ex.maps.shape                                               # (B, H, W) in [0, 1]
"""

from camlens import targets
from camlens.engine import Explainer, explain
from camlens.errors import (
    CamlensError,
    GradientUnavailableError,
    InputError,
    LayerError,
    LayerNotFoundError,
    MethodNotFoundError,
    TargetError,
    UnsupportedModelError,
)
from camlens.explanation import Explanation
from camlens.registry import method_info, methods

__version__ = "0.1.0"

#: submodules reachable as ``camlens.NAME`` after a plain ``import camlens``, imported on first
#: use (PEP 562) so that ``import camlens`` stays light: none of them imports an optional extra
#: at import time (``camlens.batch`` and ``camlens.app`` import pyarrow/ray/fastapi only inside
#: their functions).
_LAZY = (
    "app",
    "batch",
    "concepts",
    "demo",
    "evaluate",
    "io",
    "layers",
    "layouts",
    "maps",
    "metrics",
    "models",
    "report",
    "viz",
)


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"camlens.{name}")
    raise AttributeError(f"module 'camlens' has no attribute {name!r}")


__all__ = [
    "CamlensError",
    "Explainer",
    "Explanation",
    "GradientUnavailableError",
    "InputError",
    "LayerError",
    "LayerNotFoundError",
    "MethodNotFoundError",
    "TargetError",
    "UnsupportedModelError",
    "__version__",
    "explain",
    "method_info",
    "methods",
    "targets",
]

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

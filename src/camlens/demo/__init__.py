"""camlens' built-in default: the ``shapes`` benchmark and two small models trained on it.

:class:`ShapesCNN` (``load_model()``) and the hybrid :class:`ShapesViT` (``load_model("vit")``).
"""

from camlens.demo.model import ShapesCNN, load_model
from camlens.demo.shapes import CLASSES, shapes
from camlens.demo.vit import ShapesViT

__all__ = ["CLASSES", "ShapesCNN", "ShapesViT", "load_model", "shapes"]

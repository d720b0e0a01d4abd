"""camlens' built-in default: the ``shapes`` benchmark and a small CNN trained on it."""

from camlens.demo.model import ShapesCNN, load_model
from camlens.demo.shapes import CLASSES, shapes

__all__ = ["CLASSES", "ShapesCNN", "load_model", "shapes"]

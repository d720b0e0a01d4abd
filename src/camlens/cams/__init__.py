"""The CAM family: one module per family of methods, each method a pure function.

Importing this package registers every method in :mod:`camlens.registry`.
"""

from camlens.cams.cam import cam
from camlens.cams.gradient import gradcam, gradcampp, layercam

__all__ = ["cam", "gradcam", "gradcampp", "layercam"]

"""The CAM family: one module per family of methods, each method a pure function.

Importing this package registers every method in :mod:`camlens.registry`.
"""

from camlens.cams.ablation import ablationcam, reciprocam
from camlens.cams.attention import gae, rollout
from camlens.cams.cam import cam
from camlens.cams.eigen import eigencam, eigengradcam
from camlens.cams.finer import contrast_score, finercam
from camlens.cams.gradient import (
    gradcam,
    gradcam_elementwise,
    gradcampp,
    hirescam,
    layercam,
    shapleycam,
    smoothgradcampp,
    xgradcam,
)
from camlens.cams.legrad import legrad
from camlens.cams.model_based import fullgrad, guided_gradcam
from camlens.cams.refine import refinecam
from camlens.cams.score import iscam, scorecam, sscam

__all__ = [
    "ablationcam",
    "cam",
    "contrast_score",
    "eigencam",
    "eigengradcam",
    "finercam",
    "fullgrad",
    "gae",
    "gradcam",
    "gradcam_elementwise",
    "gradcampp",
    "guided_gradcam",
    "hirescam",
    "iscam",
    "layercam",
    "legrad",
    "reciprocam",
    "refinecam",
    "rollout",
    "scorecam",
    "shapleycam",
    "smoothgradcampp",
    "sscam",
    "xgradcam",
]

"""The CAM family: one module per family of methods, each method a pure function.

Importing this package registers every method in :mod:`camlens.registry`.
"""

from camlens.cams.ablation import ablationcam, reciprocam
from camlens.cams.attention import gae, rollout
from camlens.cams.cam import cam
from camlens.cams.eigen import eigencam, eigengradcam, segeigencam
from camlens.cams.fem import fem, randomcam
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
from camlens.cams.kpca import kpcacam
from camlens.cams.legrad import legrad
from camlens.cams.model_based import fullgrad, guided_gradcam
from camlens.cams.occlusion import occlusion, rise
from camlens.cams.refine import refinecam
from camlens.cams.score import iscam, scorecam, sscam

__all__ = [
    "ablationcam",
    "cam",
    "contrast_score",
    "eigencam",
    "eigengradcam",
    "fem",
    "finercam",
    "fullgrad",
    "gae",
    "gradcam",
    "gradcam_elementwise",
    "gradcampp",
    "guided_gradcam",
    "hirescam",
    "iscam",
    "kpcacam",
    "layercam",
    "legrad",
    "occlusion",
    "randomcam",
    "reciprocam",
    "refinecam",
    "rise",
    "rollout",
    "scorecam",
    "segeigencam",
    "shapleycam",
    "smoothgradcampp",
    "sscam",
    "xgradcam",
]

"""Detector support beyond torchvision's: Ultralytics YOLO (:mod:`camlens.detection.yolo`) and
images of different sizes (:mod:`camlens.detection.mixed`).

Nothing here imports ``ultralytics`` at import time: it is an optional extra
(``pip install camlens[yolo]``, AGPL-3.0), imported only to build a model from a config.
"""

"""Ultralytics YOLO detectors (v5u, v8, 11; detection and segmentation heads) for
:func:`camlens.targets.detections`.

An Ultralytics ``DetectionModel`` / ``SegmentationModel`` in eval mode returns ``(y, raw)``
(``((y, proto), raw)`` for segmentation), where ``y`` (B, 4 + nc + extra, A) holds, for each of
the A anchors of all scales (P3, P4, P5 in that order), the decoded box (cx, cy, w, h) in input
pixels, the nc class probabilities sigmoid(s_c) and the mask coefficients (extra), and ``raw``
holds the head's inputs in ``raw["feats"]``. camlens explains that output as the model's own
predictor reads it:

1. non-maximum suppression exactly as ``ultralytics.utils.nms.non_max_suppression`` does it
   (:func:`non_max_suppression`: candidates with a class probability > ``score_threshold``,
   each anchor's best class, class-aware NMS with the class offset ``c * 7680``, IoU
   ``nms_iou``, at most ``max_det`` boxes in descending score), so the boxes and classes are the
   predictor's;
2. the score of a kept box is its class probability at the anchor that produced it,
   S = y[b, 4 + c, a] = sigmoid(s_c(a)): a differentiable function of every layer below the head,
   so every gradient method applies (not only Eigen-CAM). Its gradient is sigmoid'(s) times
   the logit's, a positive factor per box: Grad-CAM and LayerCAM maps after min-max are those
   of the logit.

Given boxes are matched, by label and IoU as for torchvision detectors, among the detections
of Ultralytics' validator-style NMS (every class above 0.001 per anchor, ``multi_label=True``),
so that a box may be explained for any class that the model gives it.

``layer=None`` explains the neck's P3 output (the head's first input, ``model.15`` in YOLOv8,
``model.16`` in YOLO11): the highest-resolution feature map, and one that every box's score
depends on (P4 and P5 are computed from it by the neck's bottom-up path), so all boxes of an
image are explained at one layer in one batched gradient.

Differences from the predictor, on purpose: no time limit (the predictor stops NMS after
2 + 0.05 B seconds), and images are explained at the size they are given (the predictor
letterboxes them to a multiple of 32 first; do the same before calling camlens to get its
exact boxes on an arbitrary photo). End-to-end heads (YOLOv10, YOLO26) and oriented boxes are
not supported. Ultralytics is AGPL-3.0: it is an optional extra (``camlens[yolo]``), imported
only by :func:`load_model`, never vendored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from camlens.errors import InputError, UnsupportedModelError

if TYPE_CHECKING:
    from PIL import Image

    from camlens.models import ModelSpec
    from camlens.targets import Detections, Selection

#: Ultralytics' NMS constants: the per-class box offset and the most boxes sent to NMS
MAX_WH = 7680
MAX_NMS = 30000
#: the validator's confidence threshold, used to find the detections given boxes match
MATCH_CONF = 0.001


def yolo_head(model: nn.Module) -> nn.Module | None:
    """The detection head (``Detect``, ``Segment``, ...) of an Ultralytics model, or None.

    Decided from the model's structure (``model.model[-1]`` with ``stride``, ``nc`` and the
    indices ``f`` of its inputs, defined by an ``ultralytics`` module), without importing it."""
    seq = getattr(model, "model", None)
    if not isinstance(seq, nn.Sequential) or len(seq) == 0:
        return None
    head = seq[-1]
    if (
        type(head).__module__.startswith("ultralytics")
        and isinstance(getattr(head, "f", None), (list, tuple))
        and hasattr(head, "stride")
        and hasattr(head, "nc")
    ):
        return head
    return None


def default_layer(model: nn.Module) -> str | None:
    """``layer=None`` for an Ultralytics detector: the neck's P3 output (the head's first input,
    e.g. ``"model.15"`` for YOLOv8), or None when ``model`` is not one."""
    head = yolo_head(model)
    if head is None:
        return None
    return f"model.{head.f[0]}"


def is_yolo_output(output: Any) -> bool:
    """An Ultralytics detector's eval output: ``(y, raw)`` or ``((y, proto), raw)`` with
    ``raw`` a dict holding the head's ``"feats"`` (or its end-to-end ``"one2many"`` parts)."""
    if not isinstance(output, (tuple, list)) or len(output) != 2:
        return False
    raw = output[1]
    return isinstance(raw, Mapping) and ("feats" in raw or "one2many" in raw)


def predictions(output: Any) -> tuple[Tensor, int, list[int]]:
    """(y (B, 4 + nc + extra, A), nc, anchors per scale) of a YOLO output."""
    y, raw = output
    if "one2many" in raw:
        raise UnsupportedModelError(
            "this YOLO model has an end-to-end head (YOLOv10 / YOLO26, no NMS), which camlens "
            "does not explain yet; use a YOLOv5u, YOLOv8 or YOLO11 model (detect or segment)"
        )
    if isinstance(y, (tuple, list)):  # segmentation: (y, proto)
        y = y[0]
    if not isinstance(y, Tensor) or y.ndim != 3:
        raise UnsupportedModelError("a YOLO output without its (B, 4 + nc, anchors) predictions")
    nc = int(raw["scores"].shape[1]) if isinstance(raw.get("scores"), Tensor) else y.shape[1] - 4
    sizes = [int(f.shape[2] * f.shape[3]) for f in raw.get("feats", [])]
    return y, nc, sizes


def xywh2xyxy(boxes: Tensor) -> Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2), with Ultralytics' arithmetic (bit-identical)."""
    xy, wh = boxes[..., :2], boxes[..., 2:] / 2
    return torch.cat([xy - wh, xy + wh], dim=-1)


def non_max_suppression(
    y: Tensor,
    nc: int,
    conf_thres: float,
    iou_thres: float,
    max_det: int = 300,
    classes: Tensor | None = None,
    multi_label: bool = False,
    agnostic: bool = False,
) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """The steps of Ultralytics' NMS (``ultralytics.utils.nms.non_max_suppression``), written anew
    with ``torchvision.ops.nms`` (Ultralytics is AGPL-3.0: nothing of it is vendored), keeping
    the anchor of each box: per image (anchors (N,), classes (N,), boxes xyxy (N, 4), scores
    (N,)) in descending score.

    y (B, 4 + nc + extra, A) as the model returns it (detached here). Candidates: anchors
    whose best class probability is > ``conf_thres``; each keeps its best class (or, with
    ``multi_label``, every class > ``conf_thres``); ``classes`` keeps only those labels; more
    than 30000 candidates keep the 30000 highest; class-aware NMS on boxes + class * 7680
    (``agnostic``: one class) with ``torchvision.ops.nms`` at IoU ``iou_thres``; the first
    ``max_det``. NMS is per image, as in the predictor (no gradient flows through it).
    """
    import torchvision

    y = y.detach()
    candidates = y[:, 4 : 4 + nc].amax(1) > conf_thres  # (B, A)
    multi_label = multi_label and nc > 1
    rows = y.transpose(1, 2)  # (B, A, C)
    out = []
    for b in range(y.shape[0]):
        anchors = candidates[b].nonzero()[:, 0]
        x = rows[b, anchors]
        box, cls = xywh2xyxy(x[:, :4]), x[:, 4 : 4 + nc]
        if multi_label:
            i, j = torch.where(cls > conf_thres)
            box, conf, anchors = box[i], cls[i, j], anchors[i]
        else:
            conf, j = cls.max(1)
            keep = conf > conf_thres
            box, conf, j, anchors = box[keep], conf[keep], j[keep], anchors[keep]
        if classes is not None:
            keep = (j.float()[:, None] == classes.to(y.device).float()).any(1)
            box, conf, j, anchors = box[keep], conf[keep], j[keep], anchors[keep]
        if conf.shape[0] > MAX_NMS:
            order = conf.argsort(descending=True)[:MAX_NMS]
            box, conf, j, anchors = box[order], conf[order], j[order], anchors[order]
        offset = j.float()[:, None] * (0 if agnostic else MAX_WH)
        keep = torchvision.ops.nms(box + offset, conf, iou_thres)[:max_det]
        out.append((anchors[keep], j[keep], box[keep], conf[keep]))
    return out


def select_yolo(target: Detections, output: Any, batch: int) -> Selection:
    """A :class:`camlens.targets.Detections` target on a YOLO output: scores (B, T), the kept
    boxes' class ids (B, T), ``extras["boxes"]`` (B, T, 4) xyxy in input pixels in descending
    score, ``extras["matched"]``, ``extras["anchors"]`` (the anchor index in y, -1: padding) and
    ``extras["levels"]`` (the scale: 0 for P3, 1 for P4, ...; -1: padding)."""
    from camlens.targets import match_given, stack_rows

    y, nc, sizes = predictions(output)
    if y.shape[0] != batch:
        raise UnsupportedModelError(
            f"the YOLO output holds {y.shape[0]} images, but {batch} were given"
        )
    boxes, labels = target.given(batch)
    starts = torch.tensor(sizes, device=y.device).cumsum(0) if sizes else None
    given_any = any(b is not None for b in boxes)
    wanted = None
    if not given_any and labels[0] is not None and all(lab is not None for lab in labels):
        # one label list for every image in Ultralytics' `classes=`; else filter per image
        same = all(torch.equal(labels[0].cpu(), lab.cpu()) for lab in labels)
        wanted = labels[0].long().reshape(-1) if same else None
    if given_any:
        kept = non_max_suppression(
            y, nc, MATCH_CONF, target.nms_iou, target.max_det, multi_label=True
        )
    else:
        kept = non_max_suppression(
            y, nc, target.score_threshold, target.nms_iou, target.max_det, classes=wanted
        )
    rows, anchors_of, levels_of = [], [], []
    for b, ((anchors, cls, xyxy, _conf), given, lab) in enumerate(
        zip(kept, boxes, labels, strict=True)
    ):
        scores = y[b, 4 + cls, anchors]  # the class probability at the anchor: differentiable
        if given is None:
            if lab is not None and wanted is None:
                keep = torch.isin(cls, lab.to(y.device).long().reshape(-1))
                anchors, cls, xyxy, scores = anchors[keep], cls[keep], xyxy[keep], scores[keep]
            rows.append((scores, cls, xyxy, torch.ones_like(anchors, dtype=torch.bool)))
            chosen = anchors
        else:
            want = None if lab is None else lab.to(y.device).long().reshape(-1)
            row = match_given(given, want, xyxy, scores, cls, target.iou)
            rows.append(row)
            best = _best_anchor(given, want, xyxy, cls, target.iou, anchors)
            chosen = torch.where(row[3], best, torch.full_like(best, -1))
        anchors_of.append(chosen)
        levels_of.append(
            torch.bucketize(chosen, starts, right=True)
            if starts is not None
            else torch.zeros_like(chosen)
        )
    for chosen, level in zip(anchors_of, levels_of, strict=True):
        level[chosen < 0] = -1
    return stack_rows(rows, target.score_threshold, {"anchors": anchors_of, "levels": levels_of})


def _best_anchor(
    given: Tensor, want: Tensor | None, xyxy: Tensor, cls: Tensor, iou: float, anchors: Tensor
) -> Tensor:
    """The anchor of the detection that :func:`camlens.targets.match_given` picks per box."""
    from camlens.targets import box_iou

    given = given.to(xyxy.device, torch.float32).reshape(-1, 4)
    if xyxy.shape[0] == 0:
        return torch.full((given.shape[0],), -1, dtype=torch.long, device=xyxy.device)
    overlap = box_iou(given, xyxy.float())
    if want is not None:
        overlap = torch.where(want[:, None] == cls[None, :], overlap, -1.0)
    return anchors[overlap.argmax(dim=1)]


# -- building models (the only place that imports ultralytics) ---------------------------------

_TASKS = ("detect", "segment", "pose")


def import_ultralytics() -> None:
    """Import Ultralytics offline and undo the global patches its import applies.

    Importing ``ultralytics`` replaces ``PIL.Image.open`` (a wrapper that, on an unreadable
    file, tries to install and register ``pi-heif``) and ``torch.save`` for the whole process.
    camlens must leave the caller's process as it found it: an unreadable image must stay one
    clear error, never a package install. The originals are put back after the import (the
    patches are applied once, at import, so they do not come back). ``YOLO_OFFLINE=1`` is set
    unless the environment already says otherwise: no update checks, telemetry or downloads.
    """
    import PIL.Image

    os.environ.setdefault("YOLO_OFFLINE", "1")
    image_open, torch_save = PIL.Image.open, torch.save
    try:
        import ultralytics
        import ultralytics.utils.patches  # noqa: F401  (applies the PIL patch)
    finally:
        PIL.Image.open, torch.save = image_open, torch_save


def load_model(config: str, trust_pickle: bool = False) -> nn.Module:
    """An Ultralytics YOLO model in eval mode, offline.

    ``config``: a model config name resolved as Ultralytics does (``"yolov8n.yaml"``,
    ``"yolo11s-seg.yaml"``: the scale letter picks the depth and width of the family's yaml
    shipped with the package) or a path to a ``.yaml`` (random weights), or a ``.pt``
    checkpoint, which is a pickle (loading it can run code): refused unless ``trust_pickle``.
    Detection, segmentation and pose models; no download ever happens (URLs are refused,
    and ``YOLO_OFFLINE=1`` is set unless the environment already says otherwise).
    """
    try:
        import_ultralytics()
    except ImportError:
        from camlens.models import MissingExtraError

        raise MissingExtraError(
            "ultralytics is not installed; it is an optional extra (AGPL-3.0): "
            "pip install camlens[yolo]"
        ) from None
    if "://" in config:
        raise InputError(
            f"ultralytics:{config}: camlens never downloads models; pass a .yaml config name "
            "(ultralytics:yolov8n.yaml) or a local file"
        )
    suffix = Path(config).suffix.lower()
    if suffix == ".pt":
        return _load_checkpoint(config, trust_pickle)
    if suffix not in (".yaml", ".yml"):
        raise InputError(
            f"ultralytics:{config}: expected a .yaml config (ultralytics:yolov8n.yaml, "
            "ultralytics:yolo11n-seg.yaml, or a path) or a .pt checkpoint with --trust-pickle"
        )
    from ultralytics.nn.tasks import (
        DetectionModel,
        PoseModel,
        SegmentationModel,
        guess_model_task,
        yaml_model_load,
    )

    try:
        cfg = yaml_model_load(config)
    except FileNotFoundError:
        raise InputError(
            f"ultralytics:{config}: no such config, neither a file nor one of Ultralytics' "
            "(e.g. yolov8n.yaml, yolov8s-seg.yaml, yolo11n.yaml, yolov5nu.yaml)"
        ) from None
    task = guess_model_task(cfg)
    classes = {"detect": DetectionModel, "segment": SegmentationModel, "pose": PoseModel}
    if task not in classes:
        raise UnsupportedModelError(
            f"ultralytics:{config} is a {task} model; camlens explains YOLO detection, "
            f"segmentation and pose models ({', '.join(_TASKS)})"
        )
    return classes[task](cfg, verbose=False).eval()


def _load_checkpoint(path: str, trust_pickle: bool) -> nn.Module:
    if not trust_pickle:
        raise InputError(
            f"ultralytics:{path} is a pickle (.pt), which can run code when loaded; camlens "
            "loads it only if you trust the file: pass --trust-pickle (trust_pickle=True), or "
            "build the model from its .yaml and pass --weights a .safetensors state dict"
        )
    if not Path(path).is_file():
        raise InputError(f"ultralytics:{path}: no such file (camlens never downloads weights)")
    from ultralytics.nn.tasks import load_checkpoint

    model, _ = load_checkpoint(path, device="cpu")
    return model.float().eval()


def model_spec(config: str, weights: str | None = None, trust_pickle: bool = False) -> ModelSpec:
    """``--model ultralytics:CONFIG`` for the CLI: :func:`load_model`, plus ``weights`` (a
    state dict: safetensors or torch with ``weights_only=True``) for a yaml-built model. Inputs
    are RGB in [0, 1], letterboxed to 640 (:func:`letterbox`); class names from the model (a
    yaml-built model's are its class numbers)."""
    from camlens.io import load_weights
    from camlens.models import ModelSpec

    if not config:
        raise InputError("ultralytics: needs a config, e.g. ultralytics:yolov8n.yaml")
    if weights is not None and config.lower().endswith(".pt"):
        raise InputError(
            f"ultralytics:{config} holds its own weights; drop --weights, or build the model "
            "from its .yaml and pass --weights a state dict"
        )
    model = load_model(config, trust_pickle=trust_pickle)
    if weights is not None:
        load_weights(model, Path(weights))
    names = getattr(model, "names", None) or {}
    if isinstance(names, Mapping):
        classes = [str(names.get(i, i)) for i in range(len(names))]
    else:
        classes = [str(n) for n in names]
    return ModelSpec(
        model.eval(), f"ultralytics:{config}", classes, 640, None, "none", task="detect"
    )


def letterbox(image: Image.Image, size: int = 640, stride: int = 32) -> Tensor:
    """An RGB image as Ultralytics' predictor feeds it (its ``LetterBox`` with ``auto=True``):
    the longer side resized to ``size`` (aspect kept, bilinear), each side padded to the next
    multiple of ``stride`` with grey 114/255, the padding split between both sides.
    -> (3, H, W) in [0, 1]. Not bit-identical to OpenCV's resize."""
    import torchvision.transforms.functional as TF

    w, h = image.size
    r = min(size / h, size / w)
    new_w, new_h = round(w * r), round(h * r)
    x = TF.to_tensor(image.convert("RGB"))
    x = TF.resize(x, [new_h, new_w], antialias=True).clamp(0, 1)
    pad_w, pad_h = (-new_w) % stride, (-new_h) % stride
    left, top = round(pad_w / 2 - 0.1), round(pad_h / 2 - 0.1)
    out = torch.full((3, new_h + pad_h, new_w + pad_w), 114 / 255)
    out[:, top : top + new_h, left : left + new_w] = x
    return out

"""Ultralytics YOLO (v8 and 11 from their yaml, random weights) through
``camlens.targets.detections``: the predictor's boxes, and each box's map equal to a
hand-written Grad-CAM / LayerCAM of its class score at its anchor."""

from __future__ import annotations

import io
import socket

import pytest
import torch
from torch import Tensor, nn

import camlens
from camlens import targets as T
from camlens.detection.yolo import default_layer, non_max_suppression
from tests.detection.conftest import smooth_images, threshold_for, yolo

unms = pytest.importorskip("ultralytics.utils.nms").non_max_suppression


def _head_nc(model: nn.Module) -> int:
    return int(model.model[-1].nc)


def _y(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        y = model(x)[0]
    return y[0] if isinstance(y, (tuple, list)) else y


def _reference(
    model: nn.Module, x: Tensor, conf: float, iou: float, level: int | None = None
) -> tuple[list[Tensor], list[Tensor], Tensor, Tensor, Tensor]:
    """By hand: a hook makes one head input a leaf (the P3 neck output, or with ``level`` the
    scale's own), Ultralytics' own NMS picks the boxes and their anchors, autograd gives each
    box's dS/dA (S = y[b, 4 + c, anchor], through the whole network above the leaf); Grad-CAM
    and LayerCAM from their formulas. Returns per-image (T_i, h, w) Grad-CAM and LayerCAM raw
    maps (zero for boxes of other scales when ``level`` is given), and the predictor's boxes,
    classes and scores of image 0."""
    store: dict[str, Tensor] = {}

    def hook(_m: nn.Module, _i: object, out: Tensor) -> Tensor:
        store["a"] = out.detach().requires_grad_(True)
        return store["a"]

    head = model.model[-1]
    layer = model.model[head.f[0 if level is None else level]]
    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            y, raw = model(x)
    finally:
        handle.remove()
    y = y[0] if isinstance(y, (tuple, list)) else y
    nc = _head_nc(model)
    out, idx = unms(y.detach().clone(), conf, iou, nc=nc, return_idxs=True)
    ends = torch.tensor([f.shape[2] * f.shape[3] for f in raw["feats"]]).cumsum(0)
    acts = store["a"]
    gradcams, layercams = [], []
    for b in range(x.shape[0]):
        gc, lc = [], []
        for k, anchor in enumerate(idx[b].tolist()):
            if level is not None and int((anchor >= ends).sum()) != level:
                gc.append(torch.zeros(acts.shape[2:]))
                lc.append(torch.zeros(acts.shape[2:]))
                continue
            score = y[b, 4 + int(out[b][k, 5]), anchor]
            (g,) = torch.autograd.grad(score, acts, retain_graph=True)
            a, gb = acts[b].detach(), g[b]
            gc.append((gb.mean(dim=(1, 2))[:, None, None] * a).sum(0))  # sum_k mean(g^k) A^k
            lc.append((gb.clamp(min=0) * a).sum(0))  # sum_k ReLU(g^k_ij) A^k_ij
        gradcams.append(torch.stack(gc) if gc else torch.zeros(0))
        layercams.append(torch.stack(lc) if lc else torch.zeros(0))
    return gradcams, layercams, out[0][:, :4], out[0][:, 5].long(), out[0][:, 4]


def test_default_layer_is_the_p3_neck_output() -> None:
    assert default_layer(yolo("yolov8n.yaml")) == "model.15"
    assert default_layer(yolo("yolo11n.yaml")) == "model.16"
    assert default_layer(nn.Conv2d(3, 3, 1)) is None


@pytest.mark.parametrize("multi_label", [False, True])
def test_nms_equals_ultralytics(det_model: nn.Module, multi_label: bool) -> None:
    x = smooth_images(2, 128, 160, seed=1)
    y = _y(det_model, x)
    conf = threshold_for(det_model, x, 40)
    for classes in (None, [int(y[0, 4:].amax(1).argmax())]):
        theirs, idx = unms(
            y.clone(), conf, 0.5, classes, multi_label=multi_label, nc=80, return_idxs=True
        )
        cls_t = None if classes is None else torch.tensor(classes)
        ours = non_max_suppression(y, 80, conf, 0.5, 300, cls_t, multi_label=multi_label)
        assert sum(len(t) for t in theirs) > (2 if classes is None else 0)
        for (anchors, cls, boxes, scores), t, i in zip(ours, theirs, idx, strict=True):
            assert anchors.tolist() == i.reshape(-1).long().tolist()
            assert torch.equal(boxes, t[:, :4])  # bit-identical: the same arithmetic
            assert torch.equal(scores, t[:, 4])
            assert torch.equal(cls.float(), t[:, 5])


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_each_box_map_at_p3_equals_hand_reference(det_model: nn.Module, method: str) -> None:
    x = smooth_images(1, 128, 160)
    x = torch.cat([x, x.flip(-1)])  # two images with alike score ranges: a few boxes each
    conf = threshold_for(det_model, x, 8)
    p3 = default_layer(det_model)
    target = T.detections(score_threshold=conf, nms_iou=0.7)
    ex = camlens.explain(det_model, x, method, p3, target=target)
    gradcams, layercams, boxes0, cls0, scores0 = _reference(det_model, x, conf, 0.7)
    ref = gradcams if method == "gradcam" else layercams
    layer = ex.layers[0]
    assert ex.layers == [p3]
    raw = ex.raw[layer]  # (B, T, h, w) at P3: stride 8
    assert raw.shape[2:] == (16, 20)
    assert ex.maps.shape[:2] == raw.shape[:2] and ex.maps.shape[2:] == (128, 160)
    for b in range(2):
        n = len(ref[b])
        assert n > 0
        scale = float(ref[b].abs().max())
        torch.testing.assert_close(raw[b, :n], ref[b], rtol=1e-4, atol=1e-5 * scale)
        assert bool((ex.targets[b, n:] == -1).all()) and bool((raw[b, n:] == 0).all())
    # the boxes, classes and scores of the predictor's NMS, in descending score
    n0 = len(boxes0)
    assert torch.equal(ex.extras["boxes"][0, :n0], boxes0)
    assert torch.equal(ex.targets[0, :n0], cls0)
    torch.testing.assert_close(ex.scores[0, :n0], scores0)
    assert bool((ex.scores[0, :n0].diff() <= 0).all())
    assert bool((ex.extras["levels"][0, :n0] >= 0).all())


@pytest.mark.parametrize("crops", [True, False])
@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_each_box_at_its_own_scale_equals_hand_reference(
    det_model: nn.Module, method: str, crops: bool, monkeypatch: pytest.MonkeyPatch
):
    """layer=None: each box at the head input of the scale that produced it, from the class
    branch re-run on the box's window (crops) or from boxes sharing full backwards where their
    windows are disjoint: neither may change anything."""
    from camlens.detection import scales

    monkeypatch.setattr(scales, "CROPS", crops)
    x = smooth_images(1, 192, 160, seed=6)
    x = torch.cat([x, x.flip(-2)])
    conf = threshold_for(det_model, x, 16)
    target = T.detections(score_threshold=conf)
    ex = camlens.explain(det_model, x, method, target=target)
    head = det_model.model[-1]
    assert ex.layers == [f"model.{i}" for i in head.f]
    levels = ex.extras["levels"]
    assert len(set(levels[levels >= 0].tolist())) >= 2  # boxes of several scales
    for level, name in enumerate(ex.layers):
        gradcams, layercams, boxes0, cls0, _ = _reference(det_model, x, conf, 0.7, level)
        ref = gradcams if method == "gradcam" else layercams
        for b in range(2):
            n = len(ref[b])
            mine = levels[b, :n] == level
            scale = max(float(ref[b].abs().max()), 1e-12)
            got = ex.raw[name][b, :n]
            torch.testing.assert_close(got, ref[b], rtol=1e-4, atol=1e-5 * scale)
            assert bool((got[~mine] == 0).all())
        assert torch.equal(ex.extras["boxes"][0, : len(boxes0)], boxes0)
        assert torch.equal(ex.targets[0, : len(cls0)], cls0)
    assert ex.maps.shape[2:] == (192, 160)


def test_head_radius_and_groups() -> None:
    from camlens.detection.scales import _groups, radius

    for config in ("yolov8n.yaml", "yolo11n.yaml"):
        head = yolo(config).model[-1]
        assert [radius(branch) for branch in head.cv3] == [2.0, 2.0, 2.0]
    assert radius(nn.Sequential(nn.Conv2d(3, 3, 3, stride=2))) == float("inf")
    assert radius(nn.Sequential(nn.MaxPool2d(3, 1, 1))) == float("inf")
    # image, scale, anchor cell: boxes 0 and 1 are 5 cells apart (disjoint windows of radius
    # 2), box 2 is 4 from box 0 (overlap), box 3 is another image, box 4 another scale
    images = torch.tensor([0, 0, 0, 1, 0])
    levels = torch.tensor([0, 0, 0, 0, 1])
    cells = torch.tensor([[0, 0], [5, 0], [4, 4], [0, 0], [0, 0]])
    assert _groups(images, levels, cells, [2.0, 2.0, 2.0]).tolist() == [0, 0, 1, 0, 0]
    assert _groups(images, levels, cells, [float("inf")] * 3).tolist() == [0, 1, 2, 0, 0]


def test_model_left_as_it_came_and_nothing_downloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*_a: object, **_k: object) -> None:
        raise AssertionError("camlens/ultralytics tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model = yolo("yolov8n.yaml")
    model.train()
    flags = [m.training for m in model.modules()]
    hooks = sum(len(m._forward_hooks) for m in model.modules())
    x = smooth_images(1, 96, 96)
    ex = camlens.explain(model, x, "gradcam", target=T.detections(score_threshold=0.0))
    assert ex.maps.ndim == 4
    assert [m.training for m in model.modules()] == flags
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks
    assert all(p.grad is None for p in model.parameters())
    model.eval()


def test_given_boxes_match_by_label_and_iou() -> None:
    model = yolo("yolov8n.yaml")
    x = smooth_images(1, 128, 160)
    conf = threshold_for(model, x, 4)
    ex = camlens.explain(model, x, "gradcam", target=T.detections(score_threshold=conf))
    box, label = ex.extras["boxes"][0, 0], int(ex.targets[0, 0])
    shifted = box + torch.tensor([2.0, -1.0, 1.0, 2.0])
    far = torch.tensor([0.0, 0.0, 3.0, 3.0])
    given = T.detections(boxes=torch.stack([shifted, far]), labels=torch.tensor([label, label]))
    ex2 = camlens.explain(model, x, "gradcam", target=given)
    assert ex2.extras["matched"][0].tolist() == [True, False]
    assert ex2.targets[0].tolist() == [label, label]
    assert float(ex2.scores[0, 1]) == 0.0 and bool((ex2.maps[0, 1] == 0).all())
    # the matched box is explained through the detection of its label with the highest IoU:
    # among the validator-style (multi-label, conf > 0.001) detections, here the kept box itself
    y = _y(model, x)
    out, idx = unms(y.clone(), 0.001, 0.7, multi_label=True, nc=80, return_idxs=True)
    of_label = out[0][:, 5] == label
    best = T.box_iou(shifted[None], out[0][of_label, :4])[0].argmax()
    anchor = int(idx[0][of_label][best])
    assert int(ex2.extras["anchors"][0, 0]) == anchor
    torch.testing.assert_close(ex2.scores[0, 0], y[0, 4 + label, anchor])


def test_labels_without_boxes_keep_those_classes() -> None:
    model = yolo("yolo11n.yaml")
    x = smooth_images(1, 128, 128, seed=3)
    x = torch.cat([x, x.flip(-2)])
    conf = threshold_for(model, x, 30)
    every = camlens.explain(model, x, "gradcam", target=T.detections(score_threshold=conf))
    label = int(every.targets[0, 0])
    some = camlens.explain(
        model, x, "gradcam", target=T.detections(labels=torch.tensor([label]), score_threshold=conf)
    )
    kept = every.targets == label
    for b in range(2):
        n = int(kept[b].sum())
        assert torch.equal(some.extras["boxes"][b, :n], every.extras["boxes"][b][kept[b]])
        assert bool((some.targets[b, n:] == -1).all())


def test_segmentation_model_explains_its_boxes() -> None:
    model = yolo("yolov8n-seg.yaml")
    x = smooth_images(1, 128, 128, seed=2)
    conf = threshold_for(model, x)
    ex = camlens.explain(model, x, "gradcam", target=T.detections(score_threshold=conf))
    y = _y(model, x)  # (1, 4 + 80 + 32, A): mask coefficients after the class scores
    assert y.shape[1] == 116
    theirs = unms(y.clone(), conf, 0.7, nc=80)[0]
    n = len(theirs)
    assert n > 0 and torch.equal(ex.extras["boxes"][0, :n], theirs[:, :4])
    assert torch.equal(ex.targets[0, :n], theirs[:, 5].long())


def test_no_detection_warns_and_maps_are_empty() -> None:
    model = yolo("yolov8n.yaml")
    with pytest.warns(UserWarning, match="no detection to explain"):
        ex = camlens.explain(
            model, smooth_images(1, 64, 64), "gradcam", target=T.detections(score_threshold=1.0)
        )
    assert ex.targets.tolist() == [[-1]] and bool((ex.maps == 0).all())


@pytest.mark.parametrize("config", ["yolov5nu.yaml", "yolov8n-pose.yaml"])
def test_v5u_and_pose_models_explain_their_boxes(config: str) -> None:
    model = yolo(config)
    x = smooth_images(1, 64, 96, seed=8)
    y = _y(model, x)
    theirs = unms(y.clone(), 0.0, 0.7, max_det=3, nc=_head_nc(model))[0]
    ex = camlens.explain(model, x, "gradcam", target=T.detections(score_threshold=0.0, max_det=3))
    assert torch.equal(ex.extras["boxes"][0], theirs[:, :4])
    assert torch.equal(ex.targets[0], theirs[:, 5].long())
    assert ex.maps.shape == (1, 3, 64, 96) and bool((ex.maps.flatten(2).amax(2) > 0).all())


def test_a_reused_explainer_keeps_the_per_scale_layers() -> None:
    model = yolo("yolov8n.yaml")
    explainer = camlens.Explainer(model, "gradcam")
    x = smooth_images(1, 64, 64)
    first = explainer(x, lambda out: out[0][:, 4:].amax(dim=(1, 2)))  # a callable target
    assert first.layers == [default_layer(model)]  # the ordinary path: the P3 neck output
    again = explainer(x, T.detections(score_threshold=0.0, max_det=2))
    assert again.layers == [f"model.{i}" for i in model.model[-1].f]


def test_importing_ultralytics_leaves_pil_and_torch_save_alone() -> None:
    """Ultralytics patches PIL.Image.open (an unreadable file would try to install pi-heif) and
    torch.save when imported; camlens puts the originals back."""
    import PIL.Image

    from camlens.detection.yolo import import_ultralytics, load_model

    import_ultralytics()
    load_model("yolov8n.yaml")
    assert PIL.Image.open.__module__ == "PIL.Image"
    assert torch.save.__module__.startswith("torch")
    with pytest.raises(PIL.UnidentifiedImageError):
        PIL.Image.open(io.BytesIO(b"not an image"))

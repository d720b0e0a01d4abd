"""Detectors on lists of images of different sizes: one map list entry per image, at its size,
each exactly what explaining that image alone gives."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import camlens
from camlens import targets as T
from tests.conftest import GapNet, hook_count
from tests.detection.conftest import smooth_images, threshold_for, yolo
from tests.test_model_kinds import tiny_detector


def _check_each_alone(ex: camlens.Explanation, alone: list[camlens.Explanation]) -> None:
    assert isinstance(ex.maps, list) and len(ex) == len(alone)
    t = ex.targets.shape[1]
    for i, one in enumerate(alone):
        n = one.targets.shape[1]
        assert ex.maps[i].shape == (t, *one.maps.shape[2:])  # cropped to the image's own size
        torch.testing.assert_close(ex.maps[i][:n], one.maps[0], rtol=1e-4, atol=1e-5)
        for name, raw in one.raw.items():
            torch.testing.assert_close(ex.raw[name][i][:n], raw[0], rtol=1e-4, atol=1e-6)
        assert torch.equal(ex.targets[i, :n], one.targets[0])
        torch.testing.assert_close(ex.scores[i, :n], one.scores[0])
        torch.testing.assert_close(
            ex.extras["boxes"][i, :n], one.extras["boxes"][0], rtol=1e-4, atol=1e-4
        )
        # padding after the image's own boxes: no class, no score, empty maps
        assert bool((ex.targets[i, n:] == -1).all()) and bool((ex.scores[i, n:] == 0).all())
        assert bool((ex.maps[i][n:] == 0).all())


def test_torchvision_detector_mixed_sizes_exact_per_image() -> None:
    model = tiny_detector()
    g = torch.Generator().manual_seed(0)
    images = [
        torch.rand(3, 64, 64, generator=g),
        torch.rand(3, 48, 80, generator=g),
        torch.rand(3, 64, 64, generator=g),
    ]
    target = T.detections(score_threshold=0.0)
    ex = camlens.explain(model, images, "gradcam", target=target)
    alone = [camlens.explain(model, [im], "gradcam", target=target) for im in images]
    _check_each_alone(ex, alone)
    assert ex.maps[1].shape[1:] == (48, 80)
    assert hook_count(model) == 0
    page = ex.html(max_items=4)  # the notebook view shows each image at its own size
    assert page.count("<img") >= 4 and [im.shape for im in ex.images] == [im.shape for im in images]


def test_torchvision_given_boxes_follow_their_image() -> None:
    model = tiny_detector()
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 64, 64, generator=g), torch.rand(3, 40, 72, generator=g)]
    with torch.no_grad():
        dets = [model([im])[0] for im in images]
    boxes = [d["boxes"][:1] for d in dets]
    labels = [d["labels"][:1] for d in dets]
    ex = camlens.explain(model, images, "gradcam", target=T.detections(boxes=boxes, labels=labels))
    for i, im in enumerate(images):
        one = camlens.explain(
            model, [im], "gradcam", target=T.detections(boxes=boxes[i], labels=labels[i])
        )
        assert bool(ex.extras["matched"][i, 0])
        torch.testing.assert_close(ex.maps[i][0], one.maps[0, 0], rtol=1e-4, atol=1e-5)


def test_yolo_mixed_sizes_exact_per_image() -> None:
    model = yolo("yolov8n.yaml")
    a, b = smooth_images(1, 96, 128, seed=4)[0], smooth_images(1, 128, 96, seed=5)[0]
    images = [a, b, a.flip(-1)]
    conf = min(threshold_for(model, im[None], 4) for im in images)
    target = T.detections(score_threshold=conf)
    ex = camlens.explain(model, images, "layercam", target=target)
    alone = [camlens.explain(model, im[None], "layercam", target=target) for im in images]
    _check_each_alone(ex, alone)
    assert ex.maps[1].shape[1:] == (128, 96)
    assert ex.extras["levels"].shape == ex.targets.shape


def test_yolo_takes_a_list_of_same_size_images() -> None:
    model = yolo("yolov8n.yaml")
    x = smooth_images(2, 64, 64)
    target = T.detections(score_threshold=0.0, max_det=3)
    listed = camlens.explain(model, list(x), "gradcam", target=target)
    stacked = camlens.explain(model, x, "gradcam", target=target)
    assert isinstance(listed.maps, Tensor) and torch.equal(listed.maps, stacked.maps)


def test_mixed_sizes_for_a_classifier_is_one_clear_error() -> None:
    model = GapNet().eval()
    with pytest.raises(camlens.InputError, match="for detectors"):
        camlens.explain(model, [torch.rand(3, 16, 16), torch.rand(3, 16, 24)], "gradcam")

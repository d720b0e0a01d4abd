"""The engine with a tiny torchvision detector: lists of images of several sizes, the padded
frame of the detector's input, and given boxes that follow their image."""

from __future__ import annotations

import pytest
import torch

import camlens
from camlens import targets as T
from camlens.display import framed
from camlens.maps import to_heatmap
from tests.conftest import hook_count
from tests.test_model_kinds import tiny_detector


def test_the_padded_frame_is_cropped_to_the_resized_image() -> None:
    """A 48 x 80 image is resized and padded to a multiple of 32: the map is the raw map
    upsampled to the padded frame, cut to the resized image, then scaled to the image."""
    model = tiny_detector()
    image = torch.rand(3, 48, 80, generator=torch.Generator().manual_seed(0))
    explainer = camlens.Explainer(model, "gradcam")
    ex = explainer([image], T.detections(score_threshold=0.0, max_det=2))
    with torch.no_grad():
        listed = model.transform([image])[0]
    frame = (tuple(listed.tensors.shape[-2:]), tuple(listed.image_sizes[0]))
    assert frame[0] != frame[1] and explainer._frame == frame
    (name,) = ex.layers
    raw = ex.raw[name][0]
    expected = to_heatmap(framed(raw, frame), (48, 80))
    assert torch.allclose(ex.maps[0], expected, atol=1e-6)
    assert not torch.allclose(ex.maps[0], to_heatmap(raw, (48, 80)), atol=1e-3)


def test_given_boxes_follow_their_image_across_sizes() -> None:
    model = tiny_detector()
    gen = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 64, 64, generator=gen), torch.rand(3, 40, 72, generator=gen)]
    with torch.no_grad():
        dets = [model([im])[0] for im in images]
    boxes = [d["boxes"][1:2] for d in dets]  # not the top box: the target decides
    labels = [d["labels"][1:2] for d in dets]
    ex = camlens.explain(model, images, "gradcam", target=T.detections(boxes=boxes, labels=labels))
    assert isinstance(ex.maps, list) and [m.shape[1:] for m in ex.maps] == [(64, 64), (40, 72)]
    for i, im in enumerate(images):
        one = camlens.explain(
            model, [im], "gradcam", target=T.detections(boxes=boxes[i], labels=labels[i])
        )
        assert bool(ex.extras["matched"][i, 0])
        torch.testing.assert_close(ex.maps[i][0], one.maps[0, 0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ex.scores[i, 0], one.scores[0, 0])
    assert hook_count(model) == 0


def test_yolo_boxes_are_explained_each_at_its_own_scale() -> None:
    """layer=None, a detections target and Grad-CAM: the engine hands an Ultralytics YOLO to the
    per-scale path (camlens.detection.scales), whose layers are the head's inputs and whose
    raw maps are zero for the boxes of the other scales; a given layer keeps the plain path."""
    pytest.importorskip("ultralytics")
    from tests.detection.conftest import smooth_images, threshold_for, yolo

    model = yolo("yolov8n.yaml")
    x = smooth_images(1, 96, 96, seed=6)
    target = T.detections(score_threshold=threshold_for(model, x, 8))
    ex = camlens.explain(model, x, "gradcam", target=target)
    assert ex.layers == [f"model.{i}" for i in model.model[-1].f]
    levels = ex.extras["levels"][0]
    assert len(set(levels.tolist())) >= 2 and bool((levels >= 0).all())
    for level, name in enumerate(ex.layers):
        raw = ex.raw[name][0].flatten(1)
        assert bool((raw[levels != level] == 0).all())
        assert bool(raw[levels == level].any(1).all())  # each box of this scale has a map
    one = camlens.explain(model, x, "gradcam", "model.15", target=target)
    assert one.layers == ["model.15"] and bool(one.raw["model.15"][0].flatten(1).any(1).all())


def test_a_yolo_given_a_list_of_same_size_images_explains_their_stack() -> None:
    """A YOLO takes one tensor: a list of (C, H, W) images of one size is explained as the
    (B, C, H, W) stack would be (not handed to the model as a list, which it cannot run)."""
    pytest.importorskip("ultralytics")
    from tests.detection.conftest import smooth_images, threshold_for, yolo

    model = yolo("yolov8n.yaml")
    x = smooth_images(2, 64, 64, seed=6)
    target = T.detections(score_threshold=threshold_for(model, x, 4))
    ref = camlens.explain(model, x, "gradcam", "model.15", target=target)
    ex = camlens.explain(model, list(x), "gradcam", "model.15", target=target)
    assert isinstance(ex.maps, torch.Tensor) and ex.maps.shape == ref.maps.shape == (2, 12, 64, 64)
    torch.testing.assert_close(ex.maps, ref.maps, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ex.raw["model.15"], ref.raw["model.15"], rtol=1e-4, atol=1e-5)
    assert torch.equal(ex.targets, ref.targets) and torch.equal(ex.scores, ref.scores)
    assert hook_count(model) == 0

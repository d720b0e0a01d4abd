"""Several targets per image: one forward and one batched gradient equal T separate calls."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import camlens
from camlens import targets as T
from tests.conftest import hook_count

FAST = ["gradcam", "gradcampp", "layercam", "hirescam", "xgradcam", "cam", "eigencam", "finercam"]
PER_TARGET = ["scorecam", "ablationcam", "fullgrad", "shapleycam"]


def separate(model: nn.Module, images: Tensor, method: str, ids: Tensor) -> tuple[Tensor, ...]:
    runs = [camlens.explain(model, images, method, target=ids[:, t]) for t in range(ids.shape[1])]
    return (
        torch.stack([r.maps for r in runs], 1),
        torch.stack([r.raw[r.layers[0]] for r in runs], 1),
        torch.stack([r.scores for r in runs], 1),
    )


@pytest.mark.parametrize("method", FAST + PER_TARGET)
def test_top_k_equals_k_separate_calls(gapnet, images, method: str) -> None:
    ex = camlens.explain(gapnet, images, method, target=T.top(3), batch_size=16)
    ids = gapnet(images).topk(3, dim=1).indices
    assert torch.equal(ex.targets, ids)
    maps, raw, scores = separate(gapnet, images, method, ids)
    key = ex.layers[0]
    assert ex.maps.shape == (4, 3, 16, 16)
    assert ex.raw[key].shape == ((4, 3, 16, 16) if method == "fullgrad" else (4, 3, 8, 8))
    assert torch.allclose(ex.raw[key], raw, atol=1e-6)
    assert torch.allclose(ex.maps, maps, atol=1e-5)
    assert torch.allclose(ex.scores, scores, atol=1e-6)


def test_class_table_and_callable_multi_targets(gapnet, images) -> None:
    ids = torch.tensor([[0, 1], [2, 3], [4, 0], [1, 1]])
    ex = camlens.explain(gapnet, images, "gradcam", target=ids)
    _, raw, _ = separate(gapnet, images, "gradcam", ids)
    assert torch.allclose(ex.raw["features"], raw, atol=1e-6)
    listed = camlens.explain(gapnet, images, "gradcam", target=ids.tolist())
    assert torch.equal(listed.raw["features"], ex.raw["features"])
    fn = camlens.explain(gapnet, images, "gradcam", target=lambda out: out.gather(1, ids))
    assert torch.allclose(fn.raw["features"], raw, atol=1e-6)
    assert (fn.targets == -1).all()


def test_one_forward_and_one_gradient_for_all_targets(gapnet, images, monkeypatch) -> None:
    forwards: list[int] = []
    handle = gapnet.register_forward_hook(lambda *_: forwards.append(1))
    grads: list[bool] = []
    real = torch.autograd.grad

    def counting(*args, **kwargs):
        grads.append(bool(kwargs.get("is_grads_batched")))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting)
    try:
        camlens.Explainer(gapnet, "gradcam", "features")(images, T.top(5))
    finally:
        handle.remove()
    assert len(forwards) == 1 and grads == [True]


def test_single_targets_keep_todays_shapes(gapnet, images) -> None:
    ex = camlens.explain(gapnet, images, "gradcam", target=2)
    assert ex.maps.shape == (4, 16, 16) and ex.targets.shape == (4,)
    assert camlens.explain(gapnet, images, "gradcam", target=T.top(1)).maps.shape == (4, 1, 16, 16)


def test_bad_multi_targets(gapnet, images) -> None:
    with pytest.raises(camlens.TargetError, match="top"):
        T.top(0)
    with pytest.raises(camlens.TargetError, match="out of range"):
        camlens.explain(gapnet, images, "gradcam", target=[[0, 9]] * 4)
    with pytest.raises(camlens.TargetError, match=r"\(B, T\)"):
        camlens.explain(gapnet, images, "gradcam", target=lambda out: out[None])
    with pytest.raises(camlens.TargetError, match="top\\(9\\)"):
        camlens.explain(gapnet, images, "gradcam", target=T.top(9))
    with pytest.raises(camlens.UnsupportedModelError, match="segmentation"):
        camlens.explain(gapnet, images, "gradcam", target=T.segmentation(1))
    assert hook_count(gapnet) == 0


def test_similarity_and_segmentation_validate_their_inputs(gapnet, images) -> None:
    with pytest.raises(camlens.TargetError, match="reference"):
        camlens.explain(gapnet, images, "gradcam", target=T.similarity(torch.randn(3)))
    with pytest.raises(camlens.UnsupportedModelError, match="torchvision detector"):
        camlens.explain(gapnet, images, "gradcam", target=T.detections())


def test_box_iou() -> None:
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    assert torch.allclose(T.box_iou(a, b), torch.tensor([[1.0, 50 / 150, 0.0]]))


def test_score_cam_scores_each_masked_image_once_for_all_targets(gapnet, images) -> None:
    seen: list[int] = []
    handle = gapnet.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].shape[0]))
    try:
        camlens.explain(gapnet, images, "scorecam", target=0)
        one = sum(seen)
        seen.clear()
        camlens.explain(gapnet, images, "scorecam", target=T.top(3))
    finally:
        handle.remove()
    assert sum(seen) == one


class SegNet(nn.Module):
    """(B, 3, H, W) logits whose class 2 is never the argmax (its logits are -10)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.features(x)
        return torch.cat([out[:, :2], out[:, 2:] - 10.0], dim=1)


def test_empty_segmentation_warns() -> None:
    torch.manual_seed(0)
    model = SegNet().eval()
    x = torch.randn(2, 3, 16, 16)
    with pytest.warns(UserWarning, match="no pixel is predicted"):
        ex = camlens.explain(model, x, "gradcam", "features", target=T.segmentation(2))
    assert torch.equal(ex.scores, torch.zeros(2))

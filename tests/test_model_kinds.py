"""Beyond CNN classifiers: ViTs (torchvision, timm, HF), Swin, segmentation, embeddings,
volumes and detectors, each against a hand-written reference that splits the model itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchvision
from torch import Tensor, nn

import camlens
from camlens import targets as T
from tests.conftest import hook_count

timm = pytest.importorskip("timm")


def reference(
    model: nn.Module,
    module: nn.Module,
    x: Any,
    score: Callable[[Any], Tensor],
    to_spatial: Callable[[Tensor], Tensor],
    method: str = "gradcam",
) -> Tensor:
    """Grad-CAM / LayerCAM by hand: replace the layer's output by a leaf, differentiate the
    score with respect to it, re-index activations and gradients to (B, C, *spatial)."""
    store: dict[str, Tensor] = {}

    def hook(_m: nn.Module, _i: Any, out: Any) -> Any:
        first = out[0] if isinstance(out, tuple) else out
        leaf = first.detach().requires_grad_(True)
        store["a"] = leaf
        return (leaf, *out[1:]) if isinstance(out, tuple) else leaf

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            s = score(model(x))
            (g,) = torch.autograd.grad(s.sum(), store["a"])
    finally:
        handle.remove()
    a, g = to_spatial(store["a"].detach()), to_spatial(g)
    dims = tuple(range(2, a.ndim))
    if method == "layercam":
        return (g.clamp(min=0) * a).sum(1)
    return (g.mean(dim=dims, keepdim=True) * a).sum(1)


def tiny_vit(name: str = "vit_tiny_patch16_224", **kwargs: Any) -> nn.Module:
    """A 2-block timm ViT on 32 x 32 inputs (4 x 4 patches of 8 pixels), random weights."""
    options = dict(img_size=32, patch_size=8, depth=2, num_heads=2, embed_dim=16, num_classes=5)
    return timm.create_model(name, pretrained=False, **{**options, **kwargs})


def tokens(prefix: int, grid: tuple[int, int]) -> Callable[[Tensor], Tensor]:
    return lambda t: t[:, prefix:].transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid)


def logit_of(cls: Tensor) -> Callable[[Any], Tensor]:
    def score(out: Any) -> Tensor:
        logits = out if isinstance(out, Tensor) else out["logits"]
        return logits[torch.arange(len(cls)), cls]

    return score


def randomise_head(head: nn.Linear) -> None:
    """torchvision's ViT starts with a zero head: every gradient would be zero."""
    torch.manual_seed(5)
    with torch.no_grad():
        head.weight.normal_()


def check(model: nn.Module, x: Any, layer: str, to_spatial, score_of=logit_of, **kwargs) -> Any:
    before = hook_count(model)
    flags = [m.training for m in model.modules()]
    for method in ("gradcam", "layercam"):
        ex = camlens.explain(model, x, method, **kwargs)
        assert ex.layers == [layer]
        module = dict(model.named_modules())[layer]
        target = ex.targets
        want = reference(model, module, x, score_of(target), to_spatial, method)
        got = ex.raw[layer]
        assert got.shape == want.shape
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()) + 1e-9)
        assert float(want.abs().max()) > 0
    assert hook_count(model) == before and [m.training for m in model.modules()] == flags
    return ex


def test_torchvision_vit_picks_the_last_blocks_input_norm() -> None:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=5,
    ).eval()
    randomise_head(model.heads.head)
    x = torch.randn(3, 3, 32, 32)
    ex = check(model, x, "encoder.layers.encoder_layer_1.ln_1", tokens(1, (4, 4)))
    assert ex.maps.shape == (3, 32, 32)


@pytest.mark.parametrize(
    ("name", "kwargs", "prefix"),
    [
        ("vit_tiny_patch16_224", {"reg_tokens": 4}, 5),
        ("deit_tiny_distilled_patch16_224", {}, 2),
        ("vit_tiny_patch16_224", {}, 1),
    ],
)
def test_timm_vits_with_prefix_tokens(name: str, kwargs: dict, prefix: int) -> None:
    torch.manual_seed(0)
    model = tiny_vit(name, **kwargs).eval()
    check(model, torch.randn(2, 3, 32, 32), "blocks.1.norm1", tokens(prefix, (4, 4)))


def test_timm_vit_non_square_input() -> None:
    torch.manual_seed(0)
    model = tiny_vit(img_size=(32, 48)).eval()
    ex = check(model, torch.randn(2, 3, 32, 48), "blocks.1.norm1", tokens(1, (4, 6)))
    assert ex.maps.shape == (2, 32, 48)


def test_hf_vit_model_output() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        hidden_size=16,
        intermediate_size=32,
        num_labels=5,
    )
    model = transformers.ViTForImageClassification(config).eval()
    x = torch.randn(2, 3, 32, 32)
    layer = camlens.Explainer(model, "gradcam")
    layer(x)
    assert layer.layers[0].endswith("layernorm_before") and ".1." in layer.layers[0]
    ex = check(model, x, layer.layers[0], tokens(1, (4, 4)))
    assert ex.logits is not None and ex.logits.shape == (2, 5)


def test_torchvision_swin_is_channels_last() -> None:
    torch.manual_seed(0)
    model = torchvision.models.SwinTransformer(
        patch_size=[4, 4],
        embed_dim=16,
        depths=[2, 2],
        num_heads=[2, 2],
        window_size=[4, 4],
        num_classes=5,
    ).eval()
    ex = check(model, torch.randn(2, 3, 64, 64), "features", lambda a: a.permute(0, 3, 1, 2))
    assert ex.raw["features"].shape == (2, 8, 8)


def test_timm_swin_is_channels_last() -> None:
    torch.manual_seed(0)
    model = timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        img_size=64,
        window_size=4,
        embed_dim=16,
        depths=(2, 2),
        num_heads=(2, 2),
        num_classes=5,
    ).eval()
    check(model, torch.randn(2, 3, 64, 64), "layers", lambda a: a.permute(0, 3, 1, 2))


def test_layout_option_and_reshape_transform_callable() -> None:
    torch.manual_seed(0)
    model = tiny_vit().eval()
    x = torch.randn(2, 3, 32, 32)
    auto = camlens.explain(model, x, "gradcam", "blocks.0.norm1")
    fn = tokens(1, (4, 4))
    custom = camlens.explain(model, x, "gradcam", "blocks.0.norm1", layout=fn)
    assert torch.allclose(auto.raw["blocks.0.norm1"], custom.raw["blocks.0.norm1"])
    with pytest.raises(camlens.InputError, match="layout must be"):
        camlens.explain(model, x, "gradcam", layout="hwc")


def test_segmentation_target() -> None:
    torch.manual_seed(0)
    model = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3
    ).eval()
    x = torch.randn(2, 3, 64, 64)
    mask = torch.zeros(2, 64, 64)
    mask[:, 10:40, 20:50] = 1

    def seg_score(_cls: Tensor) -> Callable[[Any], Tensor]:
        return lambda out: (out["out"][:, 1] * mask).sum(dim=(1, 2))

    ex = check(model, x, "backbone.16", lambda a: a, seg_score, target=T.segmentation(1, mask))
    assert ex.targets.tolist() == [1, 1]
    # mask=None: the pixels predicted as the class
    with torch.no_grad():
        pred = (model(x)["out"].argmax(1) == 2).float()
    a = camlens.explain(model, x, "gradcam", target=T.segmentation(2))
    b = camlens.explain(model, x, "gradcam", target=T.segmentation(2, pred))
    assert torch.allclose(a.raw["backbone.16"], b.raw["backbone.16"])


class Embedder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3))
        self.proj = nn.Linear(8, 6)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.features(x).amax(dim=(2, 3)))


def test_similarity_target() -> None:
    torch.manual_seed(0)
    model = Embedder().eval()
    x = torch.randn(3, 3, 16, 16)
    ref = torch.randn(6)

    def cos(_cls: Tensor) -> Callable[[Any], Tensor]:
        return lambda out: torch.nn.functional.cosine_similarity(out, ref.expand(3, -1), dim=1)

    ex = check(model, x, "features", lambda a: a, cos, target=T.similarity(ref))
    assert torch.allclose(ex.scores, cos(ex.targets)(model(x)).detach())
    assert ex.targets.tolist() == [-1, -1, -1]


class Tiny3d(nn.Module):
    """conv3d -> ReLU (``features``) -> global average pooling -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv3d(2, 5, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(5, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3, 4)))


def test_volumes_gradcam_layercam_cam_identities() -> None:
    torch.manual_seed(0)
    model = Tiny3d().eval()
    x = torch.randn(2, 2, 6, 8, 8)
    ex = check(model, x, "features", lambda a: a)
    assert ex.maps.shape == (2, 6, 8, 8)
    cam = camlens.explain(model, x, "cam", target=ex.targets).raw["features"]
    grad = camlens.explain(model, x, "gradcam", target=ex.targets).raw["features"]
    z = 3 * 4 * 4
    assert torch.allclose(grad, cam / z, atol=1e-6)
    acts = model.features(x)
    w = model.fc.weight[ex.targets].clamp(min=0)
    layer = camlens.explain(model, x, "layercam", target=ex.targets).raw["features"]
    assert torch.allclose(layer, torch.einsum("bk,bkdhw->bdhw", w, acts) / z, atol=1e-6)


def test_r3d_volumes_and_clear_errors_for_2d_only_methods() -> None:
    torch.manual_seed(0)
    model = torchvision.models.video.r3d_18(weights=None, num_classes=4).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    ex = camlens.explain(model, x, "gradcam")
    assert ex.layers == ["layer4"] and ex.maps.shape == (1, 4, 32, 32)
    with pytest.raises(camlens.InputError, match="volumes"):
        camlens.explain(model, x, "fullgrad")


def tiny_detector() -> nn.Module:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, stride=2, padding=1),
        nn.ReLU(),
    )
    backbone.out_channels = 12
    anchors = AnchorGenerator(sizes=((16, 32),), aspect_ratios=((0.5, 1.0, 2.0),))
    pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=4, sampling_ratio=2)
    return FasterRCNN(
        backbone,
        num_classes=3,
        rpn_anchor_generator=anchors,
        box_roi_pool=pool,
        min_size=64,
        max_size=64,
        box_score_thresh=0.0,
        box_detections_per_img=5,
        representation_size=32,
    ).eval()


def test_detector_one_map_per_detection() -> None:
    model = tiny_detector()
    images = list(torch.rand(2, 3, 64, 64))
    with torch.no_grad():
        dets = model(images)
    ex = camlens.explain(model, images, "gradcam", target=T.detections(score_threshold=0.0))
    n = max(len(d["scores"]) for d in dets)
    assert ex.layers == ["backbone"] and ex.maps.shape == (2, n, 64, 64)
    assert ex.scores.shape == (2, n) and ex.extras["boxes"].shape == (2, n, 4)
    # each box's map equals a hand-written Grad-CAM of that detection's score
    for t in range(n):

        def score(_cls: Tensor, t: int = t) -> Callable[[Any], Tensor]:
            return lambda out: torch.stack(
                [o["scores"][t] if len(o["scores"]) > t else o["scores"].sum() * 0 for o in out]
            )

        want = reference(model, model.backbone, images, score(ex.targets), lambda a: a)
        assert torch.allclose(ex.raw["backbone"][:, t], want, rtol=1e-4, atol=1e-7)
    # a given box explains the detection of its label with the highest IoU
    box, label = dets[0]["boxes"][0], int(dets[0]["labels"][0])
    one = camlens.explain(
        model, images[:1], "gradcam", target=T.detections(boxes=box[None], labels=[label])
    )
    assert one.maps.shape == (1, 1, 64, 64) and bool(one.extras["matched"].all())
    assert torch.allclose(one.raw["backbone"][0, 0], ex.raw["backbone"][0, 0], atol=1e-6)
    assert hook_count(model) == 0


def test_detector_maps_line_up_with_the_image_despite_padding() -> None:
    """A 64 x 80 image is padded to 64 x 96 inside the detector: the padding's columns of the
    feature map must not be stretched over the image."""
    model = tiny_detector()
    model.transform.min_size, model.transform.max_size = (64,), 80
    explainer = camlens.Explainer(model, "gradcam", "backbone")
    ex = explainer(list(torch.rand(1, 3, 64, 80)), T.detections(score_threshold=0.0))
    assert explainer._frame == ((64, 96), (64, 80))
    raw = torch.zeros(1, 16, 24)  # the padded 64 x 96 frame at stride 4
    raw[0, :, 19] = 1.0  # the last feature column over the image: pixels 76..79 of 80
    framed = camlens.display.framed(raw, explainer._frame)
    assert framed.shape == (1, 64, 80)
    assert float(framed[0, :, :70].max()) == 0.0 and float(framed[0, :, 76:].min()) > 0.4
    assert ex.maps.shape[-2:] == (64, 80)


def test_a_list_for_a_classifier_is_a_clear_error() -> None:
    from tests.conftest import GapNet

    gapnet = GapNet().eval()
    with pytest.raises(camlens.InputError, match="list of images"):
        camlens.explain(gapnet, list(torch.randn(2, 3, 16, 16)), "gradcam")


@pytest.mark.parametrize("method", ["scorecam", "iscam", "eigencam", "ablationcam", "hirescam"])
def test_volumes_for_methods_beyond_the_gradient_family(method: str) -> None:
    torch.manual_seed(0)
    model = Tiny3d().eval()
    x = torch.randn(2, 2, 6, 8, 8)
    options = {"steps": 2} if method == "iscam" else {}
    ex = camlens.explain(model, x, method, "features", target=T.top(2), batch_size=8, **options)
    assert ex.maps.shape == (2, 2, 6, 8, 8) and ex.raw["features"].shape == (2, 2, 3, 4, 4)
    assert torch.isfinite(ex.maps).all()


def test_new_paths_leave_the_model_as_it_came_also_after_an_exception() -> None:
    torch.manual_seed(0)
    model = tiny_vit()
    model.train()
    model.blocks[0].eval()
    model.patch_embed.requires_grad_(False)
    flags = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    x = torch.randn(2, 3, 32, 32)

    def broken(out: Tensor) -> Tensor:
        raise RuntimeError("target failed")

    for method in ("gradcam", "scorecam", "gae", "ablationcam"):
        with pytest.raises((RuntimeError, camlens.CamlensError)):
            camlens.explain(model, x, method, target=broken, batch_size=8)
    for method in ("gradcam", "layercam", "gae", "eigencam"):
        camlens.explain(model, x, method, target=T.top(2))
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == grads
    assert hook_count(model) == 0 and all(p.grad is None for p in model.parameters())


def test_timm_vit_whose_patches_do_not_tile_the_input() -> None:
    """100 x 100 input, 16-pixel patches: a 6 x 6 patch grid (the last 4 pixels are dropped)
    and 37 tokens. Only the patch embedding's grid gives prefix 1, grid 6 x 6; the input-size
    fallback would read 37 tokens as 12 prefix tokens + a 5 x 5 grid of 20-pixel patches."""
    torch.manual_seed(0)
    model = tiny_vit(img_size=100, patch_size=16).eval()
    ex = check(model, torch.randn(2, 3, 100, 100), "blocks.1.norm1", tokens(1, (6, 6)))
    assert ex.raw["blocks.1.norm1"].shape == (2, 6, 6)

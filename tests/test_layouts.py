"""Layouts: tokens, channels-last and volumes are decided from the model, never guessed."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from camlens.errors import LayerError, UnsupportedModelError
from camlens.layouts import Layout, infer_layout, primary_output, token_grid


def test_tokens_use_the_patch_grid_and_drop_prefix_tokens() -> None:
    layout = infer_layout("blk", (2, 197, 768), (224, 224), patch_grid=(14, 14))
    assert layout == Layout("tokens", prefix=1, grid=(14, 14))
    # register tokens: 1 class + 4 registers
    assert infer_layout("blk", (2, 201, 64), (224, 224), patch_grid=(14, 14)).prefix == 5
    # a non-square input: the grid follows the patch embedding, not a square guess
    layout = infer_layout("blk", (2, 1 + 12 * 20, 32), (192, 320), patch_grid=(12, 20))
    assert layout.grid == (12, 20) and layout.prefix == 1


def test_tokens_without_a_patch_grid_come_from_the_input_size() -> None:
    assert token_grid(197, (224, 224), None) == (1, (14, 14))
    assert token_grid(50, (224, 224), None) == (1, (7, 7))


def test_token_reindexing_is_exact() -> None:
    x = torch.arange(2 * 7 * 3, dtype=torch.float32).view(2, 7, 3)  # 1 prefix + 2 x 3 grid
    out = Layout("tokens", prefix=1, grid=(2, 3)).to_spatial(x)
    assert out.shape == (2, 3, 2, 3)
    for b in range(2):
        for i in range(2):
            for j in range(3):
                assert torch.equal(out[b, :, i, j], x[b, 1 + i * 3 + j])


def test_channels_last_is_read_from_the_geometry() -> None:
    # Swin's last stage: (B, 7, 7, 768) must never be read as C=7, h=7, w=768
    assert infer_layout("norm", (2, 7, 7, 768), (224, 224)).kind == "channels_last"
    assert infer_layout("layer4", (2, 2048, 7, 7), (224, 224)).kind == "channels_first"
    # non-square: (B, 10, 7, 96) from a (320, 224) input
    assert infer_layout("s", (2, 10, 7, 96), (320, 224)).kind == "channels_last"
    x = torch.randn(2, 7, 5, 4)
    assert torch.equal(Layout("channels_last").to_spatial(x), x.permute(0, 3, 1, 2))


def test_ambiguous_geometry_asks_the_module_then_names_the_option() -> None:
    shape = (2, 8, 8, 8)
    assert infer_layout("c", shape, (32, 32), nn.Conv2d(3, 8, 3)).kind == "channels_first"
    assert infer_layout("n", shape, (32, 32), nn.LayerNorm(8)).kind == "channels_last"
    with pytest.raises(LayerError, match=r"layout='nchw'.*'nhwc'.*callable"):
        infer_layout("relu", shape, (32, 32), nn.ReLU())
    assert infer_layout("relu", shape, (32, 32), nn.ReLU(), spec="nhwc").kind == "channels_last"


class LayerNorm2d(nn.LayerNorm):
    """torchvision's ConvNeXt norm: a LayerNorm subclass that works channels-first."""


def test_containers_and_layernorm_subclasses_never_decide() -> None:
    # a ConvNeXt block ends with a Linear inside a permuted MLP but outputs channels-first:
    # at C == h == w the block must not be read channels-last
    block = nn.Sequential(nn.Conv2d(8, 8, 7, padding=3), nn.Linear(8, 8))
    for module in (block, LayerNorm2d(8)):
        with pytest.raises(LayerError, match="layout="):
            infer_layout("b", (2, 8, 8, 8), (32, 32), module)
    assert infer_layout("b", (2, 8, 8, 8), (32, 32), block, spec="nchw").kind == "channels_first"


def test_impossible_layouts_name_the_option() -> None:
    with pytest.raises(LayerError, match="layout="):
        infer_layout("x", (2, 10, 64), (224, 224))  # 10 tokens: no grid of patches
    with pytest.raises(LayerError, match="layout="):
        infer_layout("x", (2, 5, 4, 3, 2), (224, 224))  # 5-D for a 2-D input


def test_unpadded_convolutions_on_non_square_inputs_read_channels_first() -> None:
    # three unpadded 5 x 5 convolutions: 40 x 80 -> 28 x 68, no common stride
    assert infer_layout("f", (1, 8, 28, 68), (40, 80)).kind == "channels_first"
    assert infer_layout("f", (1, 28, 68, 8), (40, 80), nn.Linear(4, 8)).kind == "channels_last"


def test_volumes_allow_their_own_time_stride() -> None:
    # r3d_18's layer4 on 4 x 32 x 32 clips: time 1, space 2 x 2
    assert infer_layout("layer4", (1, 512, 1, 2, 2), (4, 32, 32)).kind == "channels_first"
    assert infer_layout("l", (1, 2, 8, 8, 64), (8, 64, 64)).kind == "channels_last"


def test_callable_layout_checks_its_result() -> None:
    layout = infer_layout("x", (2, 5, 4), (8, 8), spec=lambda a: a[:, 1:].reshape(2, 2, 2, 4))
    assert layout.to_spatial(torch.randn(2, 5, 4)).shape == (2, 2, 2, 4)
    bad = infer_layout("x", (2, 5, 4), (8, 8), spec=lambda a: a.sum())
    with pytest.raises(LayerError, match="layout callable"):
        bad.to_spatial(torch.randn(2, 5, 4))


def test_primary_output() -> None:
    t = torch.randn(2, 3)
    assert primary_output(t) is t
    assert primary_output({"logits": t, "hidden": None}) is t
    assert primary_output(OrderedDict(out=t, aux=torch.randn(2, 3))) is t
    assert primary_output((t, torch.randn(1))) is t
    with pytest.raises(UnsupportedModelError, match="target="):
        primary_output({"embedding": t})
    dets = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}]
    with pytest.raises(UnsupportedModelError, match="detections"):
        primary_output(dets)


def test_an_override_that_reads_channels_as_space_is_refused() -> None:
    with pytest.raises(LayerError, match=r"layout='nhwc'.*\(512, 2\)"):
        infer_layout("layer4", (2, 512, 2, 2), (64, 64), spec="nhwc")


@pytest.mark.parametrize("method", ["gradcam", "ablationcam"])
def test_every_path_honours_the_layout_option(method: str) -> None:
    """C == h == w behind a container: undecidable, so an error naming layout=, and with
    layout='nchw' both the gradient path and the re-running path (Ablation-CAM) run."""
    import camlens

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=4, padding=1),
        nn.Sequential(nn.ReLU()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(LayerError, match="layout="):
        camlens.explain(model, x, method, "1")
    assert camlens.explain(model, x, method, "1", layout="nchw").raw["1"].shape == (2, 8, 8)

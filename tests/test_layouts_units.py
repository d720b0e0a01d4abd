"""Layouts, function by function: every branch, bound and message of camlens.layouts.

Written to kill the mutants of ``make mutation``: each decision is checked on a case where the
neighbouring decision (an off-by-one bound, another dimension, the other branch) gives another
answer, and each message is checked whole.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from camlens.errors import LayerError, UnsupportedModelError
from camlens.layouts import (
    MAX_PREFIX,
    Layout,
    _fit_error,
    _fits,
    _layout_help,
    _module_hint,
    describe,
    detector_frame,
    detector_transform,
    infer_layout,
    is_detections,
    primary_or_none,
    primary_output,
    token_grid,
)

HELP = (
    "Say it with layout='nchw' (B, C, h, w), 'nhwc' (B, h, w, C), 'tokens' (B, N, C) or a "
    "callable activation -> (B, C, h, w) (like pytorch-grad-cam's reshape_transform)"
)


# -- token grids ---------------------------------------------------------------------------


def test_the_patch_grid_wins_where_the_input_size_fallback_differs() -> None:
    # 100 x 100 input, 16-pixel patches: 6 x 6 patches (the last 4 pixels dropped) + 1 token
    assert token_grid(37, (100, 100), (6, 6)) == (1, (6, 6))
    assert token_grid(37, (100, 100), None) == (12, (5, 5))  # the fallback's reading
    assert token_grid(36, (100, 100), (6, 6)) == (0, (6, 6))  # no prefix token at all
    assert token_grid(36, (100, 100), None) == (11, (5, 5))
    assert token_grid(37, (100, 100), (6, 6, 1)) == (1, (6, 6, 1))  # a grid of any rank


def test_at_most_sixteen_prefix_tokens() -> None:
    assert MAX_PREFIX == 16
    assert token_grid(36 + 16, (100, 100), (6, 6)) == (16, (6, 6))
    assert token_grid(36 + 17, (100, 100), (6, 6)) is None  # the fallback finds nothing either
    assert token_grid(196 + 16, (224, 224), (14, 14)) == (16, (14, 14))
    assert token_grid(196 + 16, (224, 224), None) == (16, (14, 14))
    assert token_grid(196 + 17, (224, 224), None) is None
    assert token_grid(195, (224, 224), (14, 14)) is None  # fewer tokens than patches


def test_fallback_grids_and_their_bounds() -> None:
    assert token_grid(196, (224, 224), None) == (0, (14, 14))
    assert token_grid(50, (224, 224), None) == (1, (7, 7))
    # 1-pixel patches (stride 1) and the smallest grid, 2 x 2 on a 2 x 2 input
    assert token_grid(17, (4, 4), None) == (1, (4, 4))
    assert token_grid(5, (2, 2), None) == (1, (2, 2))
    # at least 4 patches, and no more prefix tokens than half the patches
    assert token_grid(4, (8, 8), None) == (0, (2, 2))
    assert token_grid(6, (8, 8), None) == (2, (2, 2))
    assert token_grid(7, (8, 8), None) is None
    assert token_grid(3, (6, 6), None) is None  # 1 x 1 grid: too few patches
    # non-square and volumes: one stride for every dimension
    assert token_grid(1 + 4 * 6, (32, 48), None) == (1, (4, 6))
    assert token_grid(1 + 2 * 4 * 4, (8, 16, 16), None) == (1, (2, 4, 4))


def test_tokens_layout_reindexes_and_maps_values_to_the_grid() -> None:
    layout = infer_layout("blk", (2, 37, 8), (100, 100), patch_grid=(6, 6))
    assert layout == Layout("tokens", prefix=1, grid=(6, 6)) and layout.name == "tokens"
    x = torch.randn(2, 37, 8)
    assert torch.equal(layout.to_spatial(x), x[:, 1:].transpose(1, 2).reshape(2, 8, 6, 6))
    values = torch.arange(2 * 37, dtype=torch.float32).view(2, 37)
    assert torch.equal(layout.tokens_to_grid(values), values[:, 1:].reshape(2, 6, 6))
    with pytest.raises(LayerError) as err:
        Layout("channels_last").tokens_to_grid(values)
    assert str(err.value) == "a nhwc layer has no tokens"
    with pytest.raises(LayerError) as err:
        infer_layout("blk", (2, 10, 64), (224, 224))
    assert str(err.value) == (
        "cannot tell how to read layer 'blk' with output (2, 10, 64): 10 tokens are not a grid "
        "of patches of the (224, 224) input (plus at most 16 prefix tokens). " + HELP
    )


# -- layouts of feature maps ------------------------------------------------------------------


def test_layout_names_and_views() -> None:
    assert Layout("channels_first").name == "nchw" and Layout("channels_last").name == "nhwc"
    assert Layout("custom", fn=lambda a: a).name == "custom"
    x = torch.randn(2, 3, 4, 5)
    assert Layout("channels_first").to_spatial(x) is x
    assert torch.equal(Layout("channels_last").to_spatial(x), x.permute(0, 3, 1, 2))
    volume = torch.randn(1, 2, 3, 4, 6)
    assert torch.equal(Layout("channels_last").to_spatial(volume), volume.permute(0, 4, 1, 2, 3))


@pytest.mark.parametrize(
    ("result", "shape"),
    [
        (lambda a: a.sum(), "()"),
        (lambda a: a[0], "(5, 4)"),
        (lambda a: a.reshape(1, 2, 5, 4), "(1, 2, 5, 4)"),
        (lambda a: "nope", "str"),
    ],
)
def test_callable_layouts_must_return_batch_channels_space(result, shape: str) -> None:
    with pytest.raises(LayerError) as err:
        Layout("custom", fn=result).to_spatial(torch.randn(2, 5, 4))
    assert str(err.value) == (
        f"layout callable returned {shape}; it must map the activation (2, 5, 4) to "
        "(B, K, *spatial) with the same batch size"
    )


def test_a_callable_layout_with_three_dims_is_accepted() -> None:
    out = Layout("custom", fn=lambda a: a[:, 1:]).to_spatial(torch.randn(2, 5, 4))
    assert out.shape == (2, 4, 4)


def test_fit_error_values() -> None:
    assert _fit_error((7, 7), (224, 224)) == 0.0
    assert _fit_error((28, 68), (40, 80)) == pytest.approx(
        min(
            max(abs(28 - 40 * r), abs(68 - 80 * r))
            for r in (28 / 40, 68 / 80, 56 / 80, 96 / 120, 136 / 160)
        )
    )
    assert _fit_error((10, 7), (320, 224)) == pytest.approx(0.0)
    assert _fit_error((8, 6), (32, 32)) == pytest.approx(1.0)  # r = 14/64: |8 - 7|, |6 - 7|
    assert _fits((8, 6), (32, 32)) and not _fits((8, 5), (32, 32))
    assert math.isinf(_fit_error((7,), (224, 224)))  # ranks differ
    assert math.isinf(_fit_error((), ()))
    assert math.isinf(_fit_error((0, 7), (224, 224)))
    assert math.isinf(_fit_error((225, 7), (224, 224)))  # larger than the input
    assert _fit_error((224, 7), (224, 224)) > 1  # as large as the input is allowed, but no fit
    # volumes: time has its own stride, (h, w) share one
    assert _fit_error((1, 2, 2), (16, 32, 32)) == 0.0
    assert _fit_error((16, 2, 2), (16, 32, 32)) == 0.0
    assert _fit_error((2, 2, 8), (16, 32, 32)) == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("module", "hint"),
    [
        (None, None),
        (nn.Conv2d(3, 8, 1), "channels_first"),
        (nn.Conv2d(3, 4, 1), None),  # 4 is the height, not the channels
        (nn.Conv1d(3, 8, 1), "channels_first"),
        (nn.Conv3d(3, 8, 1), "channels_first"),
        (nn.ConvTranspose2d(3, 8, 1), "channels_first"),
        (nn.ConvTranspose3d(3, 8, 1), "channels_first"),
        (nn.BatchNorm2d(8), "channels_first"),
        (nn.BatchNorm2d(4), None),
        (nn.BatchNorm2d(16), None),
        (nn.GroupNorm(2, 8), "channels_first"),
        (nn.GroupNorm(2, 4), None),
        (nn.GroupNorm(2, 16), None),
        (nn.LayerNorm(16), "channels_last"),
        (nn.LayerNorm(4), None),
        (nn.LayerNorm(8), None),
        (nn.LayerNorm([4, 16]), None),
        (nn.Linear(3, 16), "channels_last"),
        (nn.Linear(3, 8), None),
        (nn.Linear(3, 4), None),
        (nn.ReLU(), None),
        (nn.Sequential(nn.Conv2d(3, 8, 1)), None),  # containers never decide
    ],
)
def test_module_hints(module, hint) -> None:
    assert _module_hint(module, (2, 8, 4, 16)) == hint


class LayerNormSub(nn.LayerNorm):
    """A LayerNorm subclass (torchvision's LayerNorm2d is one): not a hint."""


def test_layernorm_subclasses_give_no_hint() -> None:
    assert _module_hint(LayerNormSub(16), (2, 8, 4, 16)) is None


def test_layout_help_message() -> None:
    err = _layout_help("blocks.0", (2, 8, 8, 8), "because")
    assert isinstance(err, LayerError)
    assert str(err) == "cannot tell how to read layer 'blocks.0' with output (2, 8, 8, 8): " + (
        "because. " + HELP
    )


def test_infer_layout_messages_are_whole() -> None:
    with pytest.raises(LayerError) as err:
        infer_layout("x", (2, 8, 8, 8), (32, 32), spec="nwhc")
    assert str(err.value) == (
        "layout must be one of ('nchw', 'nhwc', 'tokens') or a callable, got 'nwhc'"
    )
    with pytest.raises(LayerError) as err:
        infer_layout("x", (2, 8, 8, 8), (32, 32), spec="tokens")
    assert str(err.value) == (
        "cannot tell how to read layer 'x' with output (2, 8, 8, 8): layout='tokens' needs a "
        "(B, N, C) activation. " + HELP
    )
    with pytest.raises(LayerError) as err:
        infer_layout("x", (2, 5, 4, 3, 2), (224, 224))
    assert str(err.value) == (
        "cannot tell how to read layer 'x' with output (2, 5, 4, 3, 2): the input has 2 spatial "
        "dimensions (224, 224), so a feature map has 4 dimensions (or 3 for tokens). " + HELP
    )
    with pytest.raises(LayerError) as err:
        infer_layout("l4", (2, 512, 2, 2), (64, 64), spec="nhwc")
    assert str(err.value) == (
        "cannot tell how to read layer 'l4' with output (2, 512, 2, 2): layout='nhwc' reads a "
        "spatial size (512, 2) larger than the (64, 64) input. " + HELP
    )
    with pytest.raises(LayerError) as err:
        infer_layout("r", (2, 8, 8, 8), (32, 32), nn.ReLU())
    assert str(err.value) == (
        "cannot tell how to read layer 'r' with output (2, 8, 8, 8): both (C, *spatial) and "
        "(*spatial, C) fit the (32, 32) input and the module (ReLU) does not say which. " + HELP
    )


def test_infer_layout_decisions() -> None:
    assert infer_layout("x", (2, 5, 4), (8, 8), spec=lambda a: a).kind == "custom"
    # an explicit spec: spatial sizes as large as the input are allowed
    assert infer_layout("x", (2, 3, 32, 32), (32, 32), spec="nchw").kind == "channels_first"
    assert infer_layout("x", (2, 32, 32, 3), (32, 32), spec="nhwc").kind == "channels_last"
    assert infer_layout("x", (2, 40, 6, 6), (24, 24), spec="nchw") == Layout("channels_first")
    # (2, 8, 6, 6) on 24 x 24: channels-first fits exactly (stride 4), channels-last (8, 6) is
    # off by one cell: both fit within a cell but channels-first clearly better (>= 0.5 apart)
    assert infer_layout("x", (2, 8, 6, 6), (24, 24)).kind == "channels_first"
    assert infer_layout("x", (2, 6, 6, 8), (24, 24)).kind == "channels_last"
    # errors 0.5 apart exactly: still "clearly better"
    assert _fit_error((8, 7), (32, 32)) == pytest.approx(0.5)
    assert infer_layout("x", (2, 5, 8, 7), (32, 32)).kind == "channels_first"
    # both fit about as well: the module decides, else an error
    assert infer_layout("x", (2, 8, 8, 8), (32, 32), nn.Conv2d(3, 8, 1)).kind == "channels_first"
    assert infer_layout("x", (2, 8, 8, 8), (32, 32), nn.Linear(3, 8)).kind == "channels_last"
    # neither fits: channels-first unless the module says channels-last
    assert infer_layout("x", (1, 8, 28, 68), (40, 80), nn.Linear(4, 7)).kind == "channels_first"
    assert infer_layout("x", (1, 28, 68, 8), (40, 80), nn.Linear(4, 8)).kind == "channels_last"
    assert infer_layout("x", (1, 28, 68, 8), (40, 80), nn.Conv2d(4, 28, 1)).kind == (
        "channels_first"
    )
    assert infer_layout("x", (1, 28, 68, 8), (40, 80)).kind == "channels_first"


# -- outputs ----------------------------------------------------------------------------------


def test_describe_is_exact() -> None:
    assert describe(torch.zeros(2, 3)) == "a tensor of shape (2, 3)"
    keys = {f"k{i}": i for i in range(10)}
    assert describe(keys) == f"a dict with keys {[f'k{i}' for i in range(8)]}"
    assert describe(OrderedDict(a=1)) == "a OrderedDict with keys ['a']"
    assert describe([torch.zeros(1), 2]) == "a list of 2 (a tensor of shape (1,), ...)"
    assert describe(()) == "a tuple of 0 (nothing, ...)"
    assert describe(3.5) == "a float"


def test_detections_are_lists_of_dicts_with_boxes_and_scores() -> None:
    det = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}
    assert is_detections([det]) and is_detections((det, det))
    assert not is_detections([]) and not is_detections(det)
    assert not is_detections([det, {"boxes": torch.zeros(0, 4)}])
    assert not is_detections([det, torch.zeros(1)])
    assert not is_detections([{"scores": torch.zeros(0)}])


def test_primary_output_and_its_errors() -> None:
    t = torch.randn(2, 3)
    assert primary_output([{"logits": t}]) is t
    assert primary_output([t, 1]) is t
    assert primary_output({"logits": None, "out": t}) is t
    with pytest.raises(UnsupportedModelError) as err:
        primary_output({"logits": [1]})
    assert str(err.value) == (
        "the model returned a dict with keys ['logits'], which has no logits (a tensor, or a "
        "dict / ModelOutput with 'logits' or 'out'); pass target= a callable output -> (B,) or "
        "(B, T) scores"
    )
    det = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0)}]
    with pytest.raises(UnsupportedModelError) as err:
        primary_output(det)
    assert str(err.value).endswith(
        "; pass target=camlens.targets.detections(...) to explain a detector's boxes"
    )
    for bad in ([], [1, 2], ("text",), 3):
        with pytest.raises(UnsupportedModelError, match="callable"):
            primary_output(bad)
    assert primary_or_none(t) is t and primary_or_none(det) is None
    assert primary_or_none({"x": t}) is None and primary_or_none({"out": t}) is t


def test_primary_output_of_clip_towers_and_pplcnet() -> None:
    """HF CLIP vision towers: image_embeds; HF PPLCNet: a 2-D last_hidden_state, not a 3-D one."""
    embeds, tokens = torch.randn(2, 8), torch.randn(2, 5, 8)
    assert primary_output({"last_hidden_state": tokens, "image_embeds": embeds}) is embeds
    scores = torch.randn(2, 4)
    assert primary_output({"last_hidden_state": scores, "pooler_output": None}) is scores
    logits = torch.randn(2, 4)
    assert primary_output({"last_hidden_state": scores, "logits": logits}) is logits
    for bad in ({"last_hidden_state": tokens}, {"last_hidden_state": torch.randn(2, 4, 3, 3)}):
        with pytest.raises(UnsupportedModelError, match="has no logits"):
            primary_output(bad)
    assert primary_or_none({"last_hidden_state": tokens}) is None


def test_detector_transform_and_frame() -> None:
    class Transform(nn.Module):
        def postprocess(self, *args):
            return args

    class Detector(nn.Module):
        def __init__(self, transform):
            super().__init__()
            self.transform = transform

    transform = Transform()
    assert detector_transform(Detector(transform)) is transform
    assert detector_transform(Detector(nn.Identity())) is None  # no postprocess
    assert detector_transform(nn.Linear(2, 2)) is None
    plain = nn.Module()
    plain.transform = SimpleNamespace(postprocess=None)  # not a module
    assert detector_transform(plain) is None

    images = SimpleNamespace(tensors=torch.zeros(2, 3, 64, 96), image_sizes=[(60, 90), (64, 80)])
    assert detector_frame((images, None)) == ((64, 96), (60, 90))
    assert detector_frame((images,)) == ((64, 96), (60, 90))
    assert detector_frame([images, None]) is None  # a list is not the transform's output
    assert detector_frame(()) is None and detector_frame(images) is None
    assert detector_frame((SimpleNamespace(tensors=torch.zeros(1, 3, 8, 8)),)) is None
    assert detector_frame((SimpleNamespace(tensors=torch.zeros(1, 3, 8, 8), image_sizes=[]),)) is (
        None
    )
    no_tensor = SimpleNamespace(tensors=[[0.0]], image_sizes=[(8, 8)])
    assert detector_frame((no_tensor,)) is None
    sizes = detector_frame(
        (SimpleNamespace(tensors=torch.zeros(1, 3, 8, 8), image_sizes=[(7.0, 6)]),)
    )
    assert sizes == ((8, 8), (7, 6)) and all(type(v) is int for v in sizes[1])


def test_fit_bounds_and_the_clearly_better_rule() -> None:
    # channels-first fits within exactly one cell, channels-last not at all: channels-first,
    # whatever a channels-last module would say in the neither-fits case
    assert _fit_error((8, 6), (32, 32)) == pytest.approx(1.0)
    assert infer_layout("x", (2, 100, 8, 6), (32, 32), nn.Linear(3, 6)).kind == "channels_first"
    assert infer_layout("x", (2, 8, 6, 100), (32, 32)).kind == "channels_last"
    # 1.5 cells off is no fit: then a channels-last module decides, else channels-first
    assert _fit_error((8, 5), (32, 32)) == pytest.approx(1.5)
    assert infer_layout("x", (2, 100, 8, 5), (32, 32), nn.Linear(3, 5)).kind == "channels_last"
    assert infer_layout("x", (2, 8, 5, 100), (32, 32)).kind == "channels_first"
    # both fit, 0.5 cells each: neither is clearly better, so the module decides (or an error)
    assert _fit_error((3, 2), (32, 32)) == pytest.approx(0.5)
    assert _fit_error((2, 3), (32, 32)) == pytest.approx(0.5)
    with pytest.raises(LayerError, match="both"):
        infer_layout("x", (2, 2, 3, 2), (32, 32), nn.ReLU())
    # neither fits and no module: channels-first, never an error
    assert math.isinf(_fit_error((200, 3), (32, 32))) and math.isinf(_fit_error((2, 200), (32, 32)))
    assert infer_layout("x", (2, 2, 200, 3), (32, 32)).kind == "channels_first"


def test_an_explicit_tokens_layout_reads_tokens() -> None:
    layout = infer_layout("blk", (2, 197, 768), (224, 224), spec="tokens")
    assert layout == Layout("tokens", prefix=1, grid=(14, 14))

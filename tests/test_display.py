"""camlens.display: displayed maps, detector frames, logits and the empty-map warning, against
hand-computed values (bilinear upsampling with align_corners=False: an output pixel i of a
2x upsampling reads the input at (i + 0.5) / 2 - 0.5, clamped to the edges)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

import camlens
from camlens.display import display_maps, framed, logits_or_none, warn_empty_maps
from camlens.fusion import fuse_layers
from camlens.maps import minmax

ROW = torch.tensor([0.0, 0.25, 0.75, 1.0])  # [0, 4] upsampled to 4 pixels, then min-max


def test_one_layer_is_relu_upsampling_and_min_max() -> None:
    raw = torch.tensor([[[-4.0, 4.0], [-4.0, 4.0]], [[2.0, 2.0], [-6.0, 0.0]]])
    maps = display_maps([raw], (4, 4))
    assert maps.shape == (2, 4, 4)
    assert torch.allclose(maps[0], ROW.expand(4, 4), rtol=0, atol=1e-6)  # ReLU before upsampling
    assert torch.allclose(maps[1], ROW.flip(0)[:, None].expand(4, 4), rtol=0, atol=1e-6)


def test_several_targets_per_image_are_normalised_one_by_one() -> None:
    raw = torch.zeros(2, 3, 2, 2)
    raw[1, 2] = torch.tensor([[0.0, 8.0], [0.0, 8.0]])
    raw[0, 1] = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    raw[0, 0] = 5.0  # constant: no spatial information, an empty map
    maps = display_maps([raw], (4, 4))
    assert maps.shape == (2, 3, 4, 4)
    assert torch.allclose(maps[1, 2], ROW.expand(4, 4), rtol=0, atol=1e-6)
    assert torch.allclose(maps[0, 1], ROW.flip(0)[:, None].expand(4, 4), rtol=0, atol=1e-6)
    assert not maps[0, 0].any() and not maps[1, :2].any() and not maps[0, 2].any()


def test_prepare_runs_on_each_layers_flat_raw_maps() -> None:
    seen = []

    def prepare(raw: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(raw.shape))
        return -raw

    raw = torch.tensor([[[4.0, -4.0], [4.0, -4.0]]]).expand(2, 1, 2, 2).reshape(1, 2, 2, 2)
    maps = display_maps([raw], (4, 4), prepare)
    assert seen == [(2, 2, 2)]
    assert torch.allclose(maps, ROW.expand(1, 2, 4, 4), rtol=0, atol=1e-6)
    seen.clear()
    display_maps([raw, raw[..., :1, :1]], (4, 4), prepare)
    assert seen == [(2, 2, 2), (2, 1, 1)]


def test_several_layers_are_fused_as_layercam() -> None:
    first, second = torch.zeros(1, 4, 4), torch.zeros(1, 2, 2)
    first[0, 3, 3] = 2.0
    second[0] = torch.tensor([[1.0, 0.0], [0.0, -3.0]])
    maps = display_maps([first, second], (4, 4))
    assert torch.equal(maps, minmax(fuse_layers([first, second], (4, 4))))
    # by hand: the first layer is tanh(2) at (3, 3); the second, tanh(2) at (0, 0) upsampled
    up = torch.tensor([1.0, 0.75, 0.25, 0.0])
    expected = up[:, None] * up[None, :]
    expected[3, 3] = 1.0
    assert torch.allclose(maps[0], expected, rtol=0, atol=1e-6)


def test_fuse_one_scales_a_single_layer_like_layercam() -> None:
    raw = torch.tensor([[[0.0, 1.0], [2.0, 4.0]], [[-1.0, 0.0], [0.0, 0.0]]])
    fused = display_maps([raw], (2, 2), fuse_one=True)
    t = torch.tanh(torch.tensor([0.0, 0.5, 1.0, 2.0])) / torch.tanh(torch.tensor(2.0))
    assert torch.allclose(fused[0].flatten(), t, rtol=0, atol=1e-6)
    assert torch.equal(fused[1], torch.zeros(2, 2))
    plain = display_maps([raw], (2, 2))
    assert torch.allclose(plain[0].flatten(), torch.tensor([0.0, 0.25, 0.5, 1.0]), atol=1e-6)


def test_volumes_have_three_spatial_dimensions() -> None:
    raw = torch.zeros(2, 3, 1, 2, 2)  # (B, T, d, h, w)
    raw[1, 0, 0] = torch.tensor([[0.0, 4.0], [0.0, 4.0]])
    maps = display_maps([raw], (2, 4, 4))
    assert maps.shape == (2, 3, 2, 4, 4)
    assert torch.allclose(maps[1, 0], ROW.expand(2, 4, 4), rtol=0, atol=1e-6)
    assert not maps[0].any() and not maps[1, 1:].any()


def test_framed_crops_the_resized_image_out_of_the_padded_frame() -> None:
    raw = torch.tensor([[[1.0, -1.0, 3.0], [1.0, -1.0, 3.0]]])  # (1, 2, 3), padded (4, 6)
    out = framed(raw, ((4, 6), (3, 5)))
    row = torch.tensor([1.0, 0.75, 0.25, 0.75, 2.25])  # ReLU, then upsampled along the width
    assert out.shape == (1, 3, 5)
    assert torch.allclose(out, row.expand(1, 3, 5), rtol=0, atol=1e-6)
    full = framed(raw, ((4, 6), (4, 6)))  # nothing padded: the whole upsampled map
    assert torch.allclose(full, torch.cat([row, torch.tensor([3.0])]).expand(1, 4, 6), atol=1e-6)
    one = framed(raw, ((4, 6), (1, 1)))
    assert torch.allclose(one, torch.ones(1, 1, 1), atol=1e-6)


@pytest.mark.parametrize(
    "frame", [None, ((4, 6, 2), (3, 5, 2)), ((4,), (3,)), ((4, 6), (5, 5)), ((4, 6), (3, 7))]
)
def test_framed_leaves_maps_that_do_not_fit_the_frame(frame) -> None:
    raw = torch.tensor([[[1.0, -1.0, 3.0], [1.0, -1.0, 3.0]]])
    assert framed(raw, frame) is raw


def test_logits_or_none() -> None:
    logits = torch.arange(15.0).view(3, 5)
    assert torch.equal(logits_or_none(logits, 2), logits[:2])
    assert torch.equal(logits_or_none((logits, torch.zeros(3, 2, 4, 4)), 3), logits)
    assert logits_or_none(torch.zeros(3), 3) is None
    assert logits_or_none(torch.zeros(3, 2, 4, 4), 3) is None
    assert logits_or_none([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                            "labels": torch.zeros(0).long()}], 1) is None  # fmt: skip
    assert logits_or_none(object(), 1) is None


def _warned(raws, nd, layers, method) -> list[str]:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        warn_empty_maps(raws, nd, layers, method)
    assert all(w.category is UserWarning for w in record)
    return [str(w.message) for w in record]


def _message(method: str, layer: str, where: str) -> str:
    return (
        f"the {method} raw map of layer {layer!r} is <= 0 everywhere at (image[, target]) "
        f"{where}, so its map is empty after the ReLU: nothing in the layer speaks for the target "
        "(untrained weights, or a target the image speaks against: try targets.counterfactual, "
        "another layer or method)"
    )


def test_an_empty_map_is_reported_with_where_it_is() -> None:
    raw = torch.ones(2, 3, 2, 2)
    raw[0, 1] = -1.0
    raw[1, 2] = torch.tensor([[0.0, -2.0], [0.0, 0.0]])  # max 0, min < 0: empty too
    raw[1, 0] = 0.0  # exactly zero: warned about elsewhere, not here
    raw[0, 2] = torch.tensor([[0.5, -2.0], [-1.0, -1.0]])  # positive somewhere
    assert _warned([raw], 2, ["a.b"], "gradcam") == [_message("gradcam", "a.b", "[[0, 1], [1, 2]]")]


def test_more_than_five_empty_maps_are_cut_short() -> None:
    six, five = -torch.ones(6, 1, 2, 2), -torch.ones(5, 1, 1, 1)  # volumes: nd = 3
    assert _warned([six], 3, ["x"], "layercam") == [
        _message("layercam", "x", "[[0], [1], [2], [3], [4]] ...")
    ]
    assert _warned([five], 3, ["y"], "m") == [_message("m", "y", "[[0], [1], [2], [3], [4]]")]


def test_each_layer_is_reported_and_nothing_without_layers() -> None:
    empty, full = -torch.ones(1, 2, 2), torch.ones(1, 2, 2)
    assert _warned([full, empty], 2, ["one", "two"], "m") == [_message("m", "two", "[[0]]")]
    assert _warned([empty, empty], 2, ["one"], "m") == [_message("m", "one", "[[0]]")]
    assert _warned([empty], 2, None, "m") == []
    assert _warned([full, torch.zeros(2, 2, 2)], 2, ["one", "two"], "m") == []


def test_the_warning_names_the_callers_line() -> None:
    with pytest.warns(UserWarning, match="^" + re.escape(_message("m", "l", "[[0]]")) + "$") as w:
        warn_empty_maps([-torch.ones(1, 2, 2)], 2, ["l"], "m")
    # this file, or a wrapper around camlens' functions between it and camlens (a mutation
    # tool's trampoline): never camlens' own code (tests/test_caller.py pins the exact line)
    assert not Path(w[0].filename).resolve().is_relative_to(Path(camlens.__file__).parent.resolve())

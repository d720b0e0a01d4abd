"""Occlusion: loop references in float64 (windows that do not divide the image, strides,
scalar / per-channel / image baselines, several targets, batches of different images), the
generic target path, the batching and progress contracts, and every refusal by its message."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import camlens
from camlens.cams.model_based import ModelCall
from camlens.cams.occlusion import perturbed_scores
from camlens.errors import InputError
from camlens.maps import minmax
from tests.conftest import GapNet


def _exact(msg: str) -> str:
    return "^" + re.escape(msg) + "$"


def _starts(size: int, window: int, stride: int) -> list[int]:
    """Window positions 0, s, 2s, ... until one reaches the border (cut there)."""
    out = [0]
    while out[-1] + window < size:
        out.append(out[-1] + stride)
    return out


def _reference_occlusion(model, x, target, window, stride, baseline, softmax):
    """Captum's Occlusion written out with loops in float64: every window position, the drop of
    the target's score (logit or probability), averaged over the windows covering a pixel."""
    x = x.double()
    base = torch.as_tensor(baseline, dtype=torch.float64).expand(x.shape)
    b, _, h, w = x.shape
    rows = torch.arange(b)[:, None]

    def score(images):
        with torch.no_grad():
            out = model(images)
        out = out.softmax(dim=1) if softmax else out
        return out[rows, target]  # (B, T)

    clean = score(x)
    total = torch.zeros(b, target.shape[1], h, w, dtype=torch.float64)
    count = torch.zeros(h, w, dtype=torch.float64)
    for r0 in _starts(h, window[0], stride[0]):
        for c0 in _starts(w, window[1], stride[1]):
            occluded = x.clone()
            win = (slice(None), slice(None), slice(r0, r0 + window[0]), slice(c0, c0 + window[1]))
            occluded[win] = base[win]
            drop = clean - score(occluded)
            total[:, :, win[2], win[3]] += drop[:, :, None, None]
            count[win[2], win[3]] += 1
    return total / count, clean


@pytest.fixture(scope="module")
def model64():
    torch.manual_seed(21)
    return GapNet(channels=5, classes=4, last_relu=False).double().eval()


BASELINES = {
    "scalar": lambda: 0.25,
    "per-channel": lambda: torch.tensor([-1.0, 0.5, 2.0]).view(3, 1, 1),
    "image": lambda: torch.linspace(-1, 1, 3 * 9 * 11).view(3, 9, 11),
    "batch": lambda: torch.linspace(-2, 1, 2 * 3 * 9 * 11).view(2, 3, 9, 11),
}


@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("baseline", list(BASELINES))
def test_occlusion_matches_a_loop_reference(model64, baseline: str, softmax: bool) -> None:
    """9 x 11 images, window 3 x 4, stride 2 x 3: neither divides the image (the last windows
    are cut at 8 and at 12 -> 11); two different images with two class targets each."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    target = torch.tensor([[1, 3], [2, 0]])
    base = BASELINES[baseline]()
    ex = camlens.explain(
        model64,
        x,
        "occlusion",
        target=target,
        window=(3, 4),
        stride=(2, 3),
        baseline=base,
        softmax=softmax,
        batch_size=7,
    )
    ref, _ = _reference_occlusion(model64, x, target, (3, 4), (2, 3), base, softmax)
    assert ex.raw["input"].shape == (2, 2, 9, 11)
    assert torch.allclose(ex.raw["input"].double(), ref, atol=1e-5)
    assert torch.equal(ex.targets, target)
    with torch.no_grad():
        logits = model64(x)
    assert torch.allclose(ex.scores, logits.gather(1, target))  # the logits, also with softmax
    relu = ex.raw["input"].clamp(min=0).flatten(0, 1)
    assert torch.allclose(ex.maps, minmax(relu).view(2, 2, 9, 11), atol=1e-6)
    assert ex.extras == {} and ex.layers == ["input"]


def test_occlusion_defaults_are_window_16_stride_8(model64) -> None:
    x = torch.randn(1, 3, 24, 24, dtype=torch.float64)
    default = camlens.explain(model64, x, "occlusion", target=1)
    given = camlens.explain(model64, x, "occlusion", target=1, window=16, stride=8)
    assert torch.equal(default.raw["input"], given.raw["input"])
    other = camlens.explain(model64, x, "occlusion", target=1, window=17, stride=8)
    assert not torch.allclose(default.raw["input"], other.raw["input"])


@pytest.mark.parametrize(
    ("window", "stride", "same_as"),
    [
        ((9, 4), (12, 3), (9, 3)),  # one window over the full height: any stride there
        ((3, 11), (2, 15), (2, 11)),  # one window over the full width
        ((9, 11), (20, 30), (1, 1)),  # the whole image: one window
    ],
)
def test_a_window_as_large_as_the_image_takes_any_stride(model64, window, stride, same_as) -> None:
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    target = torch.tensor([[1], [2]])
    ex = camlens.explain(model64, x, "occlusion", target=target, window=window, stride=stride)
    ref, clean = _reference_occlusion(model64, x, target, window, same_as, 0.0, False)
    assert torch.allclose(ex.raw["input"].double(), ref, atol=1e-5)
    if window == (9, 11):  # the drop of the score to the baseline's, everywhere
        with torch.no_grad():
            black = model64(torch.zeros_like(x)).gather(1, target)
        expected = (clean - black)[:, :, None, None].expand(2, 1, 9, 11)
        assert torch.allclose(ex.raw["input"].double(), expected, atol=1e-5)


def test_the_generic_path_scores_several_targets_per_image(model64) -> None:
    """A callable returning (B, T) scores goes through the engine's select: the same maps as
    the class ids, column by column (T = 2, with the windows scored in several passes)."""
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    ids = camlens.explain(
        model64, x, "occlusion", target=[[0, 2], [0, 2]], window=(3, 4), stride=(2, 3)
    )
    fn = camlens.explain(
        model64,
        x,
        "occlusion",
        target=lambda out: out[:, [0, 2]],
        window=(3, 4),
        stride=(2, 3),
        batch_size=6,
    )
    assert fn.raw["input"].shape == (2, 2, 9, 11)
    assert torch.allclose(fn.raw["input"], ids.raw["input"], atol=1e-5)
    assert torch.allclose(fn.scores, ids.scores)


class _Recorder(nn.Module):
    """A model that records the batch size of every forward pass it gets."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.sizes: list[int] = []

    def forward(self, x):
        self.sizes.append(int(x.shape[0]))
        return self.inner(x)


@pytest.mark.parametrize(
    ("batch_size", "passes"),
    # B = 2 images, 4 windows: each pass holds the 2 clean rows and 2 * step copies,
    # step = max(1, batch_size // 2 - 1), so that a pass holds at most batch_size rows
    [(5, [4, 4, 4, 4]), (8, [8, 4]), (10, [10]), (9, [8, 4]), (3, [4, 4, 4, 4])],
)
def test_the_generic_path_passes_hold_at_most_batch_size_rows(batch_size, passes) -> None:
    torch.manual_seed(1)
    model = _Recorder(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))).eval()
    x = torch.randn(2, 3, 4, 4)
    ex = camlens.explain(
        model, x, "occlusion", target=lambda o: o[:, 1], window=2, stride=2, batch_size=batch_size
    )
    assert model.sizes[-len(passes) :] == passes
    assert sum(model.sizes) == 2 * len(model.sizes[: -len(passes)]) + sum(passes)  # the rest: clean
    ref = camlens.explain(model, x, "occlusion", target=1, window=2, stride=2)
    assert torch.allclose(ex.raw["input"], ref.raw["input"], atol=1e-6)


def test_the_class_path_scores_copies_in_batches_of_batch_size() -> None:
    torch.manual_seed(1)
    model = _Recorder(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))).eval()
    x = torch.randn(2, 3, 4, 4)
    camlens.explain(model, x, "occlusion", target=1, window=2, stride=2, batch_size=3)
    assert model.sizes[-3:] == [3, 3, 2]  # 4 windows x 2 images = 8 copies


class _Bars:
    """A stand-in for tqdm that records how each bar was opened, advanced and closed."""

    def __init__(self):
        self.bars: list[dict] = []

    def __call__(self, **kwargs):
        record = {"kwargs": kwargs, "updates": [], "closed": False}
        self.bars.append(record)

        class Bar:
            def update(self, k):
                record["updates"].append(k)

            def close(self):
                record["closed"] = True

        return Bar()


@pytest.mark.parametrize("path", ["class", "generic"])
@pytest.mark.parametrize(
    ("method", "options", "count"),
    [("occlusion", {"window": 2, "stride": 2}, 4), ("rise", {"n": 5, "cells": 2}, 5)],
)
def test_progress_bar_counts_every_modified_image(
    monkeypatch, path: str, method: str, options, count: int
) -> None:
    tqdm = pytest.importorskip("tqdm")
    bars = _Bars()
    monkeypatch.setattr(tqdm, "tqdm", bars)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).eval()
    x = torch.randn(2, 3, 4, 4)
    target = 1 if path == "class" else (lambda o: o[:, 1])
    camlens.explain(model, x, method, target=target, progress=True, batch_size=4, seed=0, **options)
    assert len(bars.bars) == 1
    bar = bars.bars[0]
    assert bar["kwargs"] == {"total": 2 * count, "desc": method, "unit": "img", "leave": False}
    # class path: batches of 4 copies; generic path: 1 window x 2 images per pass of 4 rows
    assert bar["updates"] == (
        [4] * (2 * count // 4) + [2] * (count % 2) if path == "class" else [2] * count
    )
    assert bar["closed"]
    # and without progress, no bar (whatever the seed: the options are not mixed up)
    camlens.explain(model, x, method, target=target, batch_size=4, seed=3, **options)
    assert len(bars.bars) == 1


@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_half_precision_models_get_their_own_dtype(method: str) -> None:
    """Masks and baselines are float32 and float: the modified images must be the images' dtype
    (a bfloat16 model refuses float32 inputs), on both scoring paths."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).eval()
    x = torch.randn(2, 3, 4, 4)
    if method == "occlusion":
        options = {"window": 2, "stride": 2, "baseline": 0.5}
    else:
        options = {"n": 6, "cells": 2, "softmax": False}
    ref = camlens.explain(model, x, method, target=1, **options)
    half = model.to(torch.bfloat16)
    for target in (1, lambda o: o[:, 1]):
        ex = camlens.explain(half, x.to(torch.bfloat16), method, target=target, **options)
        assert torch.allclose(ex.raw["input"], ref.raw["input"], atol=0.05, rtol=0.05)


def test_refusals_name_what_was_wrong(model64) -> None:
    x = torch.randn(1, 3, 8, 12, dtype=torch.float64)

    def refuse(msg: str, **options) -> None:
        with pytest.raises(InputError, match=_exact(msg)):
            camlens.explain(model64, x, "occlusion", target=0, **options)

    pair = "{} must be a positive int or two (height, width), got {}"
    refuse(pair.format("window", "0"), window=0)
    refuse(pair.format("window", "(0, 4)"), window=(0, 4))
    refuse(pair.format("window", "(2.5, 2)"), window=(2.5, 2))
    refuse(pair.format("window", "(2, 2, 2)"), window=(2, 2, 2))
    refuse(pair.format("stride", "-1"), window=4, stride=-1)
    refuse(pair.format("stride", "[1]"), window=4, stride=[1])
    refuse("window (9, 4) is larger than the images (8, 12)", window=(9, 4))
    refuse("window (4, 13) is larger than the images (8, 12)", window=(4, 13))
    stride = (
        "stride {} is larger than the window {}: some pixels would never be occluded; "
        "use a stride at most the window"
    )
    refuse(stride.format("(3, 2)", "(2, 2)"), window=2, stride=(3, 2))
    refuse(stride.format("(2, 3)", "(2, 2)"), window=2, stride=(2, 3))
    refuse(stride.format("(5, 3)", "(4, 12)"), window=(4, 12), stride=(5, 3))
    refuse(
        "baseline of shape (4, 1, 1) does not broadcast to the images (1, 3, 8, 12); pass a "
        "float, (C, 1, 1), (C, H, W) or (B, C, H, W)",
        window=4,
        stride=2,
        baseline=torch.zeros(4, 1, 1),
    )
    for method in ("occlusion", "rise"):
        with pytest.raises(
            InputError,
            match=_exact(
                f"{method} perturbs images (B, C, H, W), got (1, 3, 2, 8, 8); for volumes and "
                "video use gradcam, scorecam or another layer method"
            ),
        ):
            camlens.explain(model64, torch.randn(1, 3, 2, 8, 8), method)


def test_the_generic_path_needs_the_select_callback() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).eval()
    images = torch.randn(2, 3, 2, 2)
    call = ModelCall(
        model=model,
        images=images,
        target=lambda o: o[:, 0],
        score=lambda out: (out[:, 0], torch.full((2,), -1)),
        layers=[],
    )
    with pytest.raises(
        InputError, match=_exact("occlusion needs the engine's select callback (ModelCall.select)")
    ):
        perturbed_scores(call, 3, lambda n, b: images[b], False, "occlusion")

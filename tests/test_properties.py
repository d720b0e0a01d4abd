"""Property-based tests (hypothesis): for random input sizes (non-square and odd), batch sizes
1..8, channel counts, layouts (NCHW, NHWC, tokens with 0..5 prefix tokens, volumes) and
targets, every explanation

- has maps in [0, 1] with the input's spatial shape and finite raw maps,
- leaves the model as it came (training flag, requires_grad, parameters, no hook),
- does not depend on the batch's composition: explaining images one at a time equals
  explaining them together, within ``ATOL`` (float32 reductions may be ordered differently
  for another batch size).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import camlens
from tests.conftest import hook_count

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

#: max |map(one image alone) - map(the same image in a batch)|, maps in [0, 1]
ATOL = 1e-4
SETTINGS = settings(
    max_examples=8,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure reproduces
    suppress_health_check=[HealthCheck.too_slow],
)
METHODS = ("gradcam", "gradcampp", "layercam", "hirescam", "xgradcam", "eigencam")


class ConvNet(nn.Module):
    """NCHW: conv, ReLU, strided conv, ReLU (``features``), GAP, linear."""

    def __init__(self, in_ch: int, channels: int, classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, channels, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class ChannelsLast(nn.Module):
    """NHWC: the feature map is permuted to (B, h, w, C) and normalised by a LayerNorm."""

    def __init__(self, in_ch: int, channels: int, classes: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, channels, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(channels)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.norm(self.conv(x).permute(0, 2, 3, 1)).mean(dim=(1, 2)))


class Volume(nn.Module):
    """(B, C, D, H, W) clips: Conv3d, ReLU (``features``), global average, linear."""

    def __init__(self, in_ch: int, channels: int, classes: int):
        super().__init__()
        self.features = nn.Sequential(nn.Conv3d(in_ch, channels, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3, 4)))


def _state(model: nn.Module) -> tuple:
    return (
        model.training,
        [p.requires_grad for p in model.parameters()],
        [p.detach().clone() for p in model.parameters()],
        hook_count(model),
        [p.grad is None for p in model.parameters()],
    )


def _same_state(a: tuple, b: tuple) -> bool:
    return (
        a[0] == b[0]
        and a[1] == b[1]
        and all(torch.equal(x, y) for x, y in zip(a[2], b[2], strict=True))
        and a[3] == b[3]
        and a[4] == b[4]
    )


def _check(
    model: nn.Module, x: Tensor, method: str, layer: str | None, target: object, **kw: object
) -> None:
    """The properties of the module docstring; ``kw``: explain options (``layout``: at
    C == h == w the geometry cannot tell NCHW from NHWC, and camlens asks, as designed)."""
    before = _state(model)
    ex = camlens.explain(model, x, method, layer=layer, target=target, **kw)
    assert _same_state(before, _state(model))
    spatial = tuple(x.shape[2:])
    assert tuple(ex.maps.shape) == (x.shape[0], *spatial)
    assert float(ex.maps.min()) >= 0.0 and float(ex.maps.max()) <= 1.0
    assert all(bool(torch.isfinite(r).all()) for r in ex.raw.values())
    # batch composition: each image alone gives its row of the batched answer
    targets = ex.targets
    for b in range(x.shape[0]):
        alone = camlens.explain(
            model, x[b : b + 1], method, layer=layer, target=targets[b : b + 1], **kw
        )
        diff = float((alone.maps[0] - ex.maps[b]).abs().max())
        assert diff <= ATOL, (method, b, diff)


def _target(draw: st.DrawFn, batch: int, classes: int) -> object:
    kind = draw(st.sampled_from(["top", "int", "each"]))
    if kind == "top":
        return None
    if kind == "int":
        return draw(st.integers(0, classes - 1))
    return draw(st.lists(st.integers(0, classes - 1), min_size=batch, max_size=batch))


@st.composite
def images_2d(draw: st.DrawFn) -> tuple[int, int, int, int]:
    batch = draw(st.integers(1, 8))
    in_ch = draw(st.integers(1, 4))
    h, w = draw(st.integers(7, 33)), draw(st.integers(7, 33))  # odd and non-square included
    return batch, in_ch, h, w


@given(
    shape=images_2d(), channels=st.integers(2, 9), method=st.sampled_from(METHODS), data=st.data()
)
@SETTINGS
def test_nchw(shape, channels, method, data) -> None:
    batch, in_ch, h, w = shape
    torch.manual_seed(h * 100 + w)
    model = ConvNet(in_ch, channels, 5).eval()
    x = torch.randn(batch, in_ch, h, w)
    _check(model, x, method, "features", _target(data.draw, batch, 5), layout="nchw")


@given(shape=images_2d(), channels=st.integers(2, 9), data=st.data())
@SETTINGS
def test_nhwc(shape, channels, data) -> None:
    batch, in_ch, h, w = shape
    torch.manual_seed(h * 100 + w + 1)
    model = ChannelsLast(in_ch, channels, 4).train()  # a training flag must survive too
    x = torch.randn(batch, in_ch, h, w)
    method = data.draw(st.sampled_from(METHODS[:4]))
    _check(model, x, method, "norm", _target(data.draw, batch, 4), layout="nhwc")


@given(
    batch=st.integers(1, 8),
    depth=st.integers(2, 5),
    side=st.tuples(st.integers(5, 13), st.integers(5, 13)),
    data=st.data(),
)
@settings(max_examples=5, deadline=None, derandomize=True)
def test_volumes(batch, depth, side, data) -> None:
    torch.manual_seed(depth)
    model = Volume(2, 4, 3).eval()
    x = torch.randn(batch, 2, depth, *side)
    _check(
        model, x, data.draw(st.sampled_from(METHODS[:3])), "features", _target(data.draw, batch, 3)
    )


@given(
    batch=st.integers(1, 8),
    grid=st.tuples(st.integers(2, 5), st.integers(2, 5)),
    prefix=st.tuples(st.booleans(), st.integers(0, 4)),
    in_ch=st.integers(1, 4),
    data=st.data(),
)
@settings(max_examples=4, deadline=None, derandomize=True)
def test_tokens_with_0_to_5_prefix_tokens(batch, grid, prefix, in_ch, data) -> None:
    timm = pytest.importorskip("timm")
    cls, registers = prefix
    torch.manual_seed(registers)
    patch = 4
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=(grid[0] * patch, grid[1] * patch),
        patch_size=patch,
        in_chans=in_ch,
        embed_dim=16,
        depth=1,
        num_heads=2,
        num_classes=4,
        class_token=cls,
        reg_tokens=registers,
        global_pool="token" if cls else "avg",
    ).eval()
    x = torch.randn(batch, in_ch, grid[0] * patch, grid[1] * patch)
    method = data.draw(st.sampled_from(["gradcam", "layercam", "gae", "rollout"]))
    layer = "blocks.0.norm1" if method in ("gradcam", "layercam") else None
    _check(model, x, method, layer, _target(data.draw, batch, 4))


def test_the_property_check_sees_a_batch_dependent_model() -> None:
    """A model that mixes the images of a batch (batch-statistics normalisation) must fail the
    batch-composition check: the property is not vacuous."""

    class Mixing(ConvNet):
        def forward(self, x: Tensor) -> Tensor:
            f = self.features(x)
            f = f * f.mean(dim=0, keepdim=True)  # depends on the other images
            return self.fc(f.mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = Mixing(3, 4, 3).eval()
    with pytest.raises(AssertionError):
        _check(model, torch.randn(3, 3, 11, 9), "gradcam", "features", None, layout="nchw")
    copy.deepcopy(model)  # the model is still usable

"""Shared tiny models and helpers for the tests."""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor, nn


class GapNet(nn.Module):
    """conv -> ReLU -> conv -> ReLU (``features``) -> global average pooling -> one linear layer.

    ``last_relu=False`` drops the last ReLU, so that ``features`` has negative activations too
    (formulas that differ only where A < 0, such as ReLU(g) A versus ReLU(g A), then differ).
    """

    def __init__(self, channels: int = 6, classes: int = 5, in_ch: int = 3, last_relu: bool = True):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, channels, 3, stride=2, padding=1),
            *([nn.ReLU()] if last_relu else []),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class HandNet(nn.Module):
    """The input *is* the activation: features = Identity, then GAP and a fixed linear layer.

    Lets a test write A^k and w^c on paper and compute every method by hand.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None):
        super().__init__()
        self.features = nn.Identity()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.copy_(bias if bias is not None else torch.zeros(weight.shape[0]))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def tiny_tv(layers: int = 2) -> nn.Module:
    """torchvision's VisionTransformer at 32 px (8 px patches: a 4 x 4 grid and a class token,
    hidden size 16, 2 heads), seeded; torchvision zero-initialises the head, so it is drawn
    N(0, 1) here (a zero head would give zero gradients)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=layers, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=5,
    )  # fmt: skip
    nn.init.normal_(model.heads.head.weight)
    return model


def capture(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    """The true output of ``layer`` for input ``x``, taken independently of camlens."""
    store: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, o: store.append(o.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return store[0]


def hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


@pytest.fixture
def gapnet() -> GapNet:
    torch.manual_seed(0)
    return GapNet().eval()


@pytest.fixture
def images() -> Tensor:
    torch.manual_seed(1)
    return torch.randn(4, 3, 16, 16)


def whole(message: str) -> str:
    """A ``match=`` pattern for exactly this message, character for character."""
    return "^" + re.escape(message) + "$"


def raises_whole(error: type[Exception], message: str):
    """``pytest.raises`` that wants the whole message, character for character."""
    return pytest.raises(error, match=whole(message))

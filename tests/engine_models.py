"""Tiny models for the engine's tests, each split by hand at its explained layer.

``features`` is the explained layer; ``head(a)`` is the rest of the network, so a test can
capture A = features(x) itself, differentiate ``head`` and compare the engine's raw maps with
the method's pure function on those activations and gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Net(nn.Module):
    """conv -> ReLU -> conv (signed ``features``, 7 channels at half resolution) -> GAP -> linear.

    Counts its forward passes in ``calls``.
    """

    def __init__(self, classes: int = 5, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 7, 3, stride=2, padding=1)
        )
        self.fc = nn.Linear(7, classes)
        with torch.no_grad():
            self.fc.bias.copy_(torch.linspace(-0.5, 0.5, classes))
        self.calls = 0

    def head(self, a: Tensor) -> Tensor:
        return self.fc(a.mean(dim=(2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.head(self.features(x))


class CubeNet(Net):
    """The head reads the cube of the activation: S = w_c . mean(A^3) + b_c, so that the
    Hessian is diagonal and non-zero (d2 = 6 w A / Z, d3 = 6 w / Z, H A = d2 A)."""

    def head(self, a: Tensor) -> Tensor:
        return self.fc((a**3).mean(dim=(2, 3)))


def images(batch: int = 3, size: int = 8, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=gen)


def acts_and_grads(model: Net, x: Tensor, score) -> tuple[Tensor, Tensor, Tensor]:
    """(A, dS/dA, logits) computed without camlens; ``score(logits) -> (B,)``."""
    with torch.no_grad():
        acts = model.features(x)
    acts = acts.clone().requires_grad_(True)
    logits = model.head(acts)
    (grads,) = torch.autograd.grad(score(logits).sum(), acts)
    return acts.detach(), grads, logits.detach()


def class_score(ids: Tensor):
    return lambda logits: logits.gather(1, ids[:, None])[:, 0]

"""camlens.runners under the caller's torch.autocast: Ablation-CAM and Recipro-CAM re-run the
network after the layer in the caller's autocast state (so their re-run scores are those of the
caller's own forward, bfloat16 products here) and compute their formulas in float32.

The reference re-runs the whole hand model under the same autocast, one modified input at a
time, and evaluates the paper's formula in float64 on those scores: the maps must agree to
float32 precision. The same maps without autocast are asserted to differ by percents, so a
re-run outside the caller's autocast (or a formula inside it) cannot pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

import camlens
from tests.conftest import HandNet

K = 8
IDS = torch.tensor([0, 2])


def _model_and_acts() -> tuple[HandNet, Tensor]:
    gen = torch.Generator().manual_seed(0)
    model = HandNet(torch.randn(3, K, generator=gen), torch.randn(3, generator=gen)).eval()
    return model, torch.rand(2, K, 3, 3, generator=gen) + 0.1


def _autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _score(model: HandNet, x: Tensor, softmax: bool = False) -> Tensor:
    """The explained class's logit (or probability) of each image, under bfloat16 autocast."""
    with torch.no_grad(), _autocast():
        logits = model(x).float()
    if softmax:
        logits = logits.softmax(dim=1)
    return logits.gather(1, IDS[:, None])[:, 0].double()


def _ablation_by_hand(model: HandNet, a: Tensor) -> Tensor:
    """raw = sum_k ((y - y_k) / y) A^k, y and y_k scored under the caller's autocast."""
    y = _score(model, a)
    yk = torch.stack([_score(model, a * (torch.arange(K) != k).view(1, K, 1, 1)) for k in range(K)])
    weights = (y[None] - yk).T / y[:, None]
    return torch.einsum("bk,bkhw->bhw", weights, a.double())


def _recipro_by_hand(model: HandNet, a: Tensor) -> Tensor:
    """raw(i, j) = softmax(f_after(A * 1_ij))_c, f_after run under the caller's autocast."""
    raw = torch.empty(2, 3, 3, dtype=torch.float64)
    for i in range(3):
        for j in range(3):
            keep = torch.zeros(1, 1, 3, 3)
            keep[..., i, j] = 1
            raw[:, i, j] = _score(model, a * keep, softmax=True)
    return raw


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def test_layer_probe_re_runs_keep_the_caller_s_autocast_and_formulas_stay_float32() -> None:
    model, a = _model_and_acts()
    for method, by_hand in [("ablationcam", _ablation_by_hand), ("reciprocam", _recipro_by_hand)]:
        expected = by_hand(model, a)
        with _autocast():
            ex = camlens.explain(model, a, method, "features", IDS)
        raw = ex.raw["features"]
        assert raw.dtype == torch.float32 and ex.maps.dtype == torch.float32, method
        # bfloat16 re-runs, float32 formula: the hand value to float32 precision (a bfloat16
        # einsum, or float32 re-runs against the bfloat16 base score, would be off by > 1e-3)
        assert _rel(raw, expected) < 1e-5, (method, _rel(raw, expected))
        assert torch.equal(ex.targets, IDS)
        # and the caller's autocast does change the answer: without it the maps differ
        plain = camlens.explain(model, a, method, "features", IDS).raw["features"]
        assert _rel(plain, expected) > 1e-3, (method, _rel(plain, expected))

"""camlens.gradients against torch.autograd and closed forms, in float64: dS/dA for one and for
several targets, H A (ShapleyCAM), and Grad-CAM++'s exact diagonal derivatives in chunks."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from camlens.errors import TargetError
from camlens.gradients import diagonal_derivatives, gradients, score_gradients
from tests.conftest import raises_whole


def leaves(*shape: int, seed: int = 0, count: int = 2) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_(True)
        for _ in range(count)
    ]


def head(a: Tensor, b: Tensor) -> Tensor:
    """A smooth, coupled head: (B, 3) scores of two (B, K, h, w) activations."""
    pa, pb = a.mean(dim=(2, 3)), b.mean(dim=(2, 3))
    return torch.stack([(pa * pb).sum(1), torch.tanh(pa).sum(1) + pb[:, 0] ** 3, pa[:, 1]], 1)


def test_score_gradients_of_one_score_per_image_are_autograds() -> None:
    a, b = leaves(2, 2, 3, 3)
    scores = head(a, b)[:, 1]
    ga, gb = score_gradients(scores, [a, b], ["a", "b"])
    ea, eb = torch.autograd.grad(head(a, b)[:, 1].sum(), [a, b])
    assert torch.allclose(ga, ea, rtol=0, atol=1e-14) and torch.allclose(gb, eb, rtol=0, atol=1e-14)
    assert not ga.requires_grad  # no graph without create_graph
    (g2,) = score_gradients(head(a, b)[:, 1], [b], ["b"], create_graph=True)
    assert g2.requires_grad and torch.allclose(g2, eb, rtol=0, atol=1e-14)


def test_score_gradients_of_several_targets_are_one_per_column() -> None:
    a, b = leaves(2, 2, 3, 3, seed=1)
    ga, gb = score_gradients(head(a, b), [a, b], ["a", "b"])
    assert ga.shape == (3, 2, 2, 3, 3) and gb.shape == (3, 2, 2, 3, 3)
    for t in range(3):
        ea, eb = torch.autograd.grad(head(a, b)[:, t].sum(), [a, b], allow_unused=True)
        eb = torch.zeros_like(b) if eb is None else eb
        assert torch.allclose(ga[t], ea, rtol=0, atol=1e-14)
        assert torch.allclose(gb[t], eb, rtol=0, atol=1e-14)


def test_a_score_that_does_not_depend_on_the_layers_is_refused() -> None:
    a, b = leaves(1, 2, 2, 2)
    message = (
        "the target score does not depend on the explained layer(s) ['a', 'b']; pick a layer "
        "before the output that the score is computed from"
    )
    with raises_whole(TargetError, message):
        score_gradients(torch.ones(1), [a, b], ["a", "b"])
    message = (
        "the target score does not depend on layer(s) ['b']; pick layers on the path from the "
        "input to the explained output"
    )
    with raises_whole(TargetError, message):
        score_gradients(a.sum(dim=(1, 2, 3)), [a, b], ["a", "b"])
    with raises_whole(TargetError, message):
        score_gradients(torch.stack([a.sum(), 2 * a.sum()])[None], [a, b], ["a", "b"])


def test_gradients_without_the_hessian() -> None:
    a, b = leaves(2, 2, 3, 3, seed=2)
    grads, hvps = gradients(head(a, b)[:, 0], [a, b], ["a", "b"])
    expected = torch.autograd.grad(head(a, b)[:, 0].sum(), [a, b])
    assert hvps == [] and all(not g.requires_grad for g in grads)
    assert all(
        torch.allclose(g, e, rtol=0, atol=1e-14) for g, e in zip(grads, expected, strict=True)
    )


def test_gradients_with_the_hessian_times_the_activations() -> None:
    a, b = leaves(2, 2, 3, 3, seed=3)
    grads, hvps = gradients(head(a, b)[:, 1], [a, b], ["a", "b"], hessian=True)
    # H A by double backward, and in closed form
    ea, eb = torch.autograd.grad(head(a, b)[:, 1].sum(), [a, b], create_graph=True)
    dot = (ea * a.detach()).sum() + (eb * b.detach()).sum()
    ha, hb = torch.autograd.grad(dot, [a, b])
    assert all(not t.requires_grad for t in [*grads, *hvps])
    assert torch.allclose(grads[0], ea, rtol=0, atol=1e-14)
    assert torch.allclose(hvps[0], ha, rtol=0, atol=1e-14)
    assert torch.allclose(hvps[1], hb, rtol=0, atol=1e-14)
    # closed form for b: S = tanh(pa).sum + pb_0^3, so (H A)_b = 6 pb_0 * pb_0 / 9 on channel 0
    pb0 = b.detach().mean(dim=(2, 3))[:, 0]
    closed = torch.zeros_like(b)
    closed[:, 0] = (6 * pb0 * pb0 / 9).view(2, 1, 1)
    assert torch.allclose(hvps[1], closed, rtol=0, atol=1e-14) and bool(hb.abs().sum() > 0)


def test_the_hessian_of_a_layer_whose_gradient_is_constant_is_zero() -> None:
    a, b = leaves(2, 2, 3, 3, seed=4)
    c = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    score = (a**2).sum(dim=(1, 2, 3)) + (b * c).sum(dim=(1, 2, 3))
    grads, hvps = gradients(score, [a, b], ["a", "b"], hessian=True)
    assert torch.allclose(hvps[0], 2 * a.detach(), rtol=0, atol=1e-14)
    assert torch.equal(hvps[1], torch.zeros_like(b)) and torch.equal(grads[1], c)


def test_the_hessian_of_a_piecewise_linear_head_is_zero() -> None:
    a, b = leaves(2, 2, 3, 3, seed=5)
    w = torch.randn(2, dtype=torch.float64)
    score = (torch.relu(a).mean(dim=(2, 3)) @ w) - b.sum(dim=(1, 2, 3))
    grads, hvps = gradients(score, [a, b], ["a", "b"], hessian=True)
    assert [h.shape for h in hvps] == [a.shape, b.shape]
    assert all(torch.equal(h, torch.zeros_like(h)) for h in hvps)
    assert torch.equal(grads[1], -torch.ones_like(b))


def cubic(a: Tensor, c: Tensor, u: Tensor) -> Tensor:
    """S_b = sum_i c_i A_bi^3 + (sum_i u_i A_bi)^3: every Hessian entry is non-zero."""
    flat = a.flatten(1)
    return (c * flat**3).sum(1) + ((u * flat).sum(1)) ** 3


@pytest.mark.parametrize("chunk", [1, 5, 18, 256])
def test_diagonal_derivatives_of_a_cubic_are_the_closed_form(chunk) -> None:
    (a,) = leaves(2, 2, 3, 3, seed=6, count=1)
    gen = torch.Generator().manual_seed(1)
    c, u = (torch.randn(18, generator=gen, dtype=torch.float64) for _ in range(2))
    grads, d2, d3 = diagonal_derivatives(cubic(a, c, u), [a], ["a"], chunk=chunk)
    x = a.detach().flatten(1)
    s = (u * x).sum(1, keepdim=True)
    assert torch.allclose(grads[0].flatten(1), 3 * c * x**2 + 3 * u * s**2, rtol=0, atol=1e-12)
    assert torch.allclose(d2[0].flatten(1), (6 * c * x + 6 * u**2 * s).float(), atol=1e-5)
    assert torch.allclose(d3[0].flatten(1), (6 * c + 6 * u**3).float().expand(2, 18), atol=1e-5)
    assert grads[0].dtype == torch.float64 and d2[0].dtype == d3[0].dtype == torch.float32
    assert not grads[0].requires_grad and not d2[0].requires_grad


def test_diagonal_derivatives_take_256_positions_at_a_time_by_default(monkeypatch) -> None:
    import camlens.gradients

    chunks: list[int] = []
    real = camlens.gradients._diagonal_chunks

    def spy(act, g, d2, d3, chunk):
        chunks.append(chunk)
        return real(act, g, d2, d3, chunk)

    monkeypatch.setattr(camlens.gradients, "_diagonal_chunks", spy)
    (a,) = leaves(2, 2, 3, 3, seed=6, count=1)
    gen = torch.Generator().manual_seed(1)
    c, u = (torch.randn(18, generator=gen, dtype=torch.float64) for _ in range(2))
    diagonal_derivatives(cubic(a, c, u), [a], ["a"])
    assert chunks == [256]


@pytest.mark.parametrize("chunk", [1, 7, 256])
def test_diagonal_derivatives_of_grad_campp_exponential_head(chunk) -> None:
    """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19): Y = exp(S), S = sum_k w_k sum_ij A^k_ij / Z
    gives dY/dA = Y w/Z, d2Y/dA^2 = Y (w/Z)^2, d3Y/dA^3 = Y (w/Z)^3, element by element."""
    a, b = leaves(2, 3, 2, 2, seed=7)
    w = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    wb = torch.tensor([1.5, 0.25, -0.5], dtype=torch.float64)

    def y(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(a.mean(dim=(2, 3)) @ w + b.mean(dim=(2, 3)) @ wb)

    grads, d2, d3 = diagonal_derivatives(y(a, b), [a, b], ["a", "b"], chunk=chunk)
    yv = y(a, b).detach().view(2, 1, 1, 1)
    for i, weight in enumerate([w, wb]):
        r = (weight / 4).view(1, 3, 1, 1)
        assert torch.allclose(grads[i], (yv * r).expand(2, 3, 2, 2), rtol=1e-12, atol=0)
        assert torch.allclose(d2[i], (yv * r**2).float().expand(2, 3, 2, 2), rtol=1e-6, atol=0)
        assert torch.allclose(d3[i], (yv * r**3).float().expand(2, 3, 2, 2), rtol=1e-6, atol=0)


def test_a_linear_head_has_no_higher_derivatives() -> None:
    a, b = leaves(2, 2, 2, 2, seed=8)
    score = a.sum(dim=(1, 2, 3)) - 2 * b.mean(dim=(1, 2, 3))
    grads, d2, d3 = diagonal_derivatives(score, [a, b], ["a", "b"])
    assert torch.equal(grads[0], torch.ones_like(a)) and torch.equal(
        grads[1], -torch.ones_like(b) / 4
    )
    assert all(torch.equal(t, torch.zeros(2, 2, 2, 2)) for t in [*d2, *d3])


def test_a_quadratic_head_has_no_third_derivative() -> None:
    (a,) = leaves(2, 2, 2, 2, seed=9, count=1)
    score = (a**2).sum(dim=(1, 2, 3)) * 1.5
    grads, d2, d3 = diagonal_derivatives(score, [a], ["a"], chunk=3)
    assert torch.allclose(grads[0], 3 * a.detach(), rtol=0, atol=1e-14)
    assert torch.equal(d2[0], torch.full((2, 2, 2, 2), 3.0)) and torch.equal(
        d3[0], torch.zeros(2, 2, 2, 2)
    )


def test_diagonals_of_a_layer_whose_gradient_does_not_depend_on_it() -> None:
    """S = sum A^2 B: dS/dB = A^2 does not depend on B (d2 = d3 = 0 for B); d2 for A is 2 B,
    which does not depend on A (d3 = 0 for A)."""
    a, b = leaves(2, 2, 2, 2, seed=10)
    grads, d2, d3 = diagonal_derivatives((a**2 * b).sum(dim=(1, 2, 3)), [a, b], ["a", "b"], 3)
    av, bv = a.detach(), b.detach()
    assert torch.allclose(grads[0], 2 * av * bv, rtol=0, atol=1e-14)
    assert torch.allclose(grads[1], av**2, rtol=0, atol=1e-14)
    assert torch.allclose(d2[0], (2 * bv).float(), rtol=0, atol=1e-6)
    assert torch.equal(d2[1], torch.zeros(2, 2, 2, 2))
    assert torch.equal(d3[0], torch.zeros(2, 2, 2, 2)) and torch.equal(
        d3[1], torch.zeros(2, 2, 2, 2)
    )


def test_diagonal_derivatives_refuse_a_constant_score() -> None:
    (a,) = leaves(1, 2, 2, 2, count=1)
    with pytest.raises(TargetError, match="does not depend on the explained layer"):
        diagonal_derivatives(torch.ones(1), [a], ["a"])


def test_the_hessian_of_a_head_linear_in_every_layer_is_zero_without_a_second_pass() -> None:
    a, b = leaves(1, 2, 2, 2, seed=11)
    grads, hvps = gradients(
        a.sum(dim=(1, 2, 3)) - 3 * b.mean(dim=(1, 2, 3)), [a, b], ["a", "b"], True
    )
    assert isinstance(hvps, list) and [h.shape for h in hvps] == [a.shape, b.shape]
    assert all(torch.equal(h, torch.zeros_like(h)) for h in hvps)
    assert torch.equal(grads[1], torch.full_like(b, -3 / 8))


def test_diagonal_derivatives_of_one_image() -> None:
    (a,) = leaves(1, 2, 2, 2, seed=12, count=1)
    grads, d2, d3 = diagonal_derivatives((a**3).sum(dim=(1, 2, 3)), [a], ["a"], chunk=3)
    assert torch.allclose(grads[0], 3 * a.detach() ** 2, rtol=0, atol=1e-14)
    assert torch.allclose(d2[0], (6 * a.detach()).float(), atol=1e-6)
    assert torch.allclose(d3[0], torch.full((1, 2, 2, 2), 6.0), atol=1e-6)

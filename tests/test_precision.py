"""Models in float16 / bfloat16 and under torch.autocast: the maps are computed in float32.

Two kinds of check. (1) The formulas accumulate in float32: on a hand model whose input *is*
the activation, the raw map of a bfloat16 model equals a float64 evaluation of the paper's
formula on the same bfloat16 activations and gradients, to float32 precision, where a
bfloat16 sum would be off by percents (asserted too, so the test can fail). (2) End to end,
the maps of a half-precision model equal the float32 model's within a stated tolerance: the
difference that is left comes from the model's own half-precision forward, not from camlens.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor

import camlens
from camlens.cams.attention import gae_relevance, rollout_relevance
from tests.conftest import HandNet, hook_count

#: max |map(half model) - map(float32 model)| over maps in [0, 1], stated in the guide
TOLERANCE = {torch.float16: 0.01, torch.bfloat16: 0.06, "autocast": 0.06}


def _hand(dtype: torch.dtype, k: int = 512, classes: int = 3) -> tuple[HandNet, Tensor]:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(classes, k, generator=gen)
    model = HandNet(weight).eval().to(dtype)
    acts = torch.randn(2, k, 6, 5, generator=gen).to(dtype)
    return model, acts


def _grads(model: HandNet, acts: Tensor, target: int) -> Tensor:
    a = acts.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(a)[:, target].sum(), a)
    return g


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gradient_formulas_accumulate_in_float32(dtype) -> None:
    model, acts = _hand(dtype)
    g = _grads(model, acts, 1).double()
    a = acts.double()
    refs = {
        "gradcam": (g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1),
        "layercam": (g.clamp(min=0) * a).sum(dim=1),
        "hirescam": (g * a).sum(dim=1),
        "cam": (model.fc.weight.double()[1][None, :, None, None] * a).sum(dim=1),
    }
    for method, ref in refs.items():
        ex = camlens.explain(model, acts, method, layer="features", target=1)
        raw = ex.raw["features"]
        assert raw.dtype == torch.float32 and ex.maps.dtype == torch.float32, method
        assert _rel(raw, ref) < 1e-5, (method, _rel(raw, ref))
    # the same sum in the model's dtype is far off: the check above can fail
    low = (g.to(dtype).mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1)
    assert _rel(low, refs["gradcam"]) > 1e-4


def test_attention_relevance_accumulates_in_float32() -> None:
    gen = torch.Generator().manual_seed(0)
    attn = [torch.rand(2, 4, 50, 50, generator=gen).softmax(-1).bfloat16() for _ in range(6)]
    grads = [torch.randn(2, 4, 50, 50, generator=gen).bfloat16() for _ in range(6)]
    r = gae_relevance(attn, grads)
    ref = torch.eye(50, dtype=torch.float64).expand(2, 50, 50)
    for a, g in zip(attn, grads, strict=True):
        ref = ref + (g.double() * a.double()).clamp(min=0).mean(dim=1) @ ref
    assert r.dtype == torch.float32 and _rel(r, ref) < 1e-5
    roll = rollout_relevance(attn)
    ref = None
    for a in attn:
        ahat = 0.5 * torch.eye(50, dtype=torch.float64) + 0.5 * a.double().mean(dim=1)
        ahat = ahat / ahat.sum(dim=-1, keepdim=True)
        ref = ahat if ref is None else ahat @ ref
    assert roll.dtype == torch.float32 and _rel(roll, ref) < 1e-5
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast does not lower the products
        assert _rel(gae_relevance(attn, grads), r) < 1e-6


def _agree(model32, x, methods, tol_scale=1.0) -> None:
    for method in methods:
        ref = camlens.explain(model32, x, method)
        for dtype in (torch.float16, torch.bfloat16):
            model = copy.deepcopy(model32).to(dtype)
            hooks = hook_count(model)
            ex = camlens.explain(model, x.to(dtype), method, target=ref.targets)
            assert ex.maps.dtype == torch.float32, (method, dtype)
            assert all(r.dtype == torch.float32 for r in ex.raw.values()), (method, dtype)
            diff = float((ex.maps - ref.maps).abs().max())
            assert diff <= TOLERANCE[dtype] * tol_scale, (method, dtype, diff)
            assert next(model.parameters()).dtype == dtype and hook_count(model) == hooks
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ex = camlens.explain(model32, x, method, target=ref.targets)
        assert ex.maps.dtype == torch.float32, (method, "autocast")
        diff = float((ex.maps - ref.maps).abs().max())
        assert diff <= TOLERANCE["autocast"] * tol_scale, (method, "autocast", diff)


def test_half_precision_cnn_maps_equal_the_float32_model_s() -> None:
    from camlens.models import build_model

    torch.manual_seed(0)
    model = build_model("demo").model.eval()
    x = torch.rand(2, 3, 96, 96)
    _agree(model, x, ["gradcam", "gradcampp", "layercam", "cam"])
    # FullGrad sums input and bias gradients, which move more with the model's rounding
    _agree(model, x, ["fullgrad"], tol_scale=2.0)
    # the methods that re-run the model (slow in half precision on a CPU): smaller images
    _agree(model, x[:1, :, :48, :48], ["scorecam", "ablationcam"])


def test_half_precision_vit_maps_equal_the_float32_model_s() -> None:
    from camlens.models import build_model

    torch.manual_seed(0)
    model = build_model("demo-vit").model.eval()
    x = torch.rand(2, 3, 96, 96)
    _agree(model, x, ["gradcam", "gae", "rollout"])

"""Ablation-CAM and Recipro-CAM on token layers (ViT-ReciproCAM) and channels-last layers.

The references modify the layer's output through a forward hook and re-run the whole model, so
they share nothing with camlens' fx split, its layouts or its batching.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import camlens
from camlens.demo import load_model, shapes
from tests.conftest import capture, hook_count, tiny_tv


def _hooked(model: nn.Module, module: nn.Module, x: torch.Tensor, change) -> torch.Tensor:
    """The model's logits with ``module``'s output replaced by ``change(output)``."""
    handle = module.register_forward_hook(lambda _m, _i, out: change(out.clone()))
    try:
        with torch.no_grad():
            return model(x)
    finally:
        handle.remove()


def _reference_tokens(model, module, x, target, prefix, grid, method):
    """ViT-ReciproCAM / Ablation-CAM by hand on a token layer's (B, N, C) output."""
    acts = capture(model, module, x)  # (B, N, C)
    b_idx = torch.arange(x.shape[0])
    n_patch = grid[0] * grid[1]
    if method == "reciprocam":
        out = torch.empty(x.shape[0], n_patch)
        for p in range(n_patch):

            def keep_one(t, p=p):
                kept = torch.zeros_like(t)
                kept[:, :prefix] = t[:, :prefix]  # the class token stays
                kept[:, prefix + p] = t[:, prefix + p]
                return kept

            probs = _hooked(model, module, x, keep_one).softmax(dim=1)
            out[:, p] = probs[b_idx, target]
        return out.view(-1, *grid)
    y = model(x).detach()[b_idx, target]
    patches = acts[:, prefix:]  # (B, P, C)
    weights = torch.empty(x.shape[0], acts.shape[-1])
    for k in range(acts.shape[-1]):

        def zero_k(t, k=k):
            t[:, prefix:, k] = 0  # channel k of the patch tokens; the prefix stays
            return t

        weights[:, k] = (y - _hooked(model, module, x, zero_k)[b_idx, target]) / y
    return torch.einsum("bk,bpk->bp", weights, patches).view(-1, *grid)


@pytest.fixture(scope="module")
def tiny_vit():
    return tiny_tv().eval(), torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("method", ["reciprocam", "ablationcam"])
def test_torchvision_vit_token_layer(tiny_vit, method: str) -> None:
    model, x = tiny_vit
    name = "encoder.layers.encoder_layer_1.ln_1"
    module = model.get_submodule(name)
    target = torch.tensor([1, 4])
    ex = camlens.explain(model, x, method, layer=name, target=target, batch_size=5)
    ref = _reference_tokens(model, module, x, target, 1, (4, 4), method)
    assert ex.raw[name].shape == (2, 4, 4) and ex.maps.shape == (2, 32, 32)
    assert torch.allclose(ex.raw[name], ref, atol=1e-5, rtol=1e-4)
    assert hook_count(model) == 0


def test_vit_reciprocam_automatic_layer_and_several_targets(tiny_vit) -> None:
    model, x = tiny_vit
    ex = camlens.explain(model, x, "reciprocam", target=camlens.targets.top(2))
    assert ex.layers == ["encoder.layers.encoder_layer_1.ln_1"]
    raw = ex.raw[ex.layers[0]]
    assert raw.shape == (2, 2, 4, 4)
    one = camlens.explain(model, x, "reciprocam", target=ex.targets[:, 1])
    assert torch.allclose(raw[:, 1], one.raw[ex.layers[0]], atol=1e-6)


@pytest.mark.parametrize("method", ["reciprocam", "ablationcam"])
def test_demo_vit(method: str) -> None:
    model = load_model("vit")
    x = shapes(2, seed=3)[0]
    name = "blocks.1.norm1"
    target = model(x).argmax(dim=1).detach()
    ex = camlens.explain(model, x, method, layer=name, target=target, batch_size=64)
    ref = _reference_tokens(model, model.get_submodule(name), x, target, 1, (12, 12), method)
    assert ex.raw[name].shape == (2, 12, 12)
    assert torch.allclose(ex.raw[name], ref, atol=1e-4, rtol=1e-3)


class ChannelsLastNet(nn.Module):
    """conv -> NHWC LayerNorm (``norm``, the explained layer) -> pointwise Linear -> GAP -> fc,
    as ConvNeXt and Swin blocks read their channels-last maps."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(6)
        self.pw = nn.Linear(6, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        z = self.norm(self.conv(x).permute(0, 2, 3, 1))  # (B, h, w, C)
        z = torch.relu(self.pw(z))
        return self.fc(z.mean(dim=(1, 2)))


@pytest.mark.parametrize("method", ["reciprocam", "ablationcam"])
def test_channels_last_layer(method: str) -> None:
    torch.manual_seed(2)
    model = ChannelsLastNet().eval()
    x = torch.randn(2, 3, 8, 8)
    target = torch.tensor([0, 2])
    ex = camlens.explain(model, x, method, layer="norm", target=target, batch_size=7)
    acts = capture(model, model.norm, x)  # (B, 4, 4, C)
    b_idx = torch.arange(2)
    if method == "reciprocam":
        ref = torch.empty(2, 4, 4)
        for i in range(4):
            for j in range(4):

                def keep(t, i=i, j=j):
                    kept = torch.zeros_like(t)
                    kept[:, i, j] = t[:, i, j]
                    return kept

                ref[:, i, j] = _hooked(model, model.norm, x, keep).softmax(1)[b_idx, target]
    else:
        y = model(x).detach()[b_idx, target]
        w = torch.empty(2, 6)
        for k in range(6):

            def zero(t, k=k):
                t[..., k] = 0
                return t

            w[:, k] = (y - _hooked(model, model.norm, x, zero)[b_idx, target]) / y
        ref = torch.einsum("bk,bijk->bij", w, acts)
    assert torch.allclose(ex.raw["norm"], ref, atol=1e-5, rtol=1e-4)


def test_timm_vit_with_register_tokens_keeps_all_prefix_tokens() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(1)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=2,
        num_classes=5,
        reg_tokens=2,
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    target = torch.tensor([0, 3])
    ex = camlens.explain(model, x, "reciprocam", layer="blocks.1.norm1", target=target)
    ref = _reference_tokens(model, model.blocks[1].norm1, x, target, 3, (4, 4), "reciprocam")
    assert torch.allclose(ex.raw["blocks.1.norm1"], ref, atol=1e-5, rtol=1e-4)

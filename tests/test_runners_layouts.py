"""camlens.runners on a layer whose layout the shape alone cannot tell: a (B, 4, 4, 4)
activation of a (B, 4, 4, 4) input reads as (C, h, w) and as (h, w, C). The layer probe
(Ablation-CAM) decides it as the captured-forward path does: the module's hint (a Linear over
the last dimension, or a ReLU after one in a Sequential, says channels-last) or the user's
``layout=``; with neither it refuses, naming the layer. The channels-last answer is computed by
hand (channel k zeroed on the last axis, the rest of the network re-run) and differs from the
channels-first reading, so a probe that lost the hint or the user's word cannot pass."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import camlens
from camlens.errors import LayerError
from camlens.runners import token_layout


class NHWC(nn.Module):
    """(B, 4, 4, 4) images -> channels-last (B, h, w, 4) -> Linear, ReLU over the channels ->
    ``features`` (an Identity, no hint) -> GAP over (h, w) -> Linear head."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.features = nn.Identity()
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.rest_after_relu(self.body(x.permute(0, 2, 3, 1))))

    def rest_after_relu(self, z: Tensor) -> Tensor:
        return self.features(z).mean(dim=(1, 2))

    def rest_after_linear(self, z: Tensor) -> Tensor:
        return self.fc(self.rest_after_relu(z.relu()))


def images() -> Tensor:
    return torch.rand(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))


def layer_out(model: NHWC, x: Tensor, layer: str) -> Tensor:
    z = model.body[0](x.permute(0, 2, 3, 1))
    return z if layer == "body.0" else z.relu()


def ablation_channels_last(rest: Callable[[Tensor], Tensor], a: Tensor, target: int) -> Tensor:
    """Ablation-CAM on a (B, h, w, K) map: w_k = (y - y_k) / y, y_k with a[..., k] = 0,
    raw = sum_k w_k a[..., k]."""
    y = rest(a)[:, target]
    yk = torch.stack(
        [rest(a * (torch.arange(a.shape[-1]) != k))[:, target] for k in range(a.shape[-1])], 1
    )
    return torch.einsum("bk,bhwk->bhw", (y[:, None] - yk) / y[:, None], a)


@pytest.mark.parametrize("layer", ["body.0", "body.1", "features"])
def test_ablationcam_reads_an_ambiguous_layer_channels_last_from_the_hint_or_layout(layer) -> None:
    model, x = NHWC().eval(), images()
    with torch.no_grad():
        a = layer_out(model, x, layer)
        rest = model.rest_after_linear if layer == "body.0" else lambda z: model.fc(z.mean((1, 2)))
        expected = ablation_channels_last(rest, a, 0)
    # body.0 is a Linear over the last dimension; body.1 a ReLU after it in a Sequential;
    # features an Identity, which says nothing: there the user's layout= decides
    layout = "nhwc" if layer == "features" else None
    explainer = camlens.Explainer(model, "ablationcam", layer, layout=layout)
    raw = explainer(x, 0).raw[layer]
    assert torch.allclose(raw, expected, rtol=1e-5, atol=1e-6)
    first = camlens.explain(model, x, "ablationcam", layer, 0, layout="nchw").raw[layer]
    assert not torch.allclose(first, expected, rtol=1e-2, atol=1e-2)  # the other reading


def test_ablationcam_refuses_an_ambiguous_layer_without_a_hint_naming_it() -> None:
    message = (
        "cannot tell how to read layer 'features' with output (2, 4, 4, 4): both (C, *spatial) "
        "and (*spatial, C) fit the (4, 4) input and the module (Identity) does not say which. "
        "Say it with layout='nchw' (B, C, h, w), 'nhwc' (B, h, w, C), 'tokens' (B, N, C) or a "
        "callable activation -> (B, C, h, w) (like pytorch-grad-cam's reshape_transform)"
    )
    with pytest.raises(LayerError, match="^" + re.escape(message) + "$"):
        camlens.explain(NHWC().eval(), images(), "ablationcam", "features", 0)


@pytest.mark.parametrize("layer", ["body.0", "body.1"])
def test_token_layout_reads_an_ambiguous_map_by_its_module_s_hint(layer) -> None:
    ex = camlens.Explainer(NHWC().eval(), "rollout", layer)
    ex._layers = [(layer, ex.model.get_submodule(layer))]
    assert token_layout(ex, images(), images()) is None
    assert ex.layout(layer).kind == "channels_last"

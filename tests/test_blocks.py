"""camlens.blocks: finding a ViT's blocks and readout, and tapping them for one forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from camlens.blocks import BlockTaps, default_pool, find_blocks, find_readout, ran
from camlens.errors import InputError, UnsupportedModelError
from tests.cams.test_attention import state, tiny_timm, tiny_tv


def test_blocks_and_readouts_of_the_families() -> None:
    tv, timm = tiny_tv().eval(), tiny_timm().eval()
    assert [n for n, _ in find_blocks(tv)] == [
        "encoder.layers.encoder_layer_0",
        "encoder.layers.encoder_layer_1",
    ]
    assert [n for n, _ in find_blocks(timm)] == ["blocks.0", "blocks.1"]
    assert default_pool(tv) == "mean" and default_pool(timm) == "model"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), BlockTaps(find_blocks(timm)) as taps:
        out = timm(x)
    last = ran(taps)[-1]
    assert torch.allclose(find_readout(timm, "model")(last), out, atol=1e-6)
    with torch.no_grad(), BlockTaps(find_blocks(tv)) as taps:
        out = tv(x)
    assert torch.allclose(find_readout(tv, "model")(ran(taps)[-1]), out, atol=1e-6)
    with pytest.raises(InputError, match="pool"):
        find_readout(tv, "max")


def test_taps_cut_the_graph_between_blocks() -> None:
    model = tiny_tv().eval()
    x = torch.randn(1, 3, 32, 32)
    with BlockTaps(find_blocks(model)) as taps:
        model(x)
    first, second = ran(taps)
    assert first.requires_grad and second.requires_grad
    (g,) = torch.autograd.grad(second.sum(), first, allow_unused=True)
    assert g is None  # block 1 starts from a fresh leaf: nothing flows back into block 0


def test_taps_remove_their_hooks_also_after_an_exception() -> None:
    model = tiny_tv()
    blocks = find_blocks(model)
    before = state(model)
    with pytest.raises(RuntimeError, match="boom"):
        with BlockTaps(blocks):
            raise RuntimeError("boom")
    assert state(model) == before
    with BlockTaps(blocks) as taps:
        pass
    with pytest.raises(UnsupportedModelError, match="did not run"):
        ran(taps)
    with pytest.raises(UnsupportedModelError, match="blocks"):
        find_blocks(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(UnsupportedModelError, match="readout"):
        find_readout(nn.Sequential(nn.Linear(2, 2)))

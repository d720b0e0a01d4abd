"""Every method of issue 15 through the public API: several targets per image, the model left
as it came, and the registry metadata the CLI and the app read."""

from __future__ import annotations

import pytest
import torch

import camlens
from tests.conftest import GapNet, hook_count

NEW = {
    "fem": {},
    "kpcacam": {},
    "segeigencam": {},
    "randomcam": {},
    "occlusion": {"window": 8, "stride": 8},
    "rise": {"n": 16, "cells": 4},
}


@pytest.mark.parametrize("method", sorted(NEW))
def test_several_targets_match_one_target_at_a_time(method: str) -> None:
    torch.manual_seed(9)
    model = GapNet(channels=6, classes=5).train()
    model.fc.requires_grad_(False)
    x = torch.randn(2, 3, 16, 16)
    ids = torch.tensor([[4, 1], [0, 3]])
    both = camlens.explain(model, x, method, target=ids, **NEW[method])
    key = both.layers[0]
    assert both.raw[key].shape[:2] == (2, 2) and both.maps.shape == (2, 2, 16, 16)
    assert torch.equal(both.targets, ids)
    for t in range(2):
        one = camlens.explain(model, x, method, target=ids[:, t], **NEW[method])
        assert torch.allclose(both.raw[key][:, t], one.raw[key], atol=1e-5)
        assert torch.allclose(both.scores[:, t], one.scores, atol=1e-6)
    assert model.training and not model.fc.weight.requires_grad and hook_count(model) == 0
    assert all(p.grad is None for p in model.parameters())


def test_registry_kinds() -> None:
    kinds = {name: camlens.method_info(name).inputs for name in NEW}
    assert kinds == {
        "fem": "acts",
        "kpcacam": "acts",
        "segeigencam": "grads",
        "randomcam": "acts",
        "occlusion": "black_box",
        "rise": "black_box",
    }

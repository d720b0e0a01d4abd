"""The helpers every faithfulness metric shares: input checks, targets, ranks, baselines."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from camlens.errors import InputError
from camlens.maps import upsample
from camlens.metrics.perturbation import (
    check_baseline,
    check_images_maps,
    pick,
    pixel_ranks,
    resolve_targets,
)


def _raises(msg: str):
    return pytest.raises(InputError, match="^" + re.escape(msg) + "$")


class Spy(nn.Module):
    """Logits (sum, mean) of the pixels; records the batch size of every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.shape[0])
        return torch.stack([x.flatten(1).sum(1), x.flatten(1).mean(1)], dim=1)


def test_image_and_map_errors_in_full() -> None:
    images = torch.rand(2, 1, 4, 4)
    with _raises("images must be a (B, C, H, W) tensor, got (2, 4, 4)"):
        check_images_maps(images[:, 0], torch.rand(2, 4, 4))
    with _raises("images must be a (B, C, H, W) tensor, got list"):
        check_images_maps([images], torch.rand(2, 4, 4))
    tail = "; pass Explanation.maps"
    with _raises("maps must be (B, H, W) with B=2 (one per image), got (2, 4)" + tail):
        check_images_maps(images, torch.rand(2, 4))
    with _raises("maps must be (B, H, W) with B=2 (one per image), got (3, 4, 4)" + tail):
        check_images_maps(images, torch.rand(3, 4, 4))
    with _raises("maps must be (B, H, W) with B=2 (one per image), got ndarray" + tail):
        check_images_maps(images, np.zeros((2, 4, 4)))
    for bad in (float("nan"), float("inf"), -float("inf")):
        with _raises("maps contain NaN or infinite values"):
            check_images_maps(images, torch.full((2, 4, 4), bad))


def test_maps_come_back_at_the_images_size() -> None:
    images, maps = torch.rand(1, 2, 8, 6), torch.rand(1, 4, 3)
    torch.testing.assert_close(check_images_maps(images, maps), upsample(maps, (8, 6)))


def test_resolve_targets_runs_in_batches_over_the_images() -> None:
    model = Spy()
    images = torch.rand(65, 1, 2, 3)
    logits, ids = resolve_targets(model, images, None)
    assert model.seen == [64, 1]  # the default batch
    torch.testing.assert_close(logits, model(images))
    assert ids.tolist() == logits.argmax(1).tolist()
    for batch_size in (1, 0):  # at least one image per batch
        model.seen.clear()
        logits, ids = resolve_targets(model, images[:3], 1, batch_size)
        assert model.seen == [1, 1, 1] and ids.tolist() == [1, 1, 1]
        assert logits.shape == (3, 2)
    msg = "the metrics score class ids; pass an int or one id per image as targets"
    with _raises(msg):
        resolve_targets(model, images, lambda out: out[:, 0])


def test_pick_scores_and_its_error() -> None:
    logits = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    ids = torch.tensor([1, 0])
    assert pick(logits, ids, "logit").tolist() == [2.0, 0.0]
    torch.testing.assert_close(pick(logits, ids, "prob"), logits.softmax(1)[[0, 1], [1, 0]])
    with _raises("score must be 'prob' or 'logit', got 'probability'"):
        pick(logits, ids, "probability")


def test_pixel_ranks_keep_raster_order_among_many_ties() -> None:
    maps = torch.zeros(2, 50, 100)
    maps[1, 49, 99] = 1.0
    ranks = pixel_ranks(maps)
    assert torch.equal(ranks[0], torch.arange(5000))
    assert ranks[1, -1] == 0 and torch.equal(ranks[1, :-1], torch.arange(1, 5000))


def test_baselines_take_the_images_dtype_and_broadcast() -> None:
    for dtype in (torch.float64, torch.float16):
        images = torch.rand(2, 3, 4, 4).to(dtype)
        value = check_baseline(0.1, images)
        assert value.dtype == dtype and value.shape == (1, 1, 1, 1)
        assert value.item() == torch.tensor(0.1, dtype=dtype).item()
    images = torch.rand(2, 3, 4, 4)
    assert check_baseline(torch.zeros(3, 1, 1), images).shape == (1, 3, 1, 1)
    assert check_baseline(torch.zeros(2, 3, 4, 4), images).shape == (2, 3, 4, 4)
    msg = (
        "baseline of shape (5,) does not broadcast to the images (2, 3, 4, 4); pass a float, "
        "a (C, 1, 1) tensor or one like the images"
    )
    with _raises(msg):
        check_baseline(torch.zeros(5), images)

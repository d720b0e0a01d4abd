"""Batches: cut per shard, unreadable files reported beside them."""

from __future__ import annotations

import torch

from camlens.batch.dataset import loader, slices
from camlens.batch.sources import resolve


def test_slices_never_cross_a_shard_and_start_at_the_shard() -> None:
    batches = slices([0, 2], shard_size=10, total=25, batch_size=4)
    assert batches == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9],
        [20, 21, 22, 23],
        [24],
    ]


def test_loader_reports_unreadable_files_and_keeps_order(png_folder) -> None:
    items = resolve(png_folder).items  # broken.png first
    got = list(loader(items, [0, 1], 4, 3, 1, 32, None, "none"))
    assert [b.shard for b in got] == [0, 0, 1]
    assert got[0].indices == [1, 2] and got[0].errors[0][0] == 0
    assert "not a readable image" in got[0].errors[0][1]
    assert [b.indices for b in got[1:]] == [[3], [4, 5, 6]]
    assert got[0].images.shape == (2, 3, 32, 32) and got[0].images.dtype == torch.float32

"""Decoding and preprocessing in DataLoader worker processes, one batch per slice of a shard.

A batch never straddles two shards and starts at the same image in every run, so an
interrupted and resumed job feeds the model exactly the batches of an uninterrupted one (and
gets the same bits back). An unreadable file does not stop the job: it comes back as an error
next to the batch and ends up in ``errors.csv``.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from camlens.batch.sources import load
from camlens.errors import CamlensError


@dataclass
class Batch:
    """What the loader hands the model: the readable images of one slice of one shard."""

    shard: int
    indices: list[int]  # global indices of the readable images, in order
    images: Tensor  # (len(indices), C, H, W), or (0,) when none was readable
    errors: list[tuple[int, str]] = field(default_factory=list)  # (global index, why)


class ImageDataset(Dataset):
    """Item ``i`` of ``items``: ``(i, image tensor, None)`` or ``(i, None, why unreadable)``."""

    def __init__(self, items: Sequence[str], size: int, resize: int | None, preset: str):
        self.items = items
        self.size, self.resize, self.preset = size, resize, preset

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, Tensor | None, str | None]:
        from camlens.io import InputWarning, preprocess

        try:
            with warnings.catch_warnings(record=True) as notes:
                warnings.simplefilter("always", InputWarning)
                img = load(self.items[i])
            for note in notes:  # e.g. the first frame of an animated GIF: said, in one line
                print(f"camlens: note: {note.message}", file=sys.stderr)
            return i, preprocess([img], self.size, self.resize, self.preset)[0], None
        except CamlensError as exc:
            return i, None, str(exc)
        except Exception as exc:  # a decoder bug on one odd file must not end the job
            return i, None, f"{self.items[i]}: {type(exc).__name__}: {exc}"


def slices(shards: Sequence[int], shard_size: int, total: int, batch_size: int) -> list[list[int]]:
    """Index lists of the batches of ``shards``: each shard cut into runs of ``batch_size``."""
    out = []
    for s in shards:
        start, stop = s * shard_size, min((s + 1) * shard_size, total)
        out.extend(
            list(range(b, min(b + batch_size, stop))) for b in range(start, stop, batch_size)
        )
    return out


class _Collate:
    """Rows of one slice -> :class:`Batch` (a class, so that spawned workers can pickle it)."""

    def __init__(self, shard_size: int):
        self.shard_size = shard_size

    def __call__(self, rows: list[tuple[int, Tensor | None, str | None]]) -> Batch:
        good = [(i, t) for i, t, _ in rows if t is not None]
        bad = [(i, e) for i, t, e in rows if t is None and e is not None]
        images = torch.stack([t for _, t in good]) if good else torch.empty(0)
        return Batch(rows[0][0] // self.shard_size, [i for i, _ in good], images, bad)


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # one decoding process per core; torch must not oversubscribe


def loader(
    items: Sequence[str],
    shards: Sequence[int],
    shard_size: int,
    batch_size: int,
    workers: int,
    size: int,
    resize: int | None,
    preset: str,
) -> Iterator[Batch]:
    """Batches of the given shards, in order, decoded by ``workers`` processes (0: in-process)."""
    batches = slices(shards, shard_size, len(items), batch_size)
    if not batches:
        return iter(())
    data = ImageDataset(items, size, resize, preset)
    # Import what the workers run before forking them: each would otherwise import
    # torchvision itself (seconds per worker, per run).
    import torchvision.transforms.functional  # noqa: F401

    import camlens.demo.shapes
    import camlens.io  # noqa: F401

    return iter(
        DataLoader(
            data,
            batch_sampler=batches,
            num_workers=workers,
            collate_fn=_Collate(shard_size),
            prefetch_factor=2 if workers else None,
            persistent_workers=False,
            worker_init_fn=_worker_init,
            generator=torch.Generator().manual_seed(0),  # leaves the caller's RNG alone
        )
    )

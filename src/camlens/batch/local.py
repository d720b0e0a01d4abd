"""The local engine: DataLoader workers decode, the model runs in this process, a background
thread writes the shards."""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from camlens.batch.core import JobConfig, rows, write_overlays
from camlens.batch.dataset import loader
from camlens.batch.shards import write_shard


@dataclass
class _Pending:
    """A shard being filled: its rows, its unreadable files, and how many images it has seen."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[tuple[int, str, str]] = field(default_factory=list)
    seen: int = 0


class ShardWriter:
    """Writes complete shards (and their overlays) on a background thread.

    ``put`` blocks when ``depth`` shards wait, which bounds memory. A failure on the thread is
    raised again by the next ``put`` or by ``close``.
    """

    def __init__(
        self, out: Path, items: Sequence[str], methods: Sequence[str], preset: str, depth: int = 2
    ):
        self.out, self.items, self.methods, self.preset = out, items, list(methods), preset
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.written: list[int] = []
        self.thread = threading.Thread(target=self._loop, name="camlens-shard-writer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            if self.error is not None:
                continue
            shard, pending, draws = job
            try:
                if draws:
                    write_overlays(self.out, draws, self.items, self.preset)
                write_shard(self.out, shard, pending.rows, pending.errors, self.methods)
                self.written.append(shard)
            except BaseException as exc:  # re-raised on the main thread
                self.error = exc

    def put(self, shard: int, pending: _Pending, draws: list[Any]) -> None:
        """Queue a finished shard for the writer thread (raises the thread's failure, if any)."""
        if self.error is not None:
            raise self.error
        self.queue.put((shard, pending, draws))

    def close(self) -> None:
        """Write what is queued, stop the thread, and raise its failure if any."""
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def run_local(
    config: JobConfig,
    spec: Any,
    items: Sequence[str],
    pending: Sequence[int],
    out: Path,
    batch_size: int,
    workers: int,
    device: torch.device,
    bar: Any,
) -> list[int]:
    """Explain the images of the ``pending`` shards; returns the shards written.

    On an interruption (Ctrl-C, an error) the shards already complete are still written, the
    one being filled is dropped (a rerun redoes it), and the exception propagates.
    """
    import camlens

    model = spec.model.to(device)
    explainers = {
        m: camlens.Explainer(model, m, config.layer, batch_size=batch_size) for m in config.methods
    }
    writer = ShardWriter(out, items, config.methods, spec.preset)
    filling: dict[int, _Pending] = {}
    draws: dict[int, list[Any]] = {}
    total = len(items)
    try:
        batches = loader(
            items,
            pending,
            config.shard_size,
            batch_size,
            workers,
            spec.size,
            spec.resize,
            spec.preset,
        )
        for batch in batches:
            shard = batch.shard
            acc = filling.setdefault(shard, _Pending())
            if batch.indices:
                x = batch.images.to(device)
                new, drawn = rows(explainers, x, batch.indices, items, config)
                acc.rows.extend(new)
                draws.setdefault(shard, []).extend(drawn)
            acc.errors.extend((i, items[i], why) for i, why in batch.errors)
            n = len(batch.indices) + len(batch.errors)
            acc.seen += n
            size = min(config.shard_size, total - shard * config.shard_size)
            if acc.seen == size:
                writer.put(shard, filling.pop(shard), draws.pop(shard, []))
            bar.update(n)
    finally:
        writer.close()
    return writer.written

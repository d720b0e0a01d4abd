"""The Ray Data engine: the same job, with the same shards and manifest, on a Ray cluster.

Paths become a Ray dataset; ``map_batches`` tasks decode and preprocess; an actor pool explains
(each actor builds the model once, on a GPU when the cluster has them); the driver streams the
result rows back and writes each shard through the same atomic writer as the local engine, so
a rerun resumes whichever engine ran before. Overlays are written by the actors, so on a
cluster OUT must be a path every node sees (a shared filesystem).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from camlens.batch.core import JobConfig, build, rows, write_overlays
from camlens.batch.shards import MissingDependencyError, write_shard


def _require_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingDependencyError(
            "--engine ray needs Ray Data: pip install 'camlens[ray]'"
        ) from None
    return ray


def _decode(
    batch: dict[str, np.ndarray], size: int, resize: int | None, preset: str
) -> dict[str, np.ndarray]:
    """map_batches task: sources -> preprocessed pixels, or the reason a file is unreadable."""
    from camlens.batch.dataset import ImageDataset

    torch.set_num_threads(1)
    sources = [str(s) for s in batch["source"]]
    data = ImageDataset(sources, size, resize, preset)
    pixels = np.zeros((len(sources), 3, size, size), dtype=np.float32)
    errors = []
    for k in range(len(sources)):
        _, t, why = data[k]
        if t is not None:
            pixels[k] = t.numpy()
        errors.append(why or "")
    return {
        "index": np.asarray(batch["index"], dtype=np.int64),
        "source": np.asarray(sources, dtype=object),
        "pixels": pixels,
        "error": np.asarray(errors, dtype=object),
    }


class _Explain:
    """Actor: builds the model once, then explains each batch it is given into result rows."""

    def __init__(self, config: JobConfig, batch_size: int, out: str, device: str):
        import camlens

        self.config, self.out = config, Path(out)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.spec = build(config)
        self.model = self.spec.model.to(self.device)
        self.explainers = {
            m: camlens.Explainer(self.model, m, config.layer, batch_size=batch_size)
            for m in config.methods
        }

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        from camlens.batch.shards import COLUMNS, schema

        sources = [str(s) for s in batch["source"]]
        index = [int(i) for i in batch["index"]]
        errors = [str(e) for e in batch["error"]]
        ok = [k for k, e in enumerate(errors) if not e]
        items = dict(zip(index, sources, strict=True))
        out: list[dict[str, Any]] = []
        if ok:
            x = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok])).to(self.device)
            new, draws = rows(self.explainers, x, [index[k] for k in ok], items, self.config)
            out.extend({**r, "error": ""} for r in new)
            if draws:
                write_overlays(self.out, draws, items, self.spec.preset)
        for k, e in enumerate(errors):
            if e:
                out.append(
                    {
                        "index": index[k],
                        "source": sources[k],
                        "method": "",
                        "layer": "",
                        "rank": 0,
                        "target": -1,
                        "score": 0.0,
                        "map": b"",
                        "map_shape": [],
                        "topk_classes": [],
                        "topk_probs": [],
                        "error": e,
                    }
                )
        full = schema().append(pa.field("error", pa.string(), nullable=False))
        return pa.Table.from_pydict({c: [r[c] for r in out] for c in (*COLUMNS, "error")}, full)


@dataclass
class _Shard:
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[tuple[int, str, str]] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)


def run_ray(
    config: JobConfig,
    spec: Any,
    items: Sequence[str],
    pending: Sequence[int],
    out: Path,
    batch_size: int,
    device: torch.device,
    bar: Any,
    address: str | None = None,
    actors: int | None = None,
) -> list[int]:
    """Explain the ``pending`` shards on Ray Data; returns the shards written.

    ``address``: None joins the Ray instance this process already started (``ray.init``) or
    starts a local one; "auto" or "ray://head:10001" joins a cluster. One actor per GPU when
    the cluster has GPUs (and ``device`` is not cpu), else ``actors`` CPU actors (default:
    half the cluster's CPUs, at least one).
    """
    ray = _require_ray()
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if device.type != "cpu" else 0
    if actors is None:
        actors = gpus if gpus else max(1, int(resources.get("CPU", 1)) // 2)
    total = len(items)
    records = [
        {"index": i, "source": items[i]}
        for s in pending
        for i in range(s * config.shard_size, min((s + 1) * config.shard_size, total))
    ]
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True
    ds = ray.data.from_items(records)
    ds = ds.map_batches(
        _decode,
        fn_kwargs={"size": spec.size, "resize": spec.resize, "preset": spec.preset},
        batch_size=batch_size,
        num_cpus=1,
    )
    ds = ds.map_batches(
        _Explain,
        fn_constructor_args=(config, batch_size, str(out), "auto" if gpus else "cpu"),
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if gpus else 0,
        num_cpus=1,
        batch_format="numpy",
    )
    shards: dict[int, _Shard] = {}
    written: list[int] = []
    for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        for row in table.to_pylist():
            index = row["index"]
            shard = index // config.shard_size
            acc = shards.setdefault(shard, _Shard())
            error = row.pop("error")
            if error:
                acc.errors.append((index, row["source"], error))
            else:
                acc.rows.append(row)
            if index not in acc.seen:
                acc.seen.add(index)
                bar.update(1)
        # All rows of an image come from one actor call, hence one block: a shard whose every
        # image has been seen is complete once the block is consumed.
        for shard in sorted(s for s, acc in shards.items() if _full(acc, s, config, total)):
            acc = shards.pop(shard)
            write_shard(out, shard, acc.rows, acc.errors, config.methods)
            written.append(shard)
    return written


def _full(acc: _Shard, shard: int, config: JobConfig, total: int) -> bool:
    return len(acc.seen) == min(config.shard_size, total - shard * config.shard_size)

"""``camlens.batch.run``: one job, whichever the engine; the manifest and the resume logic."""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from camlens.batch import shards as _shards
from camlens.batch.core import JobConfig, build, check_device, config_dict
from camlens.batch.sources import resolve
from camlens.errors import InputError


@dataclass
class RunSummary:
    """What a run did.

    Attributes:
        out: the output folder.
        images: images in INPUT.
        shards: shards in the job; ``skipped`` were already complete, ``written`` by this run.
        errors: unreadable files in the whole output (``errors.csv``).
        seconds: this run's wall time.
    """

    out: Path
    images: int
    shards: int
    skipped: int
    written: int
    errors: int
    seconds: float


def _parse(device: str) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {device!r} is not a device; use cpu, cuda, cuda:1") from None


def default_workers() -> int:
    """DataLoader worker processes: one per spare core, at most 4."""
    return min(4, max(0, (os.cpu_count() or 1) - 1))


def run(
    input: str | Path,
    out: str | Path,
    model: str = "demo",
    *,
    weights: str | None = None,
    methods: Sequence[str] = ("gradcam",),
    layer: str | None = None,
    target: int | None = None,
    topk: int = 1,
    batch_size: int = 64,
    workers: int | None = None,
    shard_size: int = 1000,
    overlays: bool = False,
    engine: str = "local",
    device: str = "cpu",
    ray_address: str | None = None,
    progress: bool = True,
) -> RunSummary:
    """Explain every image of ``input`` and write sharded Parquet into ``out``.

    input: a folder (recursive), a glob, a text file of paths, or ``shapes:N``.
    model, weights: as for ``camlens explain`` ("demo", or a torchvision name; a torchvision
        model without weights gets seeded random weights, reproducible across runs).
    methods: registered method names; layer: a dotted layer name or None (automatic).
    target: one class id for every image; otherwise each image's ``topk`` top classes.
    shard_size: images per shard (and per Parquet file); part of the job's identity.
    engine: "local" (DataLoader workers + this process) or "ray" (Ray Data; ``ray_address``
        None starts a local Ray, "auto" or "ray://host:10001" joins a cluster).

    Resumable: shards already in ``out`` are skipped; a job with other parameters in the same
    ``out`` raises :class:`camlens.batch.JobMismatchError`. Returns a :class:`RunSummary`.
    """
    start = time.perf_counter()
    _shards.require_pyarrow()
    if engine not in ("local", "ray"):
        raise InputError(f"engine must be 'local' or 'ray', got {engine!r}")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise InputError(f"workers must be >= 0, got {workers}")
    config = JobConfig(
        input=str(input),
        model=model,
        weights=None if weights is None else str(weights),
        methods=tuple(methods),
        layer=layer,
        target=target,
        topk=topk,
        shard_size=shard_size,
        overlays=overlays,
    )
    config.validate()
    # Ray: the device is the workers' (a driver without a GPU may drive a GPU cluster).
    dev = check_device(device) if engine == "local" else _parse(device)
    source = resolve(input)
    spec = build(config)
    # The job's identity: what it computes, not how it was spelled (the input and weights as
    # typed are recorded beside it; the sources and the weights are pinned by their hashes).
    job = {
        **{k: v for k, v in config_dict(config).items() if k not in ("input", "weights")},
        "images": len(source),
        "sources_sha256": source.fingerprint(),
        "weights_sha256": _shards.weights_sha256(spec.model),
        "image_size": spec.size,
        "resize": spec.resize,
        "preset": spec.preset,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _shards.check_job(out, job)
    _shards.remove_temporaries(out)
    run_record = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "engine": engine,
        "device": str(dev),
        "batch_size": batch_size,
        "workers": workers,
        "versions": _shards.versions(),
    }
    if manifest is None:
        manifest = {"format": _shards.FORMAT, "job": job, "shards": 0, "complete": False}
    manifest.update(input=config.input, weights=config.weights)
    n_shards = -(-len(source) // shard_size)
    manifest.update(shards=n_shards, versions=_shards.versions())
    manifest.setdefault("runs", []).append(run_record)
    _shards.write_manifest(out, manifest)

    done = _shards.finished_shards(out)
    pending = [s for s in range(n_shards) if s not in done]
    done_images = sum(min(shard_size, len(source) - s * shard_size) for s in done if s < n_shards)
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(source),
        initial=done_images,
        unit="img",
        desc="explaining",
        disable=not progress,
        smoothing=0.1,
        dynamic_ncols=True,
    )
    written: list[int] = []
    try:
        if pending:
            if engine == "local":
                from camlens.batch.local import run_local

                written = run_local(
                    config, spec, source.items, pending, out, batch_size, workers, dev, bar
                )
            else:
                from camlens.batch.ray_engine import run_ray

                written = run_ray(
                    config, spec, source.items, pending, out, batch_size, dev, bar, ray_address
                )
    finally:
        bar.close()
    errors = _shards.write_errors_csv(out)
    finished = _shards.finished_shards(out)
    manifest["complete"] = all(s in finished for s in range(n_shards))
    manifest["errors"] = errors
    run_record["seconds"] = round(time.perf_counter() - start, 3)
    run_record["shards_written"] = len(written)
    _shards.write_manifest(out, manifest)
    return RunSummary(
        out, len(source), n_shards, len(done), len(written), errors, time.perf_counter() - start
    )

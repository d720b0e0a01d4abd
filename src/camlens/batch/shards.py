"""The output contract of a batch job: shards, their schema, ``manifest.json``, ``errors.csv``.

OUT/
    manifest.json           the job's parameters (what must match to resume), versions, runs
    shard-00000.parquet     one row per image, method and target; images [0, shard_size)
    shard-00001.parquet     ...
    errors.csv              index, source, error: every file that could not be read
    overlays/               with --overlays: one PNG per row

A shard is written to a temporary name in OUT and renamed (``os.replace``, atomic on POSIX) once
complete, so a shard file is either absent or whole: a job killed at any moment leaves finished
shards and at worst a temporary file, which the next run deletes. The unreadable files of a
shard travel inside it (Parquet key-value metadata ``camlens.errors``), so ``errors.csv`` is
rebuilt from the shards at the end of every run and never duplicates a line.

Maps are stored as the raw float16 bytes of a C-ordered little-endian array with the shape
beside it, which pandas, pyarrow, DuckDB and Ray read without camlens:
``np.frombuffer(row.map, "<f2").reshape(row.map_shape)``.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from camlens.errors import CamlensError, InputError

FORMAT = "camlens-batch/1"
MANIFEST = "manifest.json"
ERRORS = "errors.csv"
_SHARD = re.compile(r"^shard-(\d{5,})\.parquet$")
COLUMNS = (
    "index",
    "source",
    "method",
    "layer",
    "rank",
    "target",
    "score",
    "map",
    "map_shape",
    "topk_classes",
    "topk_probs",
)


class MissingDependencyError(CamlensError, ImportError):
    """An optional dependency that this feature needs is not installed."""


class JobMismatchError(CamlensError, ValueError):
    """OUT already holds a different job; resuming into it would mix two jobs' rows."""


def require_pyarrow() -> Any:
    """Import pyarrow (and pyarrow.parquet) or say which extra installs it."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise MissingDependencyError(
            "camlens batch writes Parquet and needs pyarrow: pip install 'camlens[batch]'"
        ) from None
    return pyarrow


def schema() -> Any:
    """The Parquet schema of a shard (see the module docstring and the README)."""
    pa = require_pyarrow()
    return pa.schema(
        [
            pa.field("index", pa.int64(), nullable=False),  # position in INPUT's ordered list
            pa.field("source", pa.string(), nullable=False),  # file path, or shapes:N/i
            pa.field("method", pa.string(), nullable=False),
            pa.field("layer", pa.string(), nullable=False),
            pa.field("rank", pa.int16(), nullable=False),  # 1..K for top-k, 0 for --target C
            pa.field("target", pa.int64(), nullable=False),  # the explained class id
            pa.field("score", pa.float32(), nullable=False),  # its logit
            pa.field("map", pa.binary(), nullable=False),  # raw map, float16 little-endian
            pa.field("map_shape", pa.list_(pa.int32()), nullable=False),  # (h, w)
            pa.field("topk_classes", pa.list_(pa.int32()), nullable=False),  # the top 5 classes
            pa.field("topk_probs", pa.list_(pa.float32()), nullable=False),  # their softmax
        ]
    )


def shard_name(shard: int) -> str:
    """The file name of shard ``index``."""
    return f"shard-{shard:05d}.parquet"


def finished_shards(out: Path) -> set[int]:
    """Shard numbers whose file exists in ``out`` (renamed into place, so complete)."""
    if not out.is_dir():
        return set()
    return {int(m.group(1)) for p in out.iterdir() if (m := _SHARD.match(p.name))}


def remove_temporaries(out: Path) -> int:
    """Delete what an interrupted run left half-written (``*.tmp*`` in OUT and overlays/)."""
    removed = 0
    if out.is_dir():
        for p in out.rglob(".*.tmp*"):
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def encode_map(raw: torch.Tensor) -> bytes:
    """A raw map -> float16 little-endian C-order bytes (the same bytes for the same values)."""
    arr = raw.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f2")
    return arr.tobytes(order="C")


def decode_map(data: bytes, shape: Sequence[int]) -> np.ndarray:
    """The inverse of :func:`encode_map`, as float32."""
    return np.frombuffer(data, dtype="<f2").reshape(tuple(shape)).astype(np.float32)


def rows_to_table(rows: Sequence[dict[str, Any]], method_order: Sequence[str]) -> Any:
    """Rows -> a pyarrow Table in canonical order: by index, method (as given), rank."""
    pa = require_pyarrow()
    position = {m: k for k, m in enumerate(method_order)}
    rows = sorted(rows, key=lambda r: (r["index"], position.get(r["method"], 1 << 30), r["rank"]))
    columns = {name: [r[name] for r in rows] for name in COLUMNS}
    return pa.Table.from_pydict(columns, schema=schema())


class DiskFullError(CamlensError, OSError):
    """OUT's filesystem is full: the finished shards are kept, a rerun resumes."""

    def __str__(self) -> str:
        return str(self.strerror)


def _replace_atomically(path: Path, write: Any) -> None:
    """``write(file)`` into a temporary name beside ``path``, fsync, ``os.replace``.

    On any failure the temporary file is removed (a full disk leaves no partial file behind)
    and a full disk becomes one :class:`DiskFullError`.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        raise_if_disk_full(exc, path)
        raise


def raise_if_disk_full(exc: BaseException, path: Path) -> None:
    """Turn a full disk (ENOSPC, EDQUOT) met while writing ``path`` into :class:`DiskFullError`."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DiskFullError(
            errno.ENOSPC,
            f"no space left on the device holding {path.parent} while writing {path.name}; "
            "the finished shards are kept: free some space and rerun the same command to "
            "resume",
        ) from None


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    _replace_atomically(path, lambda f: f.write(data))


def write_shard(
    out: Path,
    shard: int,
    rows: Sequence[dict[str, Any]],
    errors: Sequence[tuple[int, str, str]],
    method_order: Sequence[str],
) -> Path:
    """Write one complete shard atomically: a temporary file, fsync, then ``os.replace``."""
    require_pyarrow()
    import pyarrow.parquet as pq

    table = rows_to_table(rows, method_order)
    meta = {b"camlens.errors": json.dumps(sorted(errors)).encode(), b"camlens.shard": b"%d" % shard}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    path = out / shard_name(shard)
    _replace_atomically(path, lambda f: pq.write_table(table, f, compression="zstd"))
    return path


def shard_errors(path: Path) -> list[tuple[int, str, str]]:
    """The unreadable files recorded in a shard: (index, source, why)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return [tuple(e) for e in json.loads(meta.get(b"camlens.errors", b"[]"))]  # type: ignore[misc]


def write_errors_csv(out: Path) -> int:
    """Rebuild ``errors.csv`` from the shards; returns the number of unreadable files."""
    errors: list[tuple[int, str, str]] = []
    for shard in sorted(finished_shards(out)):
        errors.extend(shard_errors(out / shard_name(shard)))
    errors.sort()
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["index", "source", "error"])
    writer.writerows(errors)
    _atomic_write_bytes(out / ERRORS, text.getvalue().encode("utf-8", "surrogateescape"))
    return len(errors)


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the model's state dict: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_manifest(out: Path) -> dict[str, Any] | None:
    """The job's manifest.json, or None when OUT has none."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a camlens manifest ({exc}); use another --out") from None


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Write manifest.json atomically."""
    _atomic_write_bytes(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


def check_job(out: Path, job: dict[str, Any]) -> dict[str, Any] | None:
    """The existing manifest if OUT holds the same job; None if OUT holds no shard yet (a job
    that failed before its first shard, say on a bad layer name, does not block a corrected one).

    Raises :class:`JobMismatchError` naming the differing parameters when OUT holds shards of
    another job, and :class:`InputError` when OUT holds shards without a manifest.
    """
    manifest = read_manifest(out)
    if manifest is None:
        if finished_shards(out):
            raise InputError(
                f"{out} holds shards but no {MANIFEST}: it is not a camlens batch output (or "
                "the manifest was deleted); use another --out"
            )
        return None
    old = manifest.get("job", {})
    if not finished_shards(out):
        return None  # no row written yet: nothing to mix, the new job replaces the old one
    if manifest.get("format") != FORMAT or old != job:
        keys = sorted(k for k in set(old) | set(job) if old.get(k) != job.get(k))
        shown = ", ".join(f"{k}: {old.get(k)!r} there, {job.get(k)!r} now" for k in keys[:4])
        raise JobMismatchError(
            f"{out} already holds a different job ({shown or 'another format'}); rerun with the "
            "same arguments to resume it, or pass a new --out"
        )
    return manifest


def versions() -> dict[str, str]:
    """The versions of Python, torch, torchvision and camlens, for the manifest."""
    import platform

    import camlens

    out = {
        "camlens": camlens.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        import pyarrow

        out["pyarrow"] = pyarrow.__version__
    except ImportError:
        pass
    return out


def errors_rows(
    errors: Iterable[tuple[int, str]], items: Sequence[str]
) -> list[tuple[int, str, str]]:
    """The rows of errors.csv (index, source, error)."""
    return [(i, items[i], why) for i, why in errors]

"""``camlens.batch.read(OUT)``: a finished (or partial) job's output, lazily or as a table."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from camlens.batch import shards as _shards
from camlens.errors import InputError


class BatchOutput:
    """The output folder of a batch job.

    ``table()`` is every row as one pyarrow Table (in index, method, rank order) and
    ``to_pandas()`` the same as a DataFrame; ``maps()`` iterates (row, float32 map) one shard
    at a time, so a large output never has to fit in memory; ``manifest`` and ``errors`` are
    the parsed ``manifest.json`` and ``errors.csv``.
    """

    def __init__(self, out: str | Path):
        self.out = Path(out)
        _shards.require_pyarrow()
        manifest = _shards.read_manifest(self.out)
        if manifest is None:
            raise InputError(f"{self.out}: no manifest.json, so not a camlens batch output")
        self.manifest: dict[str, Any] = manifest

    @property
    def files(self) -> list[Path]:
        """The complete shard files, in shard order."""
        return [self.out / _shards.shard_name(s) for s in sorted(_shards.finished_shards(self.out))]

    @property
    def complete(self) -> bool:
        """Whether every shard of the job has been written."""
        return len(self.files) == self.manifest.get("shards", -1)

    def table(self, columns: list[str] | None = None) -> Any:
        """All rows as one pyarrow Table (optionally only ``columns``)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = [pq.read_table(p, columns=columns) for p in self.files]
        if not tables:
            names = columns or list(_shards.COLUMNS)
            return _shards.schema().empty_table().select(names)
        return pa.concat_tables(tables).replace_schema_metadata(None)

    def to_pandas(self, columns: list[str] | None = None) -> Any:
        """All rows as a pandas DataFrame (needs pandas)."""
        return self.table(columns).to_pandas()

    def maps(self, method: str | None = None) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
        """(row without the map bytes, map as float32 (h, w)) for every row, shard by shard."""
        import pyarrow.parquet as pq

        for path in self.files:
            for row in pq.read_table(path).to_pylist():
                if method is not None and row["method"] != method:
                    continue
                data = row.pop("map")
                yield row, _shards.decode_map(data, row["map_shape"])

    @property
    def errors(self) -> list[dict[str, str]]:
        """The unreadable files: [{index, source, error}] (from errors.csv, else the shards)."""
        path = self.out / _shards.ERRORS
        if path.is_file():
            with open(path, newline="") as f:
                return list(csv.DictReader(f))
        return [
            {"index": str(i), "source": s, "error": e}
            for p in self.files
            for i, s, e in _shards.shard_errors(p)
        ]

    def __len__(self) -> int:
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(p).metadata.num_rows for p in self.files)

    def __repr__(self) -> str:
        return (
            f"BatchOutput({str(self.out)!r}: {len(self.files)}/{self.manifest.get('shards')} "
            f"shards, {len(self)} rows)"
        )


def read(out: str | Path) -> BatchOutput:
    """Open a batch job's output folder (see :class:`BatchOutput`)."""
    return BatchOutput(out)

"""Explain a whole dataset: streaming, sharded Parquet, resumable; locally or on Ray Data.

>>> import camlens.batch
>>> camlens.batch.run("shapes:5000", "out/batch", "demo", methods=["gradcam"])  # doctest: +SKIP
>>> camlens.batch.read("out/batch").to_pandas()                               # doctest: +SKIP

pyarrow (the ``batch`` extra) is imported only when a job runs or is read; Ray (the ``ray``
extra) only by ``engine="ray"``.
"""

from camlens.batch.job import RunSummary, default_workers, run
from camlens.batch.read import BatchOutput, read
from camlens.batch.shards import (
    DiskFullError,
    JobMismatchError,
    MissingDependencyError,
    decode_map,
)
from camlens.batch.sources import Source, resolve

__all__ = [
    "BatchOutput",
    "DiskFullError",
    "JobMismatchError",
    "MissingDependencyError",
    "RunSummary",
    "Source",
    "decode_map",
    "default_workers",
    "read",
    "resolve",
    "run",
]

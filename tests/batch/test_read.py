"""camlens.batch.read: lazily, as pyarrow, as pandas; partial outputs."""

from __future__ import annotations

import numpy as np
import pytest

import camlens.batch
from camlens.errors import InputError


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    out = tmp_path_factory.mktemp("read")
    camlens.batch.run(
        "shapes:9",
        out,
        "demo",
        methods=["gradcam", "cam"],
        shard_size=4,
        workers=0,
        progress=False,
    )
    return out


def test_maps_are_lazy_rows_with_float32_maps(output) -> None:
    out = camlens.batch.read(output)
    it = out.maps(method="cam")
    row, heat = next(it)
    assert row["index"] == 0 and row["method"] == "cam" and "map" not in row
    assert heat.dtype == np.float32 and heat.shape == tuple(row["map_shape"])
    assert len(list(it)) == 8


def test_table_pandas_and_metadata(output) -> None:
    out = camlens.batch.read(output)
    assert out.complete and len(out) == 18 and "3/3 shards" in repr(out)
    df = out.to_pandas(["index", "method", "target"])
    assert list(df.columns) == ["index", "method", "target"] and len(df) == 18
    assert out.table().schema.metadata is None
    assert out.errors == []
    assert out.manifest["job"]["methods"] == ["gradcam", "cam"]


def test_partial_output_reads_what_is_finished(output, tmp_path) -> None:
    import shutil

    part = tmp_path / "part"
    shutil.copytree(output, part)
    (part / "shard-00001.parquet").unlink()
    out = camlens.batch.read(part)
    assert not out.complete and len(out) == 10
    assert sorted(set(out.table()["index"].to_pylist())) == [0, 1, 2, 3, 8]


def test_not_an_output(tmp_path) -> None:
    with pytest.raises(InputError, match="manifest"):
        camlens.batch.read(tmp_path)

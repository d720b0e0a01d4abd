"""The shard files, the manifest check and the weights hash."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from camlens.batch import shards
from camlens.batch.shards import JobMismatchError, MissingDependencyError
from camlens.errors import InputError


def _row(index: int, method: str, rank: int) -> dict:
    raw = torch.arange(6, dtype=torch.float32).reshape(2, 3) * (index + 1) / 7
    return {
        "index": index,
        "source": f"s{index}",
        "method": method,
        "layer": "features",
        "rank": rank,
        "target": rank,
        "score": 1.5,
        "map": shards.encode_map(raw),
        "map_shape": [2, 3],
        "topk_classes": [1, 0],
        "topk_probs": [0.75, 0.25],
    }


def test_map_bytes_roundtrip_as_float16() -> None:
    raw = torch.randn(5, 7)
    data = shards.encode_map(raw)
    assert len(data) == 5 * 7 * 2
    back = shards.decode_map(data, (5, 7))
    np.testing.assert_array_equal(back, raw.numpy().astype(np.float16).astype(np.float32))
    assert shards.encode_map(raw.clone()) == data  # the same values give the same bytes


def test_shard_is_renamed_into_place_in_canonical_order(tmp_path) -> None:
    rows = [_row(3, "layercam", 1), _row(2, "gradcam", 2), _row(2, "gradcam", 1)]
    rows.append(_row(2, "layercam", 1))
    (tmp_path / ".shard-00001.parquet.tmp123").write_bytes(b"half")  # a killed run's leftover
    path = shards.write_shard(tmp_path, 1, rows, [(4, "s4", "broken")], ["gradcam", "layercam"])
    assert path.name == "shard-00001.parquet"
    assert shards.finished_shards(tmp_path) == {1}
    assert shards.remove_temporaries(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00001.parquet"]
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    assert table.schema.remove_metadata().equals(shards.schema())
    order = [(r["index"], r["method"], r["rank"]) for r in table.to_pylist()]
    assert order == [(2, "gradcam", 1), (2, "gradcam", 2), (2, "layercam", 1), (3, "layercam", 1)]
    assert shards.shard_errors(path) == [(4, "s4", "broken")]
    assert shards.write_errors_csv(tmp_path) == 1
    assert (tmp_path / "errors.csv").read_text().splitlines() == [
        "index,source,error",
        "4,s4,broken",
    ]


def test_check_job_refuses_another_job_naming_the_difference(tmp_path) -> None:
    job = {"methods": ["gradcam"], "shard_size": 10}
    assert shards.check_job(tmp_path, job) is None
    shards.write_manifest(tmp_path, {"format": shards.FORMAT, "job": job})
    assert shards.check_job(tmp_path, {**job, "methods": ["cam"]}) is None  # no shard yet
    shards.write_shard(tmp_path, 0, [], [], ["gradcam"])
    assert shards.check_job(tmp_path, dict(job))["job"] == job
    with pytest.raises(JobMismatchError, match=r"methods: \['gradcam'\] there, \['layercam'\] now"):
        shards.check_job(tmp_path, {**job, "methods": ["layercam"]})
    (tmp_path / "manifest.json").write_text("{oops")
    with pytest.raises(InputError, match="not a camlens manifest"):
        shards.check_job(tmp_path, job)


def test_shards_without_manifest_are_refused(tmp_path) -> None:
    (tmp_path / "shard-00000.parquet").write_bytes(b"")
    with pytest.raises(InputError, match=r"no manifest\.json"):
        shards.check_job(tmp_path, {})


def test_weights_hash_sees_one_changed_weight(gapnet) -> None:
    before = shards.weights_sha256(gapnet)
    assert shards.weights_sha256(gapnet) == before
    with torch.no_grad():
        gapnet.fc.bias[0] += 1e-3
    assert shards.weights_sha256(gapnet) != before


def test_missing_pyarrow_names_the_extra(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(MissingDependencyError, match=r"camlens\[batch\]"):
        shards.require_pyarrow()


def test_manifest_is_json(tmp_path) -> None:
    shards.write_manifest(tmp_path, {"a": 1})
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"a": 1}
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]

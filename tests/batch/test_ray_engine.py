"""The Ray Data engine on a local Ray instance: the same output as the local engine."""

from __future__ import annotations

import pytest

import camlens.batch
from tests.batch.conftest import assert_same_rows

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_output_equals_local_and_resumes_across_engines(tmp_path, local_ray) -> None:
    kw = {"methods": ["gradcam", "layercam"], "topk": 2, "shard_size": 10, "progress": False}
    local = camlens.batch.run("shapes:24", tmp_path / "local", "demo", workers=0, **kw)
    remote = camlens.batch.run(
        "shapes:24", tmp_path / "ray", "demo", engine="ray", batch_size=8, **kw
    )
    assert (local.written, remote.written) == (3, 3)
    a = camlens.batch.read(tmp_path / "local")
    b = camlens.batch.read(tmp_path / "ray")
    assert len(b) == 24 * 2 * 2
    # other batch cuts (8 against 64) and Ray's one thread per actor: equal within float
    # rounding; rows, ids, targets and sources exactly
    assert_same_rows(b.table(), a.table())
    assert b.manifest["job"] == a.manifest["job"] and b.manifest["runs"][0]["engine"] == "ray"
    # A shard lost from the local output is redone by Ray; the rest is skipped.
    (tmp_path / "local" / "shard-00001.parquet").unlink()
    again = camlens.batch.run("shapes:24", tmp_path / "local", "demo", engine="ray", **kw)
    assert (again.skipped, again.written) == (2, 1)
    resumed = camlens.batch.read(tmp_path / "local").table()
    assert_same_rows(resumed, b.table())
    # the shards the local engine wrote and Ray skipped are untouched, bit for bit
    assert resumed.slice(0, 40).equals(a.table().slice(0, 40))
    assert resumed.slice(80).equals(a.table().slice(80))


@pytest.mark.slow
def test_ray_reports_unreadable_files(tmp_path, local_ray, png_folder) -> None:
    summary = camlens.batch.run(
        png_folder, tmp_path, "demo", engine="ray", shard_size=4, batch_size=3, progress=False
    )
    assert summary.errors == 1 and summary.written == 2
    out = camlens.batch.read(tmp_path)
    assert len(out) == 6 and out.errors[0]["source"].endswith("broken.png")

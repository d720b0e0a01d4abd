"""camlens.batch.run end to end on the local engine: rows, maps, resume, refusal, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import camlens
import camlens.batch
from camlens.batch import JobMismatchError, decode_map
from camlens.batch.sources import load
from camlens.demo import load_model
from camlens.errors import InputError, MethodNotFoundError
from camlens.io import preprocess
from tests.batch.conftest import assert_same_rows

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _run(spec, out, **kw):
    kw = {"methods": ["gradcam"], "shard_size": 8, "batch_size": 4, "workers": 0, **kw}
    return camlens.batch.run(spec, out, "demo", progress=False, **kw)


def test_rows_hold_the_library_maps_for_each_image_method_and_rank(tmp_path) -> None:
    summary = _run("shapes:10", tmp_path, methods=["gradcam", "layercam"], topk=2)
    assert (summary.images, summary.shards, summary.written, summary.skipped) == (10, 2, 2, 0)
    table = camlens.batch.read(tmp_path).table()
    assert table.num_rows == 10 * 2 * 2
    rows = table.to_pylist()
    assert [(r["index"], r["method"], r["rank"]) for r in rows[:4]] == [
        (0, "gradcam", 1),
        (0, "gradcam", 2),
        (0, "layercam", 1),
        (0, "layercam", 2),
    ]
    model = load_model()
    x = preprocess([load(f"shapes:10/{i}") for i in range(10)], 96, None, "none")
    for method in ("gradcam", "layercam"):
        mine = [r for r in rows if r["method"] == method]
        for rank in (1, 2):
            got = [r for r in mine if r["rank"] == rank]
            ids = torch.tensor([r["topk_classes"][rank - 1] for r in got])
            assert [r["target"] for r in got] == ids.tolist()
            ex = camlens.Explainer(model, method)(x, ids)
            raw = ex.raw[ex.layers[0]]
            want = raw.numpy().astype(np.float16).astype(np.float32)
            maps = np.stack([decode_map(r["map"], r["map_shape"]) for r in got])
            np.testing.assert_allclose(maps, want, atol=2e-3, rtol=2e-3)
            np.testing.assert_allclose([r["score"] for r in got], ex.scores.numpy(), rtol=1e-5)
            assert {r["layer"] for r in got} == {ex.layers[0]}
    probs = np.array([r["topk_probs"] for r in rows])
    assert np.all(np.diff(probs, axis=1) <= 0) and np.allclose(probs.sum(1), 1, atol=0.05)


def test_fixed_target_and_overlays(tmp_path) -> None:
    _run("shapes:5", tmp_path, target=3, overlays=True)
    out = camlens.batch.read(tmp_path)
    rows = out.table().to_pylist()
    assert [(r["rank"], r["target"]) for r in rows] == [(0, 3)] * 5
    pngs = sorted(p.name for p in (tmp_path / "overlays").iterdir())
    assert len(pngs) == 5 and pngs[0] == "0000000_shapes_gradcam_r0_c3.png"


def test_unreadable_files_go_to_errors_csv_and_the_rest_is_explained(tmp_path, png_folder) -> None:
    summary = _run(png_folder, tmp_path / "o", shard_size=3)
    assert summary.errors == 1
    out = camlens.batch.read(tmp_path / "o")
    assert out.complete and len(out) == 6
    assert [e["source"].rsplit("/", 1)[1] for e in out.errors] == ["broken.png"]
    assert "not a readable image" in out.errors[0]["error"]
    # The same pixels from files as from shapes:6 give the same maps. The broken file cuts
    # the folder's batches differently ([2], [3], [1] against [3], [3]), so the maps agree
    # within float rounding, not bit for bit (CPU kernels may differ with the batch size).
    _run("shapes:6", tmp_path / "s", shard_size=3)
    a = out.table(["map", "map_shape", "target", "score"])
    b = camlens.batch.read(tmp_path / "s").table(["map", "map_shape", "target", "score"])
    assert_same_rows(a, b)
    # The same job spelled differently (a trailing slash) is the same job: it resumes.
    again = _run(f"{png_folder}/", tmp_path / "o", shard_size=3)
    assert (again.skipped, again.written) == (3, 0)


def test_rerun_skips_finished_shards_and_redoes_a_missing_one(tmp_path) -> None:
    _run("shapes:20", tmp_path)
    before = camlens.batch.read(tmp_path).table()
    (tmp_path / "shard-00001.parquet").unlink()
    summary = _run("shapes:20", tmp_path, batch_size=4)
    assert (summary.shards, summary.skipped, summary.written) == (3, 2, 1)
    assert camlens.batch.read(tmp_path).table().equals(before)
    again = _run("shapes:20", tmp_path)
    assert again.written == 0 and again.skipped == 3


@pytest.mark.parametrize(
    "change",
    [{"methods": ["layercam"]}, {"shard_size": 5}, {"topk": 2}, {"target": 1}],
)
def test_a_different_job_into_the_same_out_is_refused(tmp_path, change) -> None:
    _run("shapes:4", tmp_path)
    with pytest.raises(JobMismatchError, match="different job"):
        _run("shapes:4", tmp_path, **change)
    with pytest.raises(JobMismatchError, match="images"):
        _run("shapes:5", tmp_path)


def test_a_job_that_failed_before_its_first_shard_does_not_block_a_corrected_one(tmp_path) -> None:
    with pytest.raises(camlens.LayerNotFoundError):
        _run("shapes:4", tmp_path, layer="nope")
    assert _run("shapes:4", tmp_path).written == 1
    assert camlens.batch.read(tmp_path).manifest["job"]["layer"] is None


def test_bad_arguments_fail_before_any_work(tmp_path) -> None:
    with pytest.raises(MethodNotFoundError):
        _run("shapes:4", tmp_path, methods=["nope"])
    with pytest.raises(InputError, match="topk"):
        _run("shapes:4", tmp_path, topk=0)
    with pytest.raises(InputError, match="engine"):
        _run("shapes:4", tmp_path, engine="spark")
    assert not list(tmp_path.iterdir())


def test_the_callers_rng_is_untouched(tmp_path) -> None:
    torch.manual_seed(5)
    want = torch.rand(3)
    torch.manual_seed(5)
    _run("shapes:2", tmp_path)
    assert torch.equal(torch.rand(3), want)


_CHILD = """
import sys, torch
sys.path.insert(0, {src!r})
import camlens.batch
camlens.batch.run("shapes:{n}", {out!r}, "demo", methods=["gradcam", "layercam"], shard_size=10,
                  batch_size=5, workers=0, progress=False)
"""


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_equals_an_uninterrupted_run(tmp_path) -> None:
    n, out = 160, tmp_path / "killed"
    code = _CHILD.format(src=SRC, n=n, out=str(out))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    child = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if len(list(out.glob("shard-*.parquet"))) >= 3:
                break
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    done = len(list(out.glob("shard-*.parquet")))
    assert child.returncode == -signal.SIGKILL
    assert 3 <= done < n // 10, "the child must be killed mid-run"
    summary = subprocess.run([sys.executable, "-c", code], env=env, check=True)
    assert summary.returncode == 0
    assert not [p for p in out.rglob("*") if "tmp" in p.name]
    reference = tmp_path / "whole"
    subprocess.run(
        [sys.executable, "-c", _CHILD.format(src=SRC, n=n, out=str(reference))], env=env, check=True
    )
    a, b = camlens.batch.read(out), camlens.batch.read(reference)
    assert a.complete and len(a) == 2 * n
    assert a.table().equals(b.table())  # same rows, same map bytes, no duplicate
    assert len(a.manifest["runs"]) == 2

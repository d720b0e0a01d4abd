"""Chaos: a batch job SIGKILLed at random moments, inside a shard rename, during the manifest
and errors.csv updates, and SIGTERMed, restarted each time, equals an uninterrupted run."""

from __future__ import annotations

import signal

import pytest

from camlens.testing.chaos import POINTS, Zygote, chaos, compare

pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def zygote():
    with Zygote() as z:  # one warm interpreter forks every run of this module
        yield z


ARGS = ["shapes:60", "--model", "demo", "--shard-size", "6", "--batch-size", "6", "--workers"]


@pytest.mark.slow
def test_kills_at_any_moment_leave_the_output_of_an_uninterrupted_run(tmp_path, zygote) -> None:
    out, ref = tmp_path / "out", tmp_path / "ref"
    points = tuple(p for p in POINTS if p != "shard-term")
    report = chaos(
        [*ARGS, "0"], out, ref, kills=6, points=points, sigterm=True, seed=3, zygote=zygote
    )
    assert report.differences == []
    by_how = {a.how.split(" #")[0]: a for a in report.attempts}
    for point in points:  # every exact point was hit: the child died there
        assert by_how[f"SIGKILL at {point}"].returncode == -signal.SIGKILL, point
    # killed before a rename: the whole temporary file is there until the next run removes it
    assert by_how["SIGKILL at shard-before"].temporaries_after == 1
    assert by_how["SIGKILL at manifest-before"].temporaries_after == 1
    sigterm = [a for a in report.attempts if a.how.startswith("SIGTERM")]
    assert len(sigterm) == 1
    if sigterm[0].returncode != 0:  # it landed (not after the job ended): a clean stop
        assert sigterm[0].returncode == 130 and sigterm[0].temporaries_after == 0
        assert "interrupted" in sigterm[0].stderr_tail
    assert report.killed >= len(points)
    assert report.attempts[-1].returncode == 0 and report.attempts[-1].temporaries_after == 0


@pytest.mark.slow
def test_sigterm_after_a_shard_is_a_clean_stop_and_the_rerun_completes(tmp_path, zygote) -> None:
    from camlens.testing.chaos import run_job

    args = [*ARGS, "0"]
    ref = run_job(args, tmp_path / "ref", zygote=zygote)
    stopped = run_job(args, tmp_path / "out", "shard-term", 2, zygote=zygote)
    final = run_job(args, tmp_path / "out", zygote=zygote)
    assert ref.returncode == 0 and final.returncode == 0
    assert stopped.returncode == 130 and "interrupted" in stopped.stderr_tail
    assert 2 <= stopped.shards_after < 10 and stopped.temporaries_after == 0
    assert compare(tmp_path / "out", tmp_path / "ref") == []


def test_compare_sees_a_missing_row_and_a_temporary_file(tmp_path) -> None:
    import shutil

    import camlens.batch

    ref = tmp_path / "ref"
    camlens.batch.run("shapes:4", ref, "demo", workers=0, shard_size=2, progress=False)
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    assert compare(out, ref) == []
    (out / ".shard-00000.parquet.tmp1").write_bytes(b"half")
    (out / "shard-00001.parquet").unlink()
    diffs = compare(out, ref)
    assert any("incomplete" in d for d in diffs) and any("temporary" in d for d in diffs)

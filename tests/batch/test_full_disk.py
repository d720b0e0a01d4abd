"""A full disk (a small tmpfs as OUT): one clear error, the finished shards intact, and a
rerun after space is freed completes the job with the output of an uninterrupted run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from camlens.cli import main
from camlens.testing.chaos import compare, temporaries

pytest.importorskip("pyarrow")

ARGS = ["shapes:48", "--model", "demo", "--shard-size", "6", "--batch-size", "6"]


@pytest.fixture
def tmpfs(tmp_path) -> Path:
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
            capture_output=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc})")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=20)


def test_a_full_disk_is_one_clear_error_and_the_rerun_completes(tmp_path, tmpfs, capsys) -> None:
    import camlens.batch

    ref = tmp_path / "ref"
    assert main(["batch", *ARGS, "--workers", "0", "--out", str(ref)]) == 0
    shard_bytes = sorted(p.stat().st_size for p in ref.glob("shard-*.parquet"))
    # room for the manifest (twice: temporary and final) and about three shards, in pages
    page = 4096
    pages = lambda n: -(-n // page) * page  # noqa: E731
    room = 2 * pages((ref / "manifest.json").stat().st_size + 2048) + 3 * pages(shard_bytes[-1])
    filler = tmpfs / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024 - room))
    out = tmpfs / "out"
    capsys.readouterr()
    code = main(["batch", *ARGS, "--workers", "0", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("camlens:")]
    assert lines[-1].startswith("camlens: error: no space left on the device"), err
    assert "rerun the same command to resume" in lines[-1] and "Traceback" not in err
    finished = sorted(out.glob("shard-*.parquet"))
    assert 1 <= len(finished) < 8
    assert temporaries(out) == []  # the half-written shard was removed
    import pyarrow.parquet as pq

    for path in finished:  # every finished shard is whole and equals the reference's
        assert pq.read_table(path).equals(pq.read_table(ref / path.name))
    filler.unlink()
    assert main(["batch", *ARGS, "--workers", "0", "--out", str(out)]) == 0
    assert compare(out, ref) == []
    assert camlens.batch.read(out).complete

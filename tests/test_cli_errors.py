"""CLI hygiene: every expected failure is one 'camlens: error:' line and a non-zero exit;
--debug shows the traceback. And 'camlens batch' from the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from camlens.batch.sources import load
from camlens.cli import main
from camlens.errors import LayerNotFoundError

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def ok_png(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cli") / "ok.png"
    load("shapes:1/0").save(path)
    return str(path)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("camlens: error: "), err
    return lines[0]


def test_unknown_layer_is_one_line(ok_png, tmp_path, capsys) -> None:
    code = main(["explain", ok_png, "--model", "demo", "--layer", "nope", "--out", str(tmp_path)])
    assert code == 2
    line = _one_error_line(capsys)
    assert "no layer named 'nope'" in line and "features" in line


def test_out_that_cannot_be_created_is_one_line(ok_png, tmp_path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code = main(["explain", ok_png, "--model", "demo", "--out", str(blocker / "sub")])
    assert code == 2
    assert str(blocker / "sub") in _one_error_line(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["explain", "evaluate", "batch"])
def test_cuda_without_cuda_is_one_line(command, ok_png, tmp_path, capsys) -> None:
    args = {
        "explain": ["explain", ok_png, "--model", "demo"],
        "evaluate": ["evaluate", "--data", "shapes:2", "--methods", "gradcam"],
        "batch": ["batch", "shapes:2", "--model", "demo"],
    }[command]
    code = main([*args, "--out", str(tmp_path / "o"), "--device", "cuda"])
    assert code == 2
    assert "use --device cpu" in _one_error_line(capsys)


def test_bad_device_name_is_one_line(ok_png, tmp_path, capsys) -> None:
    assert main(["explain", ok_png, "--model", "demo", "--device", "gpu0"]) == 2
    assert "not a device" in _one_error_line(capsys)


def test_debug_shows_the_traceback(ok_png, tmp_path) -> None:
    with pytest.raises(LayerNotFoundError):
        main(["--debug", "explain", ok_png, "--model", "demo", "--layer", "nope"])


def test_the_installed_command_exits_non_zero_without_a_traceback(ok_png, tmp_path) -> None:
    cmd = [
        sys.executable,
        "-c",
        f"import sys; sys.path.insert(0, {SRC!r}); from camlens.cli import main; sys.exit(main())",
    ]
    argv = ["explain", ok_png, "--model", "demo", "--layer", "nope", "--out", str(tmp_path)]
    plain = subprocess.run([*cmd, *argv], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.startswith("camlens: error: no layer named 'nope'")
    debug = subprocess.run([*cmd, "--debug", *argv], capture_output=True, text=True, timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_batch_runs_resumes_and_refuses_another_job(tmp_path, capsys) -> None:
    out = str(tmp_path / "b")
    argv = ["batch", "shapes:6", "--model", "demo", "--out", out, "--shard-size", "4"]
    assert main([*argv, "--workers", "0"]) == 0
    assert "6 images in 2 shards: 2 written, 0 already done" in capsys.readouterr().out
    assert main([*argv, "--workers", "0"]) == 0
    assert "0 written, 2 already done" in capsys.readouterr().out
    assert main([*argv, "--methods", "layercam"]) == 2
    line = _one_error_line(capsys)
    assert "different job" in line and "new --out" in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["no/such/dir"], "no such folder"),
        (["shapes:0"], "shapes:N"),
        (["shapes:3", "--methods", "nope"], "nope"),
        (["shapes:3", "--topk", "0"], "--topk"),
        (["shapes:3", "--engine", "spark"], "invalid choice"),
    ],
)
def test_batch_bad_input_is_one_line(args, expected, tmp_path, capsys) -> None:
    try:
        code = main(["batch", *args, "--model", "demo", "--out", str(tmp_path / "o")])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    assert code == 2
    assert expected in _one_error_line(capsys)


def test_import_camlens_imports_no_optional_dependency() -> None:
    code = (
        f"import sys; sys.path.insert(0, {SRC!r}); import camlens, camlens.cli; "
        "bad = [m for m in ('pyarrow', 'ray', 'pandas', 'camlens.batch') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.slow
def test_ctrl_c_keeps_whole_shards_and_the_rerun_completes(tmp_path) -> None:
    import os
    import signal
    import time

    out = tmp_path / "o"
    cmd = [
        sys.executable,
        "-c",
        f"import sys; sys.path.insert(0, {SRC!r}); from camlens.cli import main; sys.exit(main())",
        "batch", "shapes:200", "--model", "demo", "--out", str(out), "--shard-size", "10",
        "--batch-size", "5", "--workers", "1",
    ]  # fmt: skip
    child = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("shard-*.parquet"))) < 2:
        time.sleep(0.01)
    os.killpg(child.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("camlens: error: interrupted")
    assert "Traceback" not in err
    done = len(list(out.glob("shard-*.parquet")))
    assert 2 <= done < 20
    assert not [p for p in out.rglob("*") if "tmp" in p.name]
    assert main(["batch", "shapes:200", "--model", "demo", "--out", str(out), "--shard-size",
                 "10", "--batch-size", "5", "--workers", "0"]) == 0  # fmt: skip
    import camlens.batch

    result = camlens.batch.read(out)
    assert result.complete and len(result) == 200
    assert result.table()["index"].to_pylist() == list(range(200))

"""The command line with --model open_clip:NAME --prompt ... and --target output:INDEX."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
from PIL import Image

from camlens.cli import main

open_clip = pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("images") / "img.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (80, 90, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_open_clip_prompts_end_to_end(tmp_path, image_file, capsys) -> None:
    out = tmp_path / "out"
    argv = [
        "explain", image_file, "--model", "open_clip:ViT-S-32", "--prompt", "a dog",
        "--prompt", "a cat", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "open_clip:ViT-S-32 has random weights (pass --weights PATH)" in captured.err
    assert "cosine similarity" in captured.out and "'a dog'" in captured.out
    files = sorted(p.name for p in out.iterdir())
    assert files == ["img_gradcam_top1_a_dog.png", "img_gradcam_top2_a_cat.png", "raw_maps.npz"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "open_clip:ViT-B-33"], "unknown open_clip model 'ViT-B-33'. Did you mean"),
        (["--model", "open_clip:ViT-S-32", "--weights", "DEFAULT"], "camlens stays offline"),
        (["--model", "open_clip:ViT-S-32"], "image-text model: say what to look for with --prompt"),
        (["--model", "resnet18", "--target", "output:x"], "output:INDEX needs a column number"),
    ],
)
def test_clip_and_output_errors_are_one_line(tmp_path, image_file, capsys, argv, message) -> None:
    with pytest.raises(SystemExit) if "output:x" in argv else nullcontext():
        code = main(["explain", image_file, "--out", str(tmp_path), *argv])
        assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]
    assert not list(tmp_path.glob("*.png"))


def test_output_target_explains_a_raw_column(tmp_path, image_file, capsys) -> None:
    out = tmp_path / "out"
    argv = ["explain", image_file, "--model", "resnet18", "--target", "output:3", "--out", str(out)]
    assert main(argv) == 0
    assert "output 3 = " in capsys.readouterr().out
    assert (out / "img_gradcam_output_3.png").exists()

"""``camlens explain --model ultralytics:CONFIG``: one overlay per box, the pickle refusal, no
detections, and ultralytics staying an optional import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from camlens.cli import main
from camlens.detection.yolo import letterbox, load_model
from tests.detection.conftest import smooth_images, threshold_for, yolo

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("camlens: error:")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x = smooth_images(1, 120, 160, seed=7)[0]
    path = tmp_path_factory.mktemp("yolo") / "scene.png"
    Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    return path


def test_explain_writes_one_overlay_per_box(tmp_path: Path, picture: Path, capsys) -> None:
    model = yolo("yolov8n.yaml")
    weights = tmp_path / "yolo.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    x = letterbox(Image.open(picture))
    assert x.shape == (3, 480, 640)  # longer side 640, both sides multiples of 32
    conf = threshold_for(model, x[None], 3)
    out = tmp_path / "out"
    args = ["explain", str(picture), "--model", "ultralytics:yolov8n.yaml", "--weights"]
    code = main([*args, str(weights), "--conf", str(conf), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    n = int(printed.split(": ")[1].split()[0])
    assert n >= 1 and f"wrote {n} overlay(s)" in printed
    files = sorted(out.glob("scene_gradcam_box*.png"))
    assert len(files) == n and (out / "raw_maps.npz").is_file()
    assert Image.open(files[0]).size == (640, 480)


def test_no_detection_is_one_line_and_writes_nothing(tmp_path: Path, picture: Path, capsys):
    out = tmp_path / "out"
    # Ultralytics' own initialisation: every class score is about 1e-4 < 0.25
    args = ["explain", str(picture), "--model", "ultralytics:yolov8n.yaml", "--out", str(out)]
    assert main(args) == 1
    line = _one_error_line(capsys)
    assert "detected nothing" in line and "--conf" in line and "nothing was written" in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("model", "extra", "expected"),
    [
        ("ultralytics:yolov8n.pt", [], "--trust-pickle"),
        ("ultralytics:missing.pt", ["--trust-pickle"], "no such file"),
        ("ultralytics:yolov99n.yaml", [], "no such config"),
        ("ultralytics:https://x/y.pt", [], "never downloads"),
        ("ultralytics:yolov8n-cls.yaml", [], "classify"),
        ("ultralytics:model.onnx", [], "a .yaml config"),
    ],
)
def test_bad_models_are_one_line(tmp_path: Path, picture: Path, capsys, model, extra, expected):
    args = ["explain", str(picture), "--model", model, *extra, "--out", str(tmp_path / "o")]
    assert main(args) == 2
    assert expected in _one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_trusted_checkpoint_loads(tmp_path: Path) -> None:
    model = load_model("yolov8n.yaml")
    path = tmp_path / "mine.pt"
    torch.save({"model": model}, path)
    with pytest.raises(Exception, match="trust-pickle"):
        load_model(str(path))
    loaded = load_model(str(path), trust_pickle=True)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], model(x)[0])


def test_missing_extra_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from camlens.models import MissingExtraError

    monkeypatch.setitem(sys.modules, "ultralytics", None)  # import raises ImportError
    with pytest.raises(MissingExtraError, match=r"camlens\[yolo\]"):
        load_model("yolov8n.yaml")


def test_import_camlens_does_not_import_ultralytics() -> None:
    code = (
        f"import sys; sys.path.insert(0, {SRC!r}); import camlens, camlens.cli, camlens.models, "
        "camlens.detection.yolo, camlens.detection.mixed; "
        "bad = [m for m in sys.modules if m.split('.')[0] == 'ultralytics']; "
        "print(bad[:3]); sys.exit(1 if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr

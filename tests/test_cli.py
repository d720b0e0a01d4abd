"""The command line: demo, explain, methods, help and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torchvision
from PIL import Image
from safetensors.torch import save_file

from camlens.cli import main
from camlens.demo import load_model, shapes


@pytest.fixture(scope="module")
def shape_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    x, y, _ = shapes(2, seed=31)
    paths = []
    for i in range(2):
        arr = (x[i].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        path = folder / f"shape{i}.png"
        Image.fromarray(arr).save(path)
        paths.append(str(path))
    (folder / "notes.txt").write_text("not an image")
    return paths, str(folder / "notes.txt"), y


def test_demo_writes_grid_report_and_summary(tmp_path, capsys) -> None:
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "report.html" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["accuracy"] >= 0.97
    assert set(summary["methods"]) == {"cam", "gradcam", "gradcampp", "layercam"}
    for row in summary["methods"].values():
        for key in ("pointing_game", "energy_pointing_game", "iou"):
            assert 0.0 <= row[key] <= 1.0
        assert row["pointing_game"] > 0.8  # a trained model's maps point at the object
    assert summary["images"] >= 200
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "pointing game" in html
    with Image.open(tmp_path / "grid.png") as img:
        assert img.size[0] > 500


def test_explain_demo_model_with_bad_files_in_the_batch(tmp_path, shape_files, capsys) -> None:
    paths, text_file, _labels = shape_files
    missing = str(tmp_path / "missing.png")
    argv = ["explain", paths[0], text_file, missing, paths[1], "--model", "demo"]
    code = main([*argv, "--method", "gradcam", "layercam", "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 1  # some inputs failed, the others were processed
    errors = [line for line in captured.err.splitlines() if line.startswith("camlens: error")]
    assert len(errors) == 2 and "notes.txt" in errors[0] and "missing.png" in errors[1]
    assert "Traceback" not in captured.err
    files = sorted(p.name for p in (tmp_path / "o").glob("*.png"))
    assert len(files) == 4
    assert any(f.startswith("shape0_gradcam_") for f in files)
    assert (tmp_path / "o" / "raw_maps.npz").is_file()
    assert "shape0.png:" in captured.out  # the top classes are printed


def test_explain_topk_target_and_weights_path(tmp_path, shape_files, capsys) -> None:
    paths, _, _ = shape_files
    out = tmp_path / "k"
    assert main(["explain", paths[0], "--model", "demo", "--topk", "2", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert len(names) == 2 and "_top1_" in names[0] and "_top2_" in names[1]
    weights = tmp_path / "demo.safetensors"
    save_file(load_model().state_dict(), str(weights))
    argv = ["explain", paths[0], "--model", "demo", "--weights", str(weights), "--target", "3"]
    assert main([*argv, "--out", str(tmp_path / "t")]) == 0
    assert [p.name for p in (tmp_path / "t").glob("*.png")] == ["shape0_gradcam_star.png"]
    assert main(["explain", paths[0], "--model", "demo", "--target", "99"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_explain_torchvision_model_random_weights(
    tmp_path, shape_files, capsys, monkeypatch
) -> None:
    import numpy as np
    import torch

    import camlens
    import camlens.models
    from camlens.io import load_image

    built = []
    real = camlens.models.build_model

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(camlens.models, "build_model", spy)
    paths, _, _ = shape_files
    argv = ["explain", paths[0], "--model", "resnet18", "--method", "cam", "gradcampp"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "random weights" in captured.err
    # The printed top 5: ImageNet class names (torchvision's weight metadata, offline) and the
    # model's own probabilities, recomputed here from the model the command built.
    spec = built[0]
    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    assert list(spec.classes) == categories
    x = spec.preprocess([load_image(Path(paths[0]))])
    with torch.no_grad():
        probs = spec.model(x).softmax(1)[0]
    top = probs.topk(5)
    ranked = ", ".join(
        f"{categories[c]} {p:.3f}"
        for p, c in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    )
    assert f"{paths[0]}: {ranked}" in captured.out.splitlines()
    # One overlay per method, named after the top class; the raw maps are the methods' own.
    cls = categories[int(top.indices[0])].replace(" ", "_").replace("/", "_")
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == sorted(f"shape0_{m}_{cls}.png" for m in ("cam", "gradcampp"))
    raw = np.load(tmp_path / "raw_maps.npz")
    for method in ("cam", "gradcampp"):
        ex = camlens.explain(spec.model, x, method, layer="layer4", target=int(top.indices[0]))
        assert raw[method].shape == (1, 7, 7)
        assert np.allclose(raw[method], ex.raw["layer4"].numpy(), rtol=1e-4, atol=1e-6)


def test_cam_on_vgg_is_one_line_and_other_methods_still_run(tmp_path, shape_files, capsys):
    paths, _, _ = shape_files
    argv = ["explain", paths[0], "--model", "vgg11", "--method", "cam", "gradcam"]
    assert main([*argv, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "cam: CAM needs" in err and "Traceback" not in err
    assert len(list(tmp_path.glob("*_gradcam_*.png"))) == 1


def test_default_weights_offline_is_a_clear_error(monkeypatch, shape_files, capsys) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", offline)
    paths, _, _ = shape_files
    assert main(["explain", paths[0], "--model", "resnet18", "--weights", "DEFAULT"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not download" in err[0] and "--weights PATH" in err[0]


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["explain", "x.png", "--model", "resnet5"], "unknown model 'resnet5'. Did you mean"),
        (["explain", "x.png", "--model", "demo", "--method", "gradcan"], "unknown method"),
        (["explain", "x.png", "--model", "demo", "--weights", "/no/such.pth"], "no such weights"),
        (["evaluate", "--data", "shapes:x"], "expected shapes:N"),
        (["evaluate", "--data", "/no/such/folder"], "no such folder"),
        (["evaluate", "--methods", "gradcan"], "unknown method"),
        (["evaluate", "--road", "20,abc"], "comma-separated percentages"),
        (["evaluate", "--box-threshold", "1.5"], "must be in (0, 1]"),
        (["evaluate", "--sensitivity-samples", "-1"], "must be 0 (skip) or more"),
        (["evaluate", "--model", "resnet18", "--data", "shapes:4"], "pass --data FOLDER"),
    ],
)
def test_bad_arguments_are_one_line(argv, match, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]


def test_usage_errors_exit_2_with_one_line(capsys) -> None:
    for argv in (["explain", "--model", "demo"], ["nope"], ["explain", "a.png"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error:" in err[0] and "--help" in err[0]


@pytest.mark.parametrize(
    "argv", [[], ["demo"], ["demo", "train"], ["explain"], ["evaluate"], ["methods"]]
)
def test_help_on_every_command(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: camlens" in out and len(out.splitlines()) > 4


def test_console_script_methods() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "camlens.cli", "methods"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "gradcampp" in result.stdout and "arXiv:1710.11063" in result.stdout


def test_evaluate_writes_table_json_and_plots(tmp_path, capsys) -> None:
    argv = ["evaluate", "--methods", "gradcam", "eigencam", "--data", "shapes:6", "--steps", "4"]
    argv += ["--road", "50", "--sanity-images", "3", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| `gradcam` |" in out and "| `eigencam` |" in out and "deletion" in out
    for name in ("table.md", "table.csv", "results.json", "curves.png", "bar_deletion_auc.png"):
        assert (tmp_path / name).is_file(), name
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["images"] == 6 and set(results["methods"]) == {"gradcam", "eigencam"}
    assert results["methods"]["eigencam"]["random_logit_passed"] is False
    assert (tmp_path / "table.csv").read_text().startswith("method,ms_per_image,pointing_game")


def test_evaluate_a_folder_with_some_masks(tmp_path, shape_files, capsys) -> None:
    paths, _, _ = shape_files
    folder = tmp_path / "data"
    (folder / "masks").mkdir(parents=True)
    for p in paths:
        Image.open(p).save(folder / Path(p).name)
    _, _, masks = shapes(2, seed=31)
    Image.fromarray(masks[0].numpy().astype("uint8") * 255).save(folder / "masks" / "shape0.png")
    argv = ["evaluate", "--data", str(folder), "--methods", "layercam", "--steps", "3"]
    argv += ["--road", "30", "--sanity-images", "2", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "2 images, 1 with masks" in results["data"]
    # One mask: the pointing game is 0 or 1; recompute which, and IoU, from the same data.
    import camlens
    from camlens.evaluate import folder_data
    from camlens.metrics import iou, pointing_game
    from camlens.models import build_model

    spec = build_model("demo")
    data = folder_data(folder, spec.size, spec.resize, spec.preset, mean=spec.mean, std=spec.std)
    ex = camlens.explain(spec.model, data.images, "layercam")  # the predicted classes
    m, masks = ex.maps[data.has_mask], data.masks[data.has_mask]
    row = results["methods"]["layercam"]
    assert row["pointing_game"] == pytest.approx(float(pointing_game(m, masks).mean()))
    assert row["iou"] == pytest.approx(float(iou(m, masks).mean()), abs=1e-6)


def test_evaluate_several_layers_separated_by_commas(tmp_path, capsys) -> None:
    """refinecam multiplies several layers: --layer takes them comma-separated."""
    argv = ["evaluate", "--methods", "refinecam", "--layer", "features.3,features", "--data"]
    argv += ["shapes:4", "--steps", "2", "--road", "50", "--sanity-images", "2"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["methods"]) == {"refinecam"} and not results["errors"]

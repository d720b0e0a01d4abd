"""The evaluation runner: every method, every metric, nothing lost when a method fails."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from camlens.demo import load_model
from camlens.evaluate import EvalData, evaluate, markdown_table, shapes_data, write_outputs
from tests.conftest import hook_count


@pytest.fixture(scope="module")
def small() -> EvalData:
    return shapes_data(6, instances=2)


def _run(model, data, methods, **kw):
    kw = {"steps": 4, "road_percentages": (50,), "sanity_images": 3, "sensitivity_samples": 2, **kw}
    return evaluate(model, data, methods, "features", **kw)


def test_every_metric_for_every_method(small) -> None:
    import time

    start = time.perf_counter()
    results = _run(load_model(), small, ["gradcam", "cam"])
    wall = time.perf_counter() - start
    assert results["accuracy"] is not None and results["images"] == 6
    # The run's time is measured around the whole run, each method's explanation inside it.
    explaining = sum(r["ms_per_image"] * 6 / 1e3 for r in results["methods"].values())
    assert 0 < explaining < results["seconds"] <= wall
    expected = {
        "ms_per_image", "pointing_game", "energy_pointing_game", "iou", "box_localisation",
        "average_drop", "increase_in_confidence", "win", "deletion_auc", "insertion_auc",
        "road_morf", "road_lerf", "mprt_spearman", "mprt_ssim", "mprt_passed",
        "random_logit_spearman", "random_logit_passed", "complexity", "sparseness",
        "coherency", "adcc", "max_sensitivity",
    }  # fmt: skip
    for row in results["methods"].values():
        assert expected <= set(row)
    # CAM and Grad-CAM give the same maps on this GAP + linear model: the same scores, tied wins
    a, b = results["methods"]["gradcam"], results["methods"]["cam"]
    assert a["deletion_auc"] == pytest.approx(b["deletion_auc"], abs=1e-5)
    assert a["win"] + b["win"] == pytest.approx(100.0)
    for key in ("coherency", "adcc", "sparseness"):
        assert 0 < a[key] <= 1 and a[key] == pytest.approx(b[key], abs=1e-5)
    assert a["complexity"] == pytest.approx(b["complexity"], abs=1e-4)
    assert a["max_sensitivity"] > 0
    curves = results["curves"]["gradcam"]
    assert len(curves["fractions"]) == len(curves["deletion"]) == 5


def test_a_failing_method_is_recorded_and_the_rest_still_run(tmp_path) -> None:
    model = torchvision.models.vgg11(weights=None).eval()
    data = EvalData(torch.randn(2, 3, 64, 64), None, None, None, "random")
    results = evaluate(model, data, ["cam", "gradcam"], "features.18", steps=2,
                       road_percentages=(50,), sanity_images=2, sensitivity_samples=2,
                       out=tmp_path)  # fmt: skip
    assert "cam" in results["errors"] and "gradcam" in results["methods"]
    assert "pointing_game" not in results["methods"]["gradcam"]  # no masks: no localisation
    assert "failed" in markdown_table(results)
    assert hook_count(model) == 0 and not model.training


def test_finished_methods_survive_an_interruption(tmp_path, small) -> None:
    def stop_after_first(method, results):
        if method == "gradcam":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(load_model(), small, ["layercam", "gradcam", "eigencam"], out=tmp_path,
             on_method=stop_after_first)  # fmt: skip
    saved = json.loads((tmp_path / "results.json").read_text())
    assert list(saved["methods"]) == ["layercam"]  # written before the interruption
    assert not list(tmp_path.glob("*.tmp"))


def test_outputs_and_the_model_is_left_as_it_came(tmp_path, small) -> None:
    model = load_model().train()
    results = _run(model, small, ["gradcam"])
    assert model.training and all(m.training for m in model.modules())
    files = {p.name for p in write_outputs(results, tmp_path)}
    assert {"table.md", "table.csv", "results.json", "curves.png", "bar_iou.png"} <= files
    table = (tmp_path / "table.md").read_text()
    assert table.startswith("| method |") and "`gradcam`" in table and "↓" in table
    assert "| ADCC ↑ |" in table and "| entropy ↓ |" in table and "| max sens ↓ |" in table

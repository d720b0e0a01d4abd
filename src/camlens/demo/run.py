"""``camlens demo``: explain the shipped model on the shapes benchmark and measure localisation."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

import camlens
from camlens.demo.model import load_model
from camlens.demo.shapes import CLASSES, shapes
from camlens.demo.train import accuracy
from camlens.metrics import energy_pointing_game, iou, pointing_game
from camlens.report import write_report
from camlens.viz import grid, save_raw

DEMO_METHODS = ("cam", "gradcam", "gradcampp", "layercam")


def _scores(maps: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    return {
        "pointing_game": float(pointing_game(maps, masks).mean()),
        "energy_pointing_game": float(energy_pointing_game(maps, masks).mean()),
        "iou": float(iou(maps, masks).mean()),
    }


def run_demo(
    out: str | Path,
    n_single: int = 160,
    n_double: int = 80,
    seed: int = 2026,
    methods: tuple[str, ...] = DEMO_METHODS,
    rows: int = 4,
) -> dict[str, Any]:
    """Explain ``n_single`` one-object and ``n_double`` two-object images with every method.

    Each image is explained for its true class at the model's ``features`` layer. Writes
    ``grid.png`` (``rows`` images of each kind), ``report.html``, ``summary.json`` and the raw
    maps ``raw_maps.npz`` into ``out``; returns the summary.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model()
    test_x, test_y, _ = shapes(1000, seed=12345)
    test_acc = accuracy(model, test_x, test_y)
    x1, y1, m1 = shapes(n_single, seed=seed)
    x2, y2, m2 = shapes(n_double, seed=seed, instances=2)
    images, labels, masks = torch.cat([x1, x2]), torch.cat([y1, y2]), torch.cat([m1, m2])
    single = torch.arange(len(images)) < n_single
    results: dict[str, Any] = {}
    maps: dict[str, torch.Tensor] = {}
    raw: dict[str, torch.Tensor] = {}
    probs = None
    for method in methods:
        start = time.perf_counter()
        ex = camlens.explain(model, images, method=method, layer="features", target=labels)
        elapsed = time.perf_counter() - start
        maps[method], raw[method] = ex.maps, ex.raw["features"]
        if probs is None and ex.logits is not None:
            probs = ex.logits.softmax(1)
        results[method] = {
            **_scores(ex.maps, masks),
            "single": _scores(ex.maps[single], masks[single]),
            "double": _scores(ex.maps[~single], masks[~single]),
            "ms_per_image": 1e3 * elapsed / len(images),
        }
    assert probs is not None
    explained_acc = float((probs.argmax(1) == labels).float().mean())
    pick = torch.cat([torch.arange(rows), n_single + torch.arange(min(rows, n_double))])
    titles = [
        [f"{CLASSES[int(labels[i])]} p={float(probs[i, labels[i]]):.2f}"] * len(methods)
        for i in pick.tolist()
    ]
    grid_path = grid(
        images[pick], {m: maps[m][pick] for m in methods}, out / "grid.png", titles, preset="none"
    )
    save_raw({**raw, "labels": labels, "masks": masks}, out / "raw_maps.npz")
    summary: dict[str, Any] = {
        "description": (
            f"The shipped shapes CNN explained at layer 'features' on {len(images)} shapes images "
            f"({n_single} with one object, {n_double} with two; seed {seed}), for the true class."
        ),
        "accuracy": test_acc,
        "accuracy_explained": explained_acc,
        "images": len(images),
        "methods": results,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    write_report(out / "report.html", summary, grid_path, title="camlens demo: shapes benchmark")
    return summary

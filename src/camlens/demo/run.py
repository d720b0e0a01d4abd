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
from camlens.errors import InputError
from camlens.metrics import energy_pointing_game, iou, pointing_game
from camlens.report import write_report
from camlens.viz import grid, save_raw

DEMO_METHODS = ("cam", "gradcam", "gradcampp", "layercam")
#: the ViT has no GAP + linear head, so CAM does not apply to it; ``gae`` reads its attention
VIT_METHODS = ("gradcam", "gradcampp", "layercam", "gae")
#: demo model -> (default methods, layer explained: None lets the engine choose)
DEMO_MODELS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "cnn": (DEMO_METHODS, "features"),
    "vit": (VIT_METHODS, None),
}


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
    methods: tuple[str, ...] | None = None,
    rows: int = 4,
    model: str = "cnn",
) -> dict[str, Any]:
    """Explain ``n_single`` one-object and ``n_double`` two-object images with every method.

    ``model``: ``"cnn"`` (the shipped CNN, explained at ``features``; methods default to
    :data:`DEMO_METHODS`) or ``"vit"`` (the hybrid ViT, explained at the layer the engine picks
    for a transformer, the last block's input norm; methods default to :data:`VIT_METHODS`).
    Each image is explained for its true class. Writes ``grid.png`` (``rows`` images of each
    kind), ``report.html``, ``summary.json`` and the raw maps ``raw_maps.npz`` into ``out``;
    returns the summary.
    """
    if model not in DEMO_MODELS:
        raise InputError(f"unknown demo model {model!r}: use one of {', '.join(DEMO_MODELS)}")
    default_methods, layer = DEMO_MODELS[model]
    methods = default_methods if methods is None else tuple(methods)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    net = load_model(model)
    test_x, test_y, _ = shapes(1000, seed=12345)
    test_acc = accuracy(net, test_x, test_y)
    x1, y1, m1 = shapes(n_single, seed=seed)
    x2, y2, m2 = shapes(n_double, seed=seed, instances=2)
    images, labels, masks = torch.cat([x1, x2]), torch.cat([y1, y2]), torch.cat([m1, m2])
    single = torch.arange(len(images)) < n_single
    results: dict[str, Any] = {}
    maps: dict[str, torch.Tensor] = {}
    raw: dict[str, torch.Tensor] = {}
    probs = None
    used: list[str] = []
    for method in methods:
        start = time.perf_counter()
        ex = camlens.explain(net, images, method=method, layer=layer, target=labels)
        elapsed = time.perf_counter() - start
        maps[method], raw[method] = ex.maps, next(iter(ex.raw.values()))
        used = used or list(ex.layers)
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
    where = ", ".join(repr(name) for name in used)
    summary: dict[str, Any] = {
        "description": (
            f"The shipped shapes {model.upper()} explained at layer {where} on {len(images)} "
            f"shapes images ({n_single} with one object, {n_double} with two; seed {seed}), "
            "for the true class."
        ),
        "model": model,
        "layers": used,
        "accuracy": test_acc,
        "accuracy_explained": explained_acc,
        "images": len(images),
        "methods": results,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    title = "camlens demo: shapes benchmark" + (" (ViT)" if model == "vit" else "")
    write_report(out / "report.html", summary, grid_path, title=title)
    return summary

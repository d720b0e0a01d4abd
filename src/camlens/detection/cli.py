"""``camlens explain IMAGE --model ultralytics:CONFIG``: one overlay per detected box.

Each image is letterboxed as Ultralytics' predictor does it (images of different sizes go
through :mod:`camlens.detection.mixed`), every box with a class score >= ``--conf`` is
explained in one batched gradient per image size, and each box's map is written over its image
with the box drawn. No detection in any image: one line, nothing written.
"""

from __future__ import annotations

import sys
import warnings
from argparse import Namespace
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from camlens.models import ModelSpec


def _fail(message: str) -> None:
    print(f"camlens: error: {message}", file=sys.stderr)


def explain_detector(
    args: Namespace,
    spec: ModelSpec,
    images: list[Image.Image],
    stems: list[str],
    paths: list[Path],
    device: torch.device,
) -> int:
    """Explain every box of ``images`` with each of ``args.method``; returns the exit code."""
    import camlens
    from camlens.detection.yolo import letterbox
    from camlens.errors import CamlensError
    from camlens.viz import overlay, save_raw

    model = spec.model.to(device)
    x = [letterbox(im, spec.size).to(device) for im in images]
    conf = float(args.conf)
    target = camlens.targets.detections(score_threshold=conf)
    results: dict[str, Any] = {}
    failed = 0
    for method in args.method:
        try:
            with warnings.catch_warnings():  # "no detection" is reported below, in one line
                warnings.simplefilter("ignore", UserWarning)
                results[method] = camlens.Explainer(model, method, args.layer)(x, target)
        except CamlensError as exc:
            _fail(f"{method}: {exc}")
            failed += 1
    if not results:
        _fail("no method could explain these images; nothing was written")
        return 1
    first = next(iter(results.values()))
    found = first.targets >= 0
    if not bool(found.any()):
        _fail(
            f"{spec.name} detected nothing with a class score >= {conf} in "
            f"{len(images)} image(s); lower --conf (scores are in [0, 1]); nothing was written"
        )
        return 1
    names = spec.classes

    def label(c: int) -> str:
        return names[c] if 0 <= c < len(names) else f"class {c}"

    for i, path in enumerate(paths):
        n = int(found[i].sum())
        boxes = ", ".join(
            f"{label(int(c))} {float(s):.3f}"
            for c, s in zip(
                first.targets[i, :n].tolist(), first.scores[i, :n].tolist(), strict=True
            )
        )
        print(f"{path}: {n} box(es){': ' + boxes if n else ''}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw: dict[str, Tensor] = {}
    written = 0
    for method, ex in results.items():
        for i, stem in enumerate(stems):
            maps = ex.maps[i]
            for t in range(int(found[i].sum())):
                cls = label(int(ex.targets[i, t])).replace(" ", "_").replace("/", "_")
                picture = overlay(x[i], maps[t], args.colormap, args.alpha, "none")
                ImageDraw.Draw(picture).rectangle(
                    [float(v) for v in ex.extras["boxes"][i, t]], outline=(255, 255, 255), width=2
                )
                picture.save(out / f"{stem}_{method}_box{t + 1}_{cls}.png")
                written += 1
            layer_raw = next(iter(ex.raw.values()))[i]
            raw[f"{stem}_{method}"] = layer_raw
    save_raw(raw, out / "raw_maps.npz")
    print(f"wrote {written} overlay(s) and raw_maps.npz to {out}")
    return 1 if failed else 0

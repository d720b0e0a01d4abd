"""Localisation of LeGrad, RefineCAM and the wrapper options on the demo ViT (not a package file).

``camlens evaluate`` takes method names; this script measures the method + option combinations
of the transformer work (pointing game, energy pointing game, IoU, ms per image) on the held-out
shapes images that ``camlens evaluate --model demo-vit --data shapes:N`` uses, explained for
their true class. Usage: ``python benchmarks/eval_vit_options.py [N]`` (default 200).
"""

from __future__ import annotations

import sys
import time

import torch

import camlens
from camlens.demo import load_model
from camlens.evaluate import shapes_data
from camlens.metrics import energy_pointing_game, iou, pointing_game

AUTO = "blocks.1.norm1"
RUNS: list[tuple[str, str, object, dict]] = [  # label, method, layer, options
    ("legrad", "legrad", None, {}),
    ("legrad pool=mean", "legrad", None, {"pool": "mean"}),
    ("legrad last block", "legrad", ["blocks.1"], {}),
    ("legrad aug_smooth", "legrad", None, {"aug_smooth": True}),
    ("legrad pool=mean aug_smooth", "legrad", None, {"pool": "mean", "aug_smooth": True}),
    ("refinecam (patch_embed.proj, blocks.0/1.norm1)", "refinecam",
     ["patch_embed.proj", "blocks.0.norm1", AUTO], {}),
    ("refinecam base=layercam", "refinecam", ["patch_embed.proj", "blocks.0.norm1", AUTO],
     {"base": "layercam"}),
    ("gradcam", "gradcam", AUTO, {}),
    ("gradcam eigen_smooth", "gradcam", AUTO, {"eigen_smooth": True}),
    ("gradcam aug_smooth", "gradcam", AUTO, {"aug_smooth": True}),
    ("gradcam sess", "gradcam", AUTO, {"sess": True, "sess_chunk": 4}),
    ("layercam", "layercam", AUTO, {}),
    ("layercam eigen_smooth", "layercam", AUTO, {"eigen_smooth": True}),
    ("layercam aug_smooth", "layercam", AUTO, {"aug_smooth": True}),
    ("layercam sess", "layercam", AUTO, {"sess": True, "sess_chunk": 4}),
    ("hirescam aug_smooth", "hirescam", AUTO, {"aug_smooth": True}),
    ("gradcampp eigen_smooth", "gradcampp", AUTO, {"eigen_smooth": True}),
]  # fmt: skip


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    only = sys.argv[2:]
    torch.manual_seed(0)
    data = shapes_data(n)
    model = load_model("vit")
    print(f"demo ViT, {data.description}, {torch.get_num_threads()} threads")
    print("| method | ms/img | pointing | energy | IoU |")
    print("|---|---:|---:|---:|---:|")
    for label, method, layer, options in RUNS:
        if only and not any(o in label for o in only):
            continue
        explainer = camlens.Explainer(model, method, layer, **options)
        start = time.perf_counter()
        maps = torch.cat(
            [
                explainer(data.images[i : i + 50], data.targets[i : i + 50]).maps
                for i in range(0, n, 50)
            ]
        )
        ms = 1e3 * (time.perf_counter() - start) / n
        row = [
            float(pointing_game(maps, data.masks).float().mean()),
            float(energy_pointing_game(maps, data.masks).mean()),
            float(iou(maps, data.masks).mean()),
        ]
        print(f"| {label} | {ms:.1f} | " + " | ".join(f"{v:.3f}" for v in row) + " |", flush=True)


if __name__ == "__main__":
    main()

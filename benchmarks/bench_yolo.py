"""YOLOv8n at 640 px: every box of an image explained in one batched gradient, as a ratio to one
forward.

    python benchmarks/bench_yolo.py [--device cpu|cuda] [--runs 5] [--boxes 20] [--p3]
                                    [--write BENCHMARKS.md]

YOLOv8n built offline from its yaml (random weights, scaled so that boxes and scores vary, as in
the tests), one smooth random 640 x 640 image, ``--boxes`` detections (the score threshold is
set half-way between the scores of the boxes'th and the next candidate). Contenders: one no-grad
forward; camlens Grad-CAM of every box with ``layer=None`` (each box at its own scale, its
gradient from the class branch re-run on the box's 5 x 5 window; "backward rows" is what the
grouped fallback path would need); of the top box alone; and with ``--p3`` every box at the
single P3 layer (one backward of the network above P3 per box, for comparison). CPU runs use 2
threads. Needs ``pip install camlens[yolo]``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

import torch

import camlens
from _harness import machine, run_round_robin, write_section
from camlens.detection.scales import _groups, radius
from camlens.detection.yolo import load_model, non_max_suppression
from camlens.testing.yolo import randomise


def image(size: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.rand(1, 3, size, size, generator=g), 9, 1, 4)
    return ((x - x.mean()) / x.std() * 0.25 + 0.5).clamp(0, 1).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--boxes", type=int, default=20)
    parser.add_argument("--p3", action="store_true", help="also every box at the P3 layer")
    parser.add_argument("--write", help="Markdown file whose benchmark section is replaced")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(2)
    torch.manual_seed(0)
    model = load_model("yolov8n.yaml")
    randomise(model)
    model = model.to(args.device)
    x = image(args.size, args.device)
    with torch.no_grad():
        y = model(x)[0]
    head = model.model[-1]
    best = y[0, 4:].amax(0).sort(descending=True).values
    threshold = 0.0
    for n in range(args.boxes, len(best) - 1):  # enough candidates for --boxes after NMS
        threshold = float(best[n] + best[n + 1]) / 2
        if len(non_max_suppression(y, head.nc, threshold, 0.7)[0][0]) >= args.boxes:
            break
    every = camlens.targets.detections(score_threshold=threshold, max_det=args.boxes)
    one = camlens.targets.detections(score_threshold=threshold, max_det=1)
    ex = camlens.Explainer(model, "gradcam")(x, every)
    levels, anchors = ex.extras["levels"][0], ex.extras["anchors"][0]
    sizes = [(x.shape[2] // int(s), x.shape[3] // int(s)) for s in head.stride]
    starts = torch.tensor([0, *[h * w for h, w in sizes]]).cumsum(0)[:-1]
    local = anchors.cpu() - starts[levels.cpu()]
    widths = torch.tensor([w for _, w in sizes])[levels.cpu()]
    cells = torch.stack([local // widths, local % widths], dim=1)
    groups = _groups(
        torch.zeros_like(levels.cpu()), levels.cpu(), cells, [radius(b) for b in head.cv3]
    )
    n_boxes = len(levels)  # backward rows: the groups of each scale
    n_groups = sum(len(groups[levels.cpu() == lev].unique()) for lev in range(len(head.f)))
    per_scale = camlens.Explainer(model, "gradcam")
    single = camlens.Explainer(model, "gradcam")
    p3 = camlens.Explainer(model, "gradcam", f"model.{head.f[0]}")

    def forward() -> None:
        with torch.no_grad():
            model(x)

    contenders: dict[str, Callable[[], object]] = {
        "no-grad forward": forward,
        f"camlens gradcam, every box ({n_boxes} boxes, {n_groups} backward rows)": lambda: (
            per_scale(x, every)
        ),
        "camlens gradcam, the top box": lambda: single(x, one),
    }
    if args.p3:
        contenders[f"camlens gradcam at P3 `model.{head.f[0]}`, every box"] = lambda: p3(x, every)
    results = run_round_robin(contenders, args.runs, 0, args.device)
    base = results["no-grad forward"].median
    lines = [
        f"YOLOv8n (yaml, random weights), 1 image at {args.size}x{args.size}, {args.device}; "
        f"{machine(args.device)}; {datetime.date.today()}; median of {args.runs} round-robin "
        "runs in one process.",
        "",
        "| contender | time (ms) | time / forward |",
        "|---|---:|---:|",
    ]
    for res in results.values():
        if res.error:
            lines.append(f"| {res.name} | failed: {res.error} | |")
            continue
        lines.append(f"| {res.name} | {res.median * 1e3:.1f} | {res.median / base:.2f}x |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(args.write, f"bench:yolo:{args.device.split(':')[0]}", text)


if __name__ == "__main__":
    main()

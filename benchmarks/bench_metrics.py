"""Metric throughput: perturbed images scored per second, side by side with pytorch-grad-cam.

    python benchmarks/bench_metrics.py [--device cpu|cuda] [--write BENCHMARKS.md]

Two models: torchvision resnet18 (weights=None, seed 0) on 16 random images at 224 x 224, and
the demo CNN on 64 shapes images at 96 x 96; Grad-CAM maps of each image's top class. Each
metric's figure is images per second: the perturbed images it builds and scores (Deletion with
20 steps: 21 per image; ROAD at one percentage, MoRF: 1 per image; Average Drop: 1 per image),
divided by the wall time of the whole call (building, imputing and scoring). camlens runs
batches of 64 perturbed images; pytorch-grad-cam's ROAD (an exact sparse LU per image, scipy)
and its confidence-change metric run on the same inputs. Median of ``--runs`` calls.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
import camlens
from _harness import machine, timed, write_section
from camlens.demo import load_model, shapes
from camlens.metrics import average_drop, deletion, road


def peers(model: torch.nn.Module, x: torch.Tensor, maps: torch.Tensor, ids: torch.Tensor):
    """pytorch-grad-cam's ROAD (MoRF at 50%) and confidence change, when installed."""
    if importlib.util.find_spec("pytorch_grad_cam") is None:
        return {}
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
    from pytorch_grad_cam.metrics.road import ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    cams = maps.cpu().numpy()
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in ids]
    road_metric = ROADMostRelevantFirst(percentile=50)
    conf = CamMultImageConfidenceChange()
    return {
        "ROAD MoRF 50%": lambda: road_metric(x, cams, targets, model),
        "Average Drop": lambda: conf(x, cams, targets, model),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--write")
    args = parser.parse_args()
    dev = args.device
    if dev == "cpu":
        torch.set_num_threads(2)
    torch.manual_seed(0)
    cases = []
    resnet = torchvision.models.resnet18(weights=None).eval().to(dev)
    cases.append(("resnet18, 16 x 224", resnet, torch.randn(16, 3, 224, 224, device=dev), None))
    demo_x, _, _ = shapes(64, seed=5)
    cases.append(("demo CNN, 64 x 96", load_model().to(dev), demo_x.to(dev), "features"))
    rows = []
    for label, model, x, layer in cases:
        ex = camlens.explain(model, x, "gradcam", layer)
        maps, ids = ex.maps, ex.targets
        n = len(x)
        h, w = x.shape[-2:]
        step = -(-h * w // 20)
        ours = {
            "Deletion, 20 steps": (
                lambda m=model, x=x, maps=maps, ids=ids, s=step: deletion(m, x, maps, ids, step=s),
                21 * n,
            ),
            "ROAD MoRF 50%": (
                lambda m=model, x=x, maps=maps, ids=ids: road(m, x, maps, ids, percentages=[50]),
                2 * n,  # camlens always scores MoRF and LeRF together
            ),
            "Average Drop": (
                lambda m=model, x=x, maps=maps, ids=ids: average_drop(m, x, maps, ids),
                n,
            ),
        }
        theirs = {} if args.skip_peers else peers(model, x, maps, ids)
        for metric, (fn, images) in ours.items():
            fn()
            t = timed(fn, args.runs, dev)
            peer = ""
            ratio = ""
            if metric in theirs:
                theirs[metric]()
                tp = timed(theirs[metric], max(1, args.runs // 2), dev)
                peer_images = n
                peer = f"{peer_images / tp:.1f}"
                ratio = f"{(images / t) / (peer_images / tp):.1f}x"
            rows.append((label, metric, f"{images / t:.1f}", peer, ratio))
            print(rows[-1], flush=True)
    table = [
        f"Measured {datetime.date.today()} on {machine(dev)}, device {dev}.",
        "",
        "| model, images | metric | camlens images/s | pytorch-grad-cam images/s "
        "| camlens faster |",
        "|---|---|---|---|---|",
    ]
    table += [f"| {a} | {b} | {c} | {d or '-'} | {e or '-'} |" for a, b, c, d, e in rows]
    print("\n".join(table))
    if args.write:
        write_section(args.write, f"bench:metrics:{dev.split(':')[0]}", "\n".join(table))


if __name__ == "__main__":
    main()

"""Gradient CAMs side by side with the peers: time and peak memory as ratios to a no-grad forward.

    python benchmarks/bench_gradient.py [--device cpu|cuda] [--runs 7] [--write BENCHMARKS.md]

torchvision resnet50 (weights=None, seed 0), batch 8 at 224x224, layer4, fixed classes (each
image's top class), in one process and one run. CPU runs use 2 threads. The peers (pip packages
grad-cam, torchcam, captum: the ``bench`` extra) are skipped where they are not installed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import json
import subprocess

import torch
import torchvision

import camlens
from _harness import (
    in_memory_child,
    machine,
    memory_child_env,
    run_round_robin,
    write_section,
)


def contenders(model, x, classes, device) -> dict[str, Callable[[], object]]:
    out: dict[str, Callable[[], object]] = {}

    def forward() -> None:
        with torch.no_grad():
            model(x)

    out["no-grad forward"] = forward
    for method in (
        "gradcam",
        "gradcampp",
        "layercam",
        "hirescam",
        "xgradcam",
        "gradcam_elementwise",
        "finercam",
        "cam",
    ):
        explainer = camlens.Explainer(model, method, "layer4")
        out[f"camlens {method}"] = lambda e=explainer: e(x, classes)
    if importlib.util.find_spec("pytorch_grad_cam"):
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        targets = [ClassifierOutputTarget(int(c)) for c in classes]
        for name, cls in (("gradcam", pgc.GradCAM), ("gradcampp", pgc.GradCAMPlusPlus)):
            extractor = cls(model=model, target_layers=[model.layer4])
            out[f"pytorch-grad-cam {name}"] = lambda e=extractor: e(input_tensor=x, targets=targets)
        extractor = pgc.LayerCAM(model=model, target_layers=[model.layer4])
        out["pytorch-grad-cam layercam"] = lambda e=extractor: e(input_tensor=x, targets=targets)
    if importlib.util.find_spec("torchcam"):
        from torchcam import methods as tcm

        ids = classes.tolist()
        for name, cls in (("gradcam", tcm.GradCAM), ("gradcampp", tcm.GradCAMpp)):
            extractor = cls(model, target_layer="layer4")

            def run(e=extractor) -> None:
                e(ids, model(x))

            out[f"torchcam {name}"] = run
        extractor = tcm.LayerCAM(model, target_layer="layer4")
        out["torchcam layercam"] = lambda e=extractor: e(ids, model(x))
    if importlib.util.find_spec("captum"):
        from captum.attr import LayerGradCam

        gc = LayerGradCam(model, model.layer4)
        out["captum gradcam"] = lambda: gc.attribute(x, target=classes)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--mem-runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--write", help="Markdown file whose benchmark section is replaced")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(2)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval().to(args.device)
    x = torch.randn(args.batch, 3, 224, 224, device=args.device)
    with torch.no_grad():
        classes = model(x).argmax(1)
    if in_memory_child():
        res = run_round_robin(
            contenders(model, x, classes, args.device), 0, args.mem_runs, args.device
        )
        print(json.dumps({n: r.mem for n, r in res.items()}))
        return
    results = run_round_robin(contenders(model, x, classes, args.device), args.runs, 0, args.device)
    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--device",
            args.device,
            "--mem-runs",
            str(args.mem_runs),
            "--batch",
            str(args.batch),
        ],
        env=memory_child_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    for name, mem in json.loads(child.stdout.strip().splitlines()[-1]).items():
        results[name].mem = mem
    base = results["no-grad forward"]
    lines = [
        f"resnet50 (weights=None), batch {args.batch} at 224x224, layer4, {args.device}; "
        f"{machine(args.device)}; {datetime.date.today()}; time: median of {args.runs} "
        f"round-robin runs in one process; memory: median of {args.mem_runs} peak-RSS-growth "
        "measurements per contender, in a child process with large blocks mmapped.",
        "",
        "| contender | time (ms) | time / forward | peak memory growth (MB) | memory / forward |",
        "|---|---:|---:|---:|---:|",
    ]
    for res in results.values():
        if res.error or not res.mem:
            lines.append(f"| {res.name} | failed: {res.error} | | | |")
            continue
        lines.append(
            f"| {res.name} | {res.median * 1e3:.1f} | {res.median / base.median:.2f}x | "
            f"{res.mem_median / 2**20:.1f} | {res.mem_median / max(base.mem_median, 1):.2f}x |"
        )
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section(args.write, f"bench:gradient:{args.device.split(':')[0]}", table)


if __name__ == "__main__":
    main()

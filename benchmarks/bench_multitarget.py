"""Several targets per image: top-5 Grad-CAM in one forward and one batched gradient.

    python benchmarks/bench_multitarget.py [--device cpu|cuda] [--runs 7] [--write BENCHMARKS.md]

torchvision resnet50 (weights=None, seed 0), batch 8 at 224x224, layer4, each image's 5 highest
classes, as a ratio to one no-grad forward of the same batch (bound: <= 1.5x). Also a ViT-B/16
(weights=None) at its automatic layer (the last block's input norm). pytorch-grad-cam needs one
full run per class: it is timed with a loop over the 5 ranks (its targets take one class per
image). CPU runs use 2 threads.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import torchvision

import camlens
from _harness import machine, run_round_robin, write_section

K = 5


def contenders(model, x, layer, device) -> dict[str, Callable[[], object]]:
    def forward() -> None:
        with torch.no_grad():
            model(x)

    explainer = camlens.Explainer(model, "gradcam", layer)
    out: dict[str, Callable[[], object]] = {
        "no-grad forward": forward,
        f"camlens gradcam top-{K}": lambda: explainer(x, camlens.targets.top(K)),
        "camlens gradcam top-1": lambda: explainer(x, None),
    }
    if importlib.util.find_spec("pytorch_grad_cam") is not None and layer == "layer4":
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        with torch.no_grad():
            ranks = model(x).topk(K, dim=1).indices.tolist()
        cam = GradCAM(model=model, target_layers=[dict(model.named_modules())[layer]])

        def peer() -> None:
            for r in range(K):
                cam(input_tensor=x, targets=[ClassifierOutputTarget(row[r]) for row in ranks])

        out[f"pytorch-grad-cam gradcam, {K} runs"] = peer
    return out


def table(name: str, model, x, layer: str, runs: int, device: str) -> list[str]:
    results = run_round_robin(contenders(model, x, layer, device), runs, 0, device)
    base = results["no-grad forward"].median
    lines = [f"**{name}**, layer `{layer}`", "", "| contender | time (ms) | time / forward |"]
    lines.append("|---|---:|---:|")
    for res in results.values():
        if res.error:
            lines.append(f"| {res.name} | failed: {res.error} | |")
            continue
        lines.append(f"| {res.name} | {res.median * 1e3:.1f} | {res.median / base:.2f}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--write", help="Markdown file whose benchmark section is replaced")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(2)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 224, 224, device=args.device)
    lines = [
        f"batch {args.batch} at 224x224, {args.device}; {machine(args.device)}; "
        f"{datetime.date.today()}; median of {args.runs} round-robin runs in one process.",
        "",
    ]
    resnet = torchvision.models.resnet50(weights=None).eval().to(args.device)
    lines += table("resnet50 (weights=None)", resnet, x, "layer4", args.runs, args.device)
    del resnet
    vit = torchvision.models.vit_b_16(weights=None).eval().to(args.device)
    torch.nn.init.normal_(vit.heads.head.weight, std=0.02)  # torchvision starts it at zero
    layer = "encoder.layers.encoder_layer_11.ln_1"
    lines += ["", *table("vit_b_16 (weights=None)", vit, x, layer, args.runs, args.device)]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(args.write, f"bench:multitarget:{args.device.split(':')[0]}", text)


if __name__ == "__main__":
    main()

"""LeGrad on ViT-B/16 beside TorchCAM's, and the wrapper options' cost on resnet50.

    python benchmarks/bench_legrad.py [--device cpu] [--runs 3] [--batch 8] [--write BENCHMARKS.md]

ViT-B/16 (torchvision, weights=None, seed 0, head re-initialised N(0, 0.02) since torchvision
starts it at zero), batch 8 at 224x224, all 12 blocks, each image's top class: camlens
``legrad`` (one forward with the blocks cut apart, ONE backward for all blocks) against
TorchCAM's ``LeGrad`` (one backward per block, retaining the graph), with a no-grad forward as
the unit. resnet50 (weights=None) at ``layer4``: Grad-CAM plain, with ``eigen_smooth`` (same
passes + a batched SVD) and ``aug_smooth`` (6 copies in one pass: bound 6x), beside
pytorch-grad-cam's ``aug_smooth`` (6 sequential runs). CPU runs use 2 threads.
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


def vit_contenders(model, x) -> dict[str, Callable[[], object]]:
    with torch.no_grad():
        top = model(x).argmax(dim=1)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    legrad = camlens.Explainer(model, "legrad")
    out: dict[str, Callable[[], object]] = {
        "no-grad forward": forward,
        "camlens legrad (12 blocks)": lambda: legrad(x, top),
    }
    methods = importlib.util.find_spec("torchcam") and importlib.import_module("torchcam.methods")
    if methods and hasattr(methods, "LeGrad"):
        blocks = list(model.encoder.layers)
        ids = top.tolist()

        def torchcam() -> None:
            with methods.LeGrad(model, blocks) as extractor:
                scores = model(x)
                extractor(ids, scores)

        out["TorchCAM LeGrad (12 blocks)"] = torchcam
    return out


def cnn_contenders(model, x) -> dict[str, Callable[[], object]]:
    with torch.no_grad():
        top = model(x).argmax(dim=1)
    plain = camlens.Explainer(model, "gradcam", "layer4")
    eigen = camlens.Explainer(model, "gradcam", "layer4", eigen_smooth=True)
    aug = camlens.Explainer(model, "gradcam", "layer4", aug_smooth=True)
    out: dict[str, Callable[[], object]] = {
        "camlens gradcam": lambda: plain(x, top),
        "camlens gradcam eigen_smooth": lambda: eigen(x, top),
        "camlens gradcam aug_smooth (6 copies)": lambda: aug(x, top),
    }
    if importlib.util.find_spec("pytorch_grad_cam") is not None:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam = GradCAM(model=model, target_layers=[model.layer4])
        targets = [ClassifierOutputTarget(c) for c in top.tolist()]
        out["pytorch-grad-cam gradcam"] = lambda: cam(input_tensor=x, targets=targets)
        out["pytorch-grad-cam gradcam aug_smooth"] = lambda: cam(
            input_tensor=x, targets=targets, aug_smooth=True
        )
    return out


def table(title: str, results, unit: str) -> list[str]:
    base = results[unit].median
    lines = [title, "", f"| contender | time (ms) | time / {unit} |", "|---|---:|---:|"]
    for res in results.values():
        if res.error:
            lines.append(f"| {res.name} | failed: {res.error} | |")
        else:
            lines.append(f"| {res.name} | {res.median * 1e3:.1f} | {res.median / base:.2f}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--write", help="Markdown file whose benchmark section is replaced")
    parser.add_argument("--only", choices=["vit", "cnn"], help="run one of the two tables")
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
    if args.only != "cnn":
        vit = torchvision.models.vit_b_16(weights=None).eval().to(args.device)
        torch.nn.init.normal_(vit.heads.head.weight, std=0.02)  # torchvision starts it at zero
        results = run_round_robin(vit_contenders(vit, x), args.runs, 0, args.device)
        lines += table("**vit_b_16 (weights=None)**, LeGrad", results, "no-grad forward")
        del vit
    if args.only != "vit":
        resnet = torchvision.models.resnet50(weights=None).eval().to(args.device)
        results = run_round_robin(cnn_contenders(resnet, x), args.runs, 0, args.device)
        lines += ["", *table("**resnet50 (weights=None)**, `layer4`", results, "camlens gradcam")]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(args.write, f"bench:legrad:{args.device.split(':')[0]}", text)


if __name__ == "__main__":
    main()

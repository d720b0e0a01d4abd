"""Deep feature factorization: camlens.concepts.factorize beside pytorch-grad-cam's DFF.

    python benchmarks/bench_concepts.py [--device cpu|cuda] [--runs 5] [--batch 8] [--k 5]
                                        [--write BENCHMARKS.md]

torchvision resnet50 (weights=None, seed 0), batch 8 at 224x224, layer4, k concepts. camlens
factorises on the model's device (NNDSVDa + 200 multiplicative updates, torch);
pytorch-grad-cam moves the activations to numpy and runs scikit-learn's NMF (random init,
coordinate descent, up to 200 iterations). Both label the concepts through the model's fc
layer. Also the relative reconstruction error ||V - W H||_F / ||V||_F of each factorisation.
CPU runs use 2 threads.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
import torchvision

from _harness import machine, run_round_robin, write_section
from camlens.concepts import factorize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--write", help="Markdown file whose benchmark section is replaced")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(2)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    model = torchvision.models.resnet50(weights=None).eval().to(args.device)
    k = args.k
    ours = factorize(model, x, k, "layer4")
    contenders = {"camlens factorize": lambda: factorize(model, x, k, "layer4")}
    errors = {"camlens factorize": ours.error}
    if importlib.util.find_spec("pytorch_grad_cam") is not None:
        from pytorch_grad_cam import DeepFeatureFactorization
        from pytorch_grad_cam.feature_factorization.deep_feature_factorization import dff

        peer = DeepFeatureFactorization(model, model.layer4, computation_on_concepts=model.fc)
        contenders["pytorch-grad-cam DeepFeatureFactorization"] = lambda: peer(x, k)
        with torch.no_grad():
            feats = torch.nn.Sequential(*list(model.children())[:-2])(x).cpu().numpy()
        concepts, raw = dff(feats.copy(), k)
        v = feats.transpose(1, 0, 2, 3).reshape(feats.shape[1], -1)
        offset = v.min(axis=1, keepdims=True)
        w = concepts - offset
        h = raw.transpose(1, 0, 2, 3).reshape(k, -1)
        name = "pytorch-grad-cam DeepFeatureFactorization"
        errors[name] = float(np.linalg.norm(v - offset - w @ h) / np.linalg.norm(v - offset))
    results = run_round_robin(contenders, args.runs, 0, args.device)
    lines = [
        f"resnet50 (weights=None), layer4, batch {args.batch} at {args.size}x{args.size}, "
        f"k={k}, {args.device}; {machine(args.device)}; {datetime.date.today()}; median of "
        f"{args.runs} round-robin runs in one process.",
        "",
        "| contender | time (ms) | relative reconstruction error |",
        "|---|---:|---:|",
    ]
    for res in results.values():
        if res.error:
            lines.append(f"| {res.name} | failed: {res.error} | |")
            continue
        lines.append(f"| {res.name} | {res.median * 1e3:.1f} | {errors[res.name]:.4f} |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(args.write, f"bench:concepts:{args.device.split(':')[0]}", text)


if __name__ == "__main__":
    main()

"""CLIP with text prompts: five prompts explained in one forward and one batched gradient.

    python benchmarks/bench_clip.py [--device cpu|cuda] [--runs 5] [--batch 4] [--write FILE]

open_clip ViT-B-32 (random weights, seed 0, built offline), a batch at 224x224, Grad-CAM at the
automatic layer (the image tower's last block's input norm) for the cosine similarity to each of
5 prompts (``camlens.targets.text``, the prompts embedded once beforehand), as a ratio to one
no-grad forward of the image tower (``encode_image``) on the same batch (aim: <= 1.5x). Also
one prompt, and the 5 prompts explained one call at a time. CPU runs use 2 threads.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

import camlens
from _harness import machine, run_round_robin, write_section

PROMPTS = ["a dog", "a cat", "a car", "a tree", "a house"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--write", help="Markdown file whose benchmark section is replaced")
    args = parser.parse_args()
    import open_clip

    if args.device == "cpu":
        torch.set_num_threads(2)
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None).eval().to(args.device)
    x = torch.randn(args.batch, 3, 224, 224, device=args.device)
    five = camlens.targets.text(PROMPTS, model)
    ones = [camlens.targets.text(p, model) for p in PROMPTS]
    explainer = camlens.Explainer(model, "gradcam")

    def forward() -> None:
        with torch.no_grad():
            model.encode_image(x)

    contenders = {
        "no-grad forward (encode_image)": forward,
        "camlens gradcam, 5 prompts": lambda: explainer(x, five),
        "camlens gradcam, 1 prompt": lambda: explainer(x, ones[0]),
        "camlens gradcam, 5 prompts one call each": lambda: [explainer(x, t) for t in ones],
    }
    results = run_round_robin(contenders, args.runs, 0, args.device)
    base = results["no-grad forward (encode_image)"].median
    lines = [
        f"open_clip ViT-B-32 (random weights), batch {args.batch} at 224x224, {args.device}; "
        f"{machine(args.device)}; {datetime.date.today()}; median of {args.runs} round-robin "
        "runs in one process; layer `" + explainer.layers[0] + "`.",
        "",
        "| contender | time (ms) | time / forward |",
        "|---|---:|---:|",
    ]
    for res in results.values():
        if res.error:
            lines.append(f"| {res.name} | failed: {res.error} | |")
        else:
            lines.append(f"| {res.name} | {res.median * 1e3:.1f} | {res.median / base:.2f}x |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(args.write, f"bench:clip:{args.device.split(':')[0]}", text)


if __name__ == "__main__":
    main()

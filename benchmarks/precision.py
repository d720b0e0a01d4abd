"""Maps of float16 / bfloat16 models and of bfloat16 autocast against the float32 model's.

    python benchmarks/precision.py

The demo CNN (gradient methods, CAM, Score-CAM, Ablation-CAM, Recipro-CAM, Eigen-CAM,
FullGrad) and the demo ViT (Grad-CAM, gae, rollout), 2 random images, each image's top class
under the float32 model. Prints the largest |map - map32| (maps in [0, 1]) and the maps' dtype.
"""

from __future__ import annotations

import copy

import torch

import camlens
from camlens.models import build_model

CASES = {
    "demo": ["gradcam", "gradcampp", "layercam", "cam", "scorecam", "ablationcam", "reciprocam",
             "eigencam", "fullgrad"],
    "demo-vit": ["gradcam", "gae", "rollout"],
}  # fmt: skip


def main() -> None:
    torch.manual_seed(0)
    print("| model | method | float16 | bfloat16 | bf16 autocast |\n|---|---|---:|---:|---:|")
    for name, methods in CASES.items():
        spec = build_model(name)
        m32 = spec.model.eval()
        x = torch.rand(2, 3, spec.size, spec.size)
        for method in methods:
            ref = camlens.explain(m32, x, method)
            cells = []
            for dtype in (torch.float16, torch.bfloat16):
                m = copy.deepcopy(m32).to(dtype)
                ex = camlens.explain(m, x.to(dtype), method, target=ref.targets)
                diff = float((ex.maps.float() - ref.maps).abs().max())
                cells.append(f"{diff:.4f}" + ("" if ex.maps.dtype == torch.float32 else " (*)"))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                ex = camlens.explain(m32, x, method, target=ref.targets)
            diff = float((ex.maps.float() - ref.maps).abs().max())
            cells.append(f"{diff:.4f}" + ("" if ex.maps.dtype == torch.float32 else " (*)"))
            print(f"| {name} | {method} | " + " | ".join(cells) + " |")
    print("(*): maps not in float32")


if __name__ == "__main__":
    main()

"""Score-CAM's peak memory grows with the batch size, not with the channel count.

    python benchmarks/bench_scorecam_memory.py [--write BENCHMARKS.md]

resnet18 (weights=None), one 224x224 image, layer4 (512 channels), CPU, 2 threads. Peak RSS
growth during one call, measured in a child process with large blocks mmapped (see _harness).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
import camlens
from _harness import in_memory_child, machine, memory_child_env, peak_rss_growth, write_section


def measure() -> dict[str, float]:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    out: dict[str, float] = {}
    for bs in (16, 64):
        explainer = camlens.Explainer(model, "scorecam", "layer4", batch_size=bs)
        out[f"camlens scorecam, batch_size {bs}"] = peak_rss_growth(
            lambda e=explainer: e(x, 0), "cpu"
        )
    if importlib.util.find_spec("pytorch_grad_cam"):
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        with pgc.ScoreCAM(model=model, target_layers=[model.layer4]) as peer:
            peer.batch_size = 64
            out["pytorch-grad-cam ScoreCAM, batch_size 64"] = peak_rss_growth(
                lambda: peer(input_tensor=x, targets=[ClassifierOutputTarget(0)]), "cpu"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write")
    args = parser.parse_args()
    if in_memory_child():
        print(json.dumps(measure()))
        return
    child = subprocess.run(
        [sys.executable, __file__],
        env=memory_child_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    results = json.loads(child.stdout.strip().splitlines()[-1])
    lines = [
        f"resnet18 (weights=None), 1 image at 224x224, layer4 (512 channels), cpu; "
        f"{machine('cpu')}; {datetime.date.today()}; peak RSS growth of one call.",
        "",
        "| contender | peak memory growth (MB) |",
        "|---|---:|",
        *(f"| {name} | {mb / 2**20:.0f} |" for name, mb in results.items()),
    ]
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section(args.write, "bench:scorecam-memory:cpu", table)


if __name__ == "__main__":
    main()

"""Methods that re-run the model (Ablation-CAM, Score-CAM) side by side with the peers.

    python benchmarks/bench_rerun.py [--device cpu|cuda] [--write BENCHMARKS.md]

torchvision resnet18 (weights=None, seed 0), batch 1 at 224x224, layer4, each image's top class,
CPU with 2 threads. camlens: median of 3 runs; the peers (seconds each) run once.
Score-CAM's reference is the same number of plain no-grad forwards of the masked images, in
batches of the same size as camlens uses (64): the floor any Score-CAM implementation has.
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
from camlens.cams.score import _informative


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--write")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(2)
    torch.manual_seed(0)
    dev = args.device
    model = torchvision.models.resnet18(weights=None).eval().to(dev)
    x = torch.randn(1, 3, 224, 224, device=dev)
    with torch.no_grad():
        cls = int(model(x).argmax(1))
    rows: list[tuple[str, float, str]] = []

    ablation = camlens.Explainer(model, "ablationcam", "layer4", batch_size=args.batch_size)
    ablation(x, cls)
    t_abl = timed(lambda: ablation(x, cls), args.runs, dev)
    rows.append(("camlens ablationcam", t_abl, "1.00x"))

    store: list[torch.Tensor] = []
    h = model.layer4.register_forward_hook(lambda _m, _i, o: store.append(o))
    with torch.no_grad():
        model(x)
    h.remove()
    n_masked = int(_informative(store[0]).sum())
    masked = x.expand(args.batch_size, -1, -1, -1).contiguous()

    def plain_forwards() -> None:
        with torch.no_grad():
            for start in range(0, n_masked, args.batch_size):
                model(masked[: min(args.batch_size, n_masked - start)])

    score = camlens.Explainer(model, "scorecam", "layer4", batch_size=args.batch_size)
    score(x, cls)
    t_floor = timed(plain_forwards, args.runs, dev)
    t_score = timed(lambda: score(x, cls), args.runs, dev)

    if not args.skip_peers and importlib.util.find_spec("pytorch_grad_cam"):
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        targets = [ClassifierOutputTarget(cls)]
        with pgc.AblationCAM(model=model, target_layers=[model.layer4]) as peer:
            t = timed(lambda: peer(input_tensor=x, targets=targets), 1, dev)
        rows.append(("pytorch-grad-cam AblationCAM", t, f"{t / t_abl:.0f}x slower"))
    rows.append((f"plain no-grad forwards ({n_masked} masked images)", t_floor, "floor"))
    rows.append(("camlens scorecam", t_score, f"{t_score / t_floor:.2f}x the floor"))
    if not args.skip_peers and importlib.util.find_spec("pytorch_grad_cam"):
        with pgc.ScoreCAM(model=model, target_layers=[model.layer4]) as peer:
            peer.batch_size = args.batch_size
            t = timed(lambda: peer(input_tensor=x, targets=targets), 1, dev)
        rows.append(("pytorch-grad-cam ScoreCAM", t, f"{t / t_score:.1f}x slower"))
    if not args.skip_peers and importlib.util.find_spec("torchcam"):
        from torchcam.methods import ScoreCAM

        peer = ScoreCAM(model, target_layer="layer4", batch_size=args.batch_size)

        def run_torchcam() -> None:
            peer([cls], model(x))

        t = timed(run_torchcam, 1, dev)
        peer.remove_hooks()
        rows.append(("torchcam ScoreCAM", t, f"{t / t_score:.1f}x slower"))

    lines = [
        f"resnet18 (weights=None), batch 1 at 224x224, layer4, {dev}; {machine(dev)}; "
        f"{datetime.date.today()}; camlens: median of {args.runs} runs, peers: 1 run; batches "
        f"of {args.batch_size}.",
        "",
        "| contender | time (s) | ratio |",
        "|---|---:|---:|",
        *(f"| {name} | {t:.2f} | {ratio} |" for name, t, ratio in rows),
    ]
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section(args.write, f"bench:rerun:{dev.split(':')[0]}", table)


if __name__ == "__main__":
    main()

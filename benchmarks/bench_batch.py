"""``camlens batch`` throughput and memory: against plain inference through the same DataLoader,
and against the obvious pytorch-grad-cam loop.

    python benchmarks/bench_batch.py [--images 1000] [--memory 500 5000] [--resnet 0]
                                     [--workers 1] [--threads 1] [--write BENCHMARKS.md]

Data: the first N images of the built-in shapes benchmark written as JPEG files (quality 95)
into a temporary folder, so every contender decodes files. Contenders, each over all N images,
round-robin (``--rounds``), images/s from the median wall time:

- plain inference: the batch job's own DataLoader (same workers, batch size, preprocessing) and
  ``model(x)`` under ``torch.no_grad()``: the ceiling for any explainer fed by this loader;
- camlens batch (Grad-CAM): ``camlens.batch.run`` end to end: model build, weights hash,
  manifest, decoding in workers, explanation, Parquet shards written in the background;
- camlens batch --overlays: the same, plus one overlay PNG per image;
- pytorch-grad-cam loop: the obvious script: for each batch of paths, load and preprocess in
  the main process, ``GradCAM(model, [layer])(x)``, then ``show_cam_on_image`` and one PNG
  per image (the GradCAM object is built once).

Every contender first runs once on 8 other files (warm-up), untimed.

Memory: ``camlens.batch.run("shapes:N")`` in a fresh child process for each N in
``--memory``; the peak resident set size of the job's process (``VmHWM``: ``ru_maxrss`` would
keep the high-water mark of the forking parent across ``exec``) and ``ru_maxrss`` of its
largest DataLoader worker, and the job process's growth over its RSS after the imports (most
of the peak is torch's libraries). Flat in N means the job streams.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch

import camlens.batch
from _harness import machine, write_section
from camlens.batch.dataset import loader
from camlens.batch.sources import load, resolve
from camlens.io import load_image, preprocess
from camlens.models import build_model


def write_jpegs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        load(f"shapes:{n}/{i}").save(folder / f"{i:06d}.jpg", quality=95)


def plain(folder: Path, spec, batch_size: int, workers: int) -> None:
    items = resolve(folder).items
    shard = 1000
    shards = range(-(-len(items) // shard))
    with torch.no_grad():
        for batch in loader(
            items, shards, shard, batch_size, workers, spec.size, spec.resize, spec.preset
        ):
            spec.model(batch.images)


def camlens_job(folder: Path, model: str, batch_size: int, workers: int, overlays: bool) -> None:
    with tempfile.TemporaryDirectory() as out:
        camlens.batch.run(
            folder,
            out,
            model,
            methods=["gradcam"],
            batch_size=batch_size,
            workers=workers,
            overlays=overlays,
            progress=False,
        )


def gradcam_loop(folder: Path, spec, layer, batch_size: int) -> None:
    from PIL import Image
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image

    from camlens.viz import denormalize

    paths = sorted(folder.glob("*.jpg"))
    cam = GradCAM(model=spec.model, target_layers=[layer])
    with tempfile.TemporaryDirectory() as out:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            x = preprocess([load_image(p) for p in chunk], spec.size, spec.resize, spec.preset)
            maps = cam(input_tensor=x, targets=None)
            for p, img, heat in zip(chunk, x, maps, strict=True):
                rgb = denormalize(img, spec.preset).astype(np.float32)
                vis = show_cam_on_image(rgb, heat, use_rgb=True)
                Image.fromarray(vis).save(Path(out) / f"{p.stem}.png")


def memory_child(n: int, workers: int, threads: int) -> dict[str, float]:
    code = f"""
import os, resource, sys, tempfile, torch
sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / "src")!r})
torch.set_num_threads({threads})
import pyarrow.parquet, torchvision.transforms.functional, camlens.batch
page = os.sysconf("SC_PAGE_SIZE")
before = int(open("/proc/self/statm").read().split()[1]) * page // 1024
with tempfile.TemporaryDirectory() as out:
    camlens.batch.run("shapes:{n}", out, "demo", methods=["gradcam"], workers={workers},
                      progress=False)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(before, hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    before_kb, main_kb, worker_kb = map(int, out.stdout.split()[-3:])
    return {
        "images": n,
        "main_mb": main_kb / 1024,
        "growth_mb": (main_kb - before_kb) / 1024,
        "worker_mb": worker_kb / 1024,
        "seconds": time.perf_counter() - start,
    }


def contenders(folder: Path, model: str, spec, layer, args) -> dict[str, Callable[[], None]]:
    """The contenders over the JPEGs in ``folder``, by name."""
    return {
        "plain inference, same DataLoader (no grad)": lambda: plain(
            folder, spec, args.batch_size, args.workers
        ),
        "camlens batch, gradcam (Parquet)": lambda: camlens_job(
            folder, model, args.batch_size, args.workers, False
        ),
        "camlens batch, gradcam --overlays": lambda: camlens_job(
            folder, model, args.batch_size, args.workers, True
        ),
        "pytorch-grad-cam loop + show_cam_on_image PNGs": lambda: gradcam_loop(
            folder, spec, layer, args.batch_size
        ),
    }


def throughput(model: str, n: int, args) -> list[tuple[str, float]]:
    from camlens.layers import find_last_spatial_layer

    spec = build_model(model)
    spec.model.eval()
    x = preprocess([load("shapes:1/0")], spec.size, spec.resize, spec.preset)
    layer = spec.model.get_submodule(find_last_spatial_layer(spec.model, x))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpegs"
        write_jpegs(folder, n)
        runs = contenders(folder, model, spec, layer, args)
        # Warm-up: every contender once on 8 other files (first-call costs:
        # allocator, oneDNN primitives, lazy imports), so that no contender pays them in the timing.
        warm = Path(tmp) / "warm"
        write_jpegs(warm, 8)
        for fn in contenders(warm, model, spec, layer, args).values():
            fn()
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.rounds):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
                print(f"{model} {name}: {n / times[name][-1]:.1f} images/s", flush=True)
    return [(name, n / statistics.median(t)) for name, t in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="demo model: JPEG images")
    parser.add_argument("--resnet", type=int, default=0, help="resnet50 at 224: images (0: skip)")
    parser.add_argument("--memory", type=int, nargs="*", default=[500, 5000])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--write", default=None, help="write the section into this Markdown file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tables = []
    for model, n in (("demo", args.images), ("resnet50", args.resnet)):
        if n <= 0:
            continue
        rows = throughput(model, n, args)
        base = rows[0][1]
        loop = rows[3][1]
        lines = [
            f"{model} ({'shipped weights, 96x96' if model == 'demo' else 'weights=None, 224x224'})"
            f", {n} JPEG images:",
            "",
            "| contender | images/s | / plain inference | / pytorch-grad-cam loop |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {name} | {ips:.1f} | {ips / base:.2f}x | {ips / loop:.2f}x |" for name, ips in rows
        ]
        tables.append("\n".join(lines))
    mem = [memory_child(n, args.workers, args.threads) for n in args.memory]
    for m in mem:
        print(json.dumps(m), flush=True)
    if mem:
        lines = [
            'Peak resident memory of `camlens.batch.run("shapes:N")` (demo, gradcam), one fresh '
            "process per N:",
            "",
            "| images | job process peak (MB) | growth during the job (MB) "
            "| largest DataLoader worker (MB) | wall (s) |",
            "|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {m['images']} | {m['main_mb']:.0f} | {m['growth_mb']:.0f} "
            f"| {m['worker_mb']:.0f} | {m['seconds']:.0f} |"
            for m in mem
        ]
        first, last = mem[0], mem[-1]
        lines.append("")
        lines.append(
            f"{last['images']} vs {first['images']} images: job process "
            f"{last['main_mb'] / first['main_mb']:.3f}x (growth during the job "
            f"{last['growth_mb'] / max(first['growth_mb'], 1e-9):.2f}x), worker "
            f"{last['worker_mb'] / first['worker_mb']:.3f}x."
        )
        tables.append("\n".join(lines))
    header = (
        f"{machine('cpu')}; batch size {args.batch_size}, {args.workers} DataLoader worker(s), "
        f"{args.threads} torch thread(s); {args.rounds} round(s); "
        f"{datetime.date.today().isoformat()}."
    )
    text = header + "\n\n" + "\n\n".join(tables)
    print(text)
    if args.write:
        write_section(args.write, "bench:batch:cpu", text)


if __name__ == "__main__":
    main()

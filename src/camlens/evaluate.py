"""``camlens evaluate``: every method, every applicable metric, one table.

For each method: explain the images (timed), then localisation (when masks are given),
Average Drop / Increase in Confidence / Win, Deletion / Insertion, ROAD, the maps' complexity
(entropy) and sparseness (Gini), coherency and ADCC, and, on the first ``sanity_images``
images, the two sanity checks and max-sensitivity. Results are written after every method
(atomically), so an interrupted run keeps what it finished; a method that fails for this model
(e.g. CAM without a GAP + linear head) is recorded with its error and the run goes on.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import camlens
from camlens.errors import CamlensError, InputError
from camlens.metrics import (
    Adcc,
    box_localisation,
    coherency,
    complexity,
    component_boxes,
    deletion,
    energy_pointing_game,
    insertion,
    iou,
    masked_confidence,
    max_sensitivity,
    pointing_game,
    road,
    sanity_random_logit,
    sanity_randomization,
    sparseness,
    win_rate,
)
from camlens.metrics.perturbation import resolve_targets

#: column -> (header, better: "up" or "down", format)
COLUMNS: dict[str, tuple[str, str, str]] = {
    "ms_per_image": ("ms/img", "down", ".1f"),
    "pointing_game": ("pointing", "up", ".3f"),
    "energy_pointing_game": ("energy", "up", ".3f"),
    "iou": ("IoU", "up", ".3f"),
    "box_localisation": ("box loc", "up", ".3f"),
    "average_drop": ("avg drop %", "down", ".1f"),
    "increase_in_confidence": ("increase %", "up", ".1f"),
    "win": ("win %", "up", ".1f"),
    "deletion_auc": ("deletion", "down", ".3f"),
    "insertion_auc": ("insertion", "up", ".3f"),
    "road_morf": ("ROAD MoRF", "down", ".3f"),
    "road_lerf": ("ROAD LeRF", "up", ".3f"),
    "complexity": ("entropy", "down", ".2f"),
    "sparseness": ("Gini", "up", ".3f"),
    "coherency": ("coherency", "up", ".3f"),
    "adcc": ("ADCC", "up", ".3f"),
    "max_sensitivity": ("max sens", "down", ".3f"),
    "mprt_spearman": ("MPRT abs rho", "down", ".2f"),
    "random_logit_spearman": ("random logit abs rho", "down", ".2f"),
}


@dataclass
class EvalData:
    """What to evaluate on: images as the model wants them, with optional ground truth."""

    images: Tensor
    targets: Tensor | None = None
    masks: Tensor | None = None
    has_mask: Tensor | None = None
    description: str = ""


def shapes_data(n: int, instances: int = 1, seed: int = 2027, size: int = 96) -> EvalData:
    """``n`` images of the built-in shapes benchmark, their labels and masks (held-out seed)."""
    from camlens.demo import shapes

    images, labels, masks = shapes(n, seed=seed, size=size, instances=instances)
    desc = f"shapes:{n} (seed {seed}, {instances} object{'s' if instances > 1 else ''} per image)"
    return EvalData(images, labels, masks, torch.ones(n, dtype=torch.bool), desc)


def _warn(message: str) -> None:
    import warnings

    from camlens.io import InputWarning

    warnings.warn(message, InputWarning, stacklevel=3)


def folder_data(
    folder: Path,
    size: int,
    resize: int | tuple[int, int] | None,
    preset: str,
    masks_dir: str = "masks",
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    interpolation: str = "bilinear",
    on_skip: Callable[[str], None] | None = None,
) -> EvalData:
    """Every image in ``folder`` (sorted), with ``folder/masks/<stem>.png`` as the mask where it
    exists (non-zero = object), cropped and resized like the image.

    An unreadable image (or mask) is left out with one line passed to ``on_skip`` (default: an
    :class:`camlens.io.InputWarning`), as is a note such as "first frame of an animated GIF";
    :class:`InputError` only when no image at all can be read.

    Images are prepared with :func:`camlens.io.preprocess` (``mean``/``std``, when given, take
    the place of the preset, e.g. a timm or Hugging Face model's own statistics)."""
    import warnings

    import torchvision.transforms.functional as TF

    from camlens.io import InputWarning, load_image, preprocess, read_image

    exts = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder (pass shapes:N or a folder of images)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in exts and p.is_file())
    if not files:
        raise InputError(f"{folder}: no images ({', '.join(sorted(exts))}) in this folder")
    loaded, kept = [], []
    for p in files:
        try:
            with warnings.catch_warnings(record=True) as notes:
                warnings.simplefilter("always", InputWarning)
                loaded.append(load_image(p))
            kept.append(p)
            for note in notes:
                (on_skip or _warn)(f"note: {note.message}")
        except InputError as exc:  # one line per unreadable file; the others are evaluated
            (on_skip or _warn)(f"{exc} (skipped)")
    if not loaded:
        raise InputError(f"{folder}: none of the {len(files)} image files could be read")
    files = kept
    images = preprocess(
        loaded,
        size,
        resize,
        preset,
        mean=mean,
        std=std,
        interpolation=interpolation,
    )
    masks = torch.zeros(len(files), size, size, dtype=torch.bool)
    has = torch.zeros(len(files), dtype=torch.bool)
    for i, p in enumerate(files):
        mask_file = folder / masks_dir / f"{p.stem}.png"
        if not mask_file.is_file():
            continue
        try:
            mask_img, _ = read_image(mask_file)
        except InputError as exc:
            (on_skip or _warn)(f"{exc} (mask skipped)")
            continue
        t = TF.pil_to_tensor(mask_img.convert("L"))
        if resize is None:
            t = TF.resize(t, [size, size], TF.InterpolationMode.NEAREST)
        else:
            target = resize if isinstance(resize, int) else [int(v) for v in resize]
            t = TF.resize(t, target, TF.InterpolationMode.NEAREST)
            t = TF.center_crop(t, [size, size])
        masks[i], has[i] = t[0] > 0, True
    desc = f"{folder} ({len(files)} images, {int(has.sum())} with masks)"
    return EvalData(images, None, masks, has, desc)


def _explain_all(
    model: nn.Module, images: Tensor, targets: Tensor, method: str, layer: Any, chunk: int
) -> Tensor:
    explainer = camlens.Explainer(model, method, layer, batch_size=chunk)
    maps = [
        explainer(images[i : i + chunk], targets[i : i + chunk]).maps
        for i in range(0, len(images), chunk)
    ]
    return torch.cat(maps)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def evaluate(
    model: nn.Module,
    data: EvalData,
    methods: Sequence[str],
    layer: Any = None,
    *,
    steps: int = 20,
    road_percentages: Sequence[float] = (20, 50, 80),
    baseline: float | Tensor = 0.0,
    batch_size: int = 64,
    sanity_images: int = 32,
    box_threshold: float = 0.2,
    sensitivity_samples: int = 8,
    sensitivity_radius: float = 0.2,
    seed: int = 0,
    out: Path | None = None,
    progress: bool = False,
    on_method: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every method and every metric on ``data``; return (and write to ``out``) the results.

    Targets are the data's labels, or the model's top class where there are none. Deletion and
    insertion take ``steps`` steps (``ceil(H*W / steps)`` pixels each); ROAD removes each of
    ``road_percentages``. ``baseline`` is the input value of a removed pixel (0: black for
    inputs in [0, 1]; :func:`camlens.metrics.black` for normalised inputs). Box localisation
    thresholds maps at ``box_threshold`` of their max (CAM's 20%) and takes the ground-truth
    boxes from the masks' connected components.

    Complexity (entropy) and sparseness (Gini) need only the maps. Coherency explains every
    image seen through its map once more (hidden pixels at ``baseline``); ADCC combines it with
    the maps' mean value and the Average Drop as a fraction. Max-sensitivity explains
    ``sensitivity_samples`` copies of each of the first ``sanity_images`` images with uniform
    noise of ``sensitivity_radius`` (in the model's input units; 0 samples: skipped) and
    reports the largest change of the map, as a fraction of the map's norm (``relative=True``).
    """
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else data.images.device
    images = data.images.to(device)
    predicted = resolve_targets(model, images, None, batch_size)[1]
    targets = data.targets.to(device) if data.targets is not None else predicted
    h, w = images.shape[-2:]
    step = max(1, math.ceil(h * w / steps))
    n_sanity = min(sanity_images, len(images))
    masks = has = None
    if data.masks is not None and data.has_mask is not None and bool(data.has_mask.any()):
        has = data.has_mask.to(device)
        masks = data.masks.to(device)[has]
    results: dict[str, Any] = {
        "data": data.description,
        "images": len(images),
        "accuracy": float((predicted == targets).float().mean())
        if data.targets is not None
        else None,
        "settings": {
            "steps": steps,
            "step_pixels": step,
            "road_percentages": list(road_percentages),
            "batch_size": batch_size,
            "sanity_images": n_sanity,
            "box_threshold": box_threshold,
            "sensitivity_samples": sensitivity_samples,
            "sensitivity_radius": sensitivity_radius,
            "seed": seed,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "methods": {},
        "curves": {},
        "errors": {},
    }
    drops: dict[str, Tensor] = {}
    opts = {"batch_size": batch_size}
    run_start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(methods), desc="evaluate", unit="method")
    try:
        for method in methods:
            if bar is not None:
                bar.set_postfix_str(method)
            try:
                start = time.perf_counter()
                maps = _explain_all(model, images, targets, method, layer, batch_size)
                elapsed = time.perf_counter() - start
                row: dict[str, Any] = {"ms_per_image": 1e3 * elapsed / len(images)}
                if masks is not None and has is not None:
                    m = maps[has]
                    row["pointing_game"] = float(pointing_game(m, masks).mean())
                    row["energy_pointing_game"] = float(energy_pointing_game(m, masks).mean())
                    row["iou"] = float(iou(m, masks).mean())
                    row["box_localisation"] = float(
                        box_localisation(m, component_boxes(masks), box_threshold).mean()
                    )
                conf = masked_confidence(model, images, maps, targets, baseline=baseline, **opts)
                drops[method] = conf.drop
                row["average_drop"] = float(conf.drop.mean())
                row["increase_in_confidence"] = float(conf.increase.mean())
                dele = deletion(model, images, maps, targets, step=step, baseline=baseline, **opts)
                ins = insertion(model, images, maps, targets, step=step, **opts)
                row["deletion_auc"] = float(dele.auc.mean())
                row["insertion_auc"] = float(ins.auc.mean())
                rd = road(
                    model, images, maps, targets, percentages=road_percentages, seed=seed, **opts
                )
                row["road_morf"] = float(rd.morf.mean())
                row["road_lerf"] = float(rd.lerf.mean())
                row["complexity"] = float(complexity(maps).mean())
                row["sparseness"] = float(sparseness(maps).mean())
                coh = coherency(
                    model, images, maps, method, targets, layer, baseline=baseline, **opts
                )
                parts = Adcc(coh, maps.flatten(1).mean(dim=1), conf.drop / 100, targets)
                row["coherency"] = float(coh.mean())
                row["adcc"] = float(parts.adcc.mean())
                sub_x, sub_t = images[:n_sanity], targets[:n_sanity]
                if sensitivity_samples > 0:
                    sens = max_sensitivity(
                        model,
                        sub_x,
                        maps[:n_sanity],
                        method,
                        sub_t,
                        layer,
                        radius=sensitivity_radius,
                        samples=sensitivity_samples,
                        relative=True,
                        seed=seed,
                        **opts,
                    )
                    row["max_sensitivity"] = float(sens.mean())
                mprt = sanity_randomization(
                    model, sub_x, method, sub_t, layer, seed=seed, batch_size=batch_size
                )
                logit = sanity_random_logit(
                    model, sub_x, method, sub_t, layer, seed=seed, batch_size=batch_size
                )
                row["mprt_spearman"] = mprt.final_spearman
                row["mprt_ssim"] = float(mprt.ssim[-1].mean())
                row["mprt_passed"] = mprt.passed
                row["random_logit_spearman"] = logit.final_spearman
                row["random_logit_passed"] = logit.passed
                results["methods"][method] = row
                results["curves"][method] = {
                    "fractions": dele.fractions.tolist(),
                    "deletion": dele.curves.mean(0).tolist(),
                    "insertion": ins.curves.mean(0).tolist(),
                    "road_percentages": rd.percentages.tolist(),
                    "road_morf": rd.morf.mean(0).tolist(),
                    "road_lerf": rd.lerf.mean(0).tolist(),
                    "mprt_steps": mprt.steps,
                    "mprt_spearman": mprt.spearman.mean(1).tolist(),
                }
            except CamlensError as exc:
                results["errors"][method] = str(exc)
            for name, share in win_rate(drops).items():
                results["methods"][name]["win"] = share
            results["seconds"] = time.perf_counter() - run_start
            if on_method is not None:
                on_method(method, results)
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                _write_json(out / "results.json", results)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return results


def _cell(row: dict[str, Any], key: str) -> str:
    if key not in row:
        return "-"
    text = format(row[key], COLUMNS[key][2])
    if key == "mprt_spearman":
        text += " ok" if row.get("mprt_passed") else " FAIL"
    if key == "random_logit_spearman":
        text += " ok" if row.get("random_logit_passed") else " FAIL"
    return text


def table_columns(results: dict[str, Any]) -> list[str]:
    """The columns that at least one method has, in the order of :data:`COLUMNS`."""
    present = {k for row in results["methods"].values() for k in row}
    return [k for k in COLUMNS if k in present]


def markdown_table(results: dict[str, Any]) -> str:
    """The results as a Markdown table, with an arrow for the better direction of each column."""
    cols = table_columns(results)
    head = ["method"] + [f"{COLUMNS[k][0]} {'↑' if COLUMNS[k][1] == 'up' else '↓'}" for k in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, row in results["methods"].items():
        lines.append("| " + " | ".join([f"`{method}`"] + [_cell(row, k) for k in cols]) + " |")
    for method, error in results.get("errors", {}).items():
        lines.append(
            f"| `{method}` | failed: {error.splitlines()[0][:120]} |" + " |" * (len(cols) - 1)
        )
    return "\n".join(lines) + "\n"


def write_outputs(results: dict[str, Any], out: Path) -> list[Path]:
    """Write table.md, table.csv, results.json and the plots into ``out``; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    md = out / "table.md"
    md.write_text(markdown_table(results))
    written.append(md)
    cols = table_columns(results)
    csv_path = out / "table.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", *cols, "mprt_passed", "random_logit_passed"])
        for method, row in results["methods"].items():
            writer.writerow(
                [method]
                + [row.get(k, "") for k in cols]
                + [row.get("mprt_passed", ""), row.get("random_logit_passed", "")]
            )
    written.append(csv_path)
    _write_json(out / "results.json", results)
    written.append(out / "results.json")
    curves = results.get("curves", {})
    if curves:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        palette = plt.get_cmap("tab20").colors
        for j, (method, c) in enumerate(curves.items()):
            style = {"color": palette[j % 20], "linestyle": ("-", "--", ":")[(j // 20) % 3]}
            axes[0].plot(c["fractions"], c["deletion"], label=method, **style)
            axes[1].plot(c["fractions"], c["insertion"], label=method, **style)
        for ax, title in zip(
            axes, ("Deletion (lower is better)", "Insertion (higher is better)"), strict=True
        ):
            ax.set_title(title)
            ax.set_xlabel("fraction of pixels")
            ax.set_ylabel("class probability")
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out / "curves.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    names = list(results["methods"])
    for key in cols:
        values = [results["methods"][m].get(key, float("nan")) for m in names]
        fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(names) + 2), 3.6))
        ax.bar(range(len(names)), values, color="#4c72b0")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        header, better, _ = COLUMNS[key]
        ax.set_title(f"{header} ({'higher' if better == 'up' else 'lower'} is better)")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = out / f"bar_{key}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written

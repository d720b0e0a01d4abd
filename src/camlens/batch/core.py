"""What both engines share: the job's parameters, building the model, and turning one batch
of images into Parquet rows (and overlays)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from camlens.errors import InputError

TOPK_COLUMNS = 5  # how many of each image's top classes go into topk_classes / topk_probs


@dataclass(frozen=True)
class JobConfig:
    """What a job computes. A rerun into the same OUT must agree on all of it (and on the
    sources and the weights' hash, recorded beside it in the manifest) to resume.

    ``target``: one class id for every image (rank 0), or None to explain each image's top
    ``topk`` classes (ranks 1..topk).
    """

    input: str
    model: str
    weights: str | None
    methods: tuple[str, ...]
    layer: str | None
    target: int | None
    topk: int
    shard_size: int
    overlays: bool

    def validate(self) -> None:
        """Raise :class:`InputError` for parameters no job can run with."""
        import camlens

        if not self.methods:
            raise InputError("no method given; pass one or more of 'camlens methods'")
        if len(set(self.methods)) != len(self.methods):
            raise InputError(f"methods are repeated: {list(self.methods)}")
        for method in self.methods:
            camlens.method_info(method)
        if self.topk < 1:
            raise InputError(f"topk must be at least 1, got {self.topk}")
        if self.target is not None and self.topk != 1:
            raise InputError("pass either a target class or topk, not both")
        if self.shard_size < 1:
            raise InputError(f"shard_size must be at least 1, got {self.shard_size}")


def build(config: JobConfig) -> Any:
    """The job's :class:`camlens.models.ModelSpec`, in eval mode on the CPU.

    A torchvision model without weights is initialised from a fixed seed (0), so that a job
    with random weights is reproducible and can resume; the caller's RNG is left untouched.
    """
    from camlens.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        spec = build_model(config.model, config.weights)
    spec.model.eval()
    return spec


def check_device(name: str) -> torch.device:
    """``name`` -> torch.device, or :class:`InputError` saying what this machine has."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {name!r} is not a device; use cpu, cuda, cuda:1, mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"--device {name}: CUDA is not available on this machine (no GPU or driver, or "
                "torch built without CUDA); use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
            )
    elif device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise InputError(f"--device {name}: MPS is not available on this machine; use cpu")
    return device


def _ranked(explainer: Any, x: Tensor, config: JobConfig) -> list[tuple[int, Any]]:
    """Explanations of ``x`` for the job's targets: [(rank, Explanation)].

    An Explanation may hold one target per image (raw (B, h, w), targets (B,)) or several
    (raw (B, T, h, w), targets (B, T)); :func:`rows` handles both.
    """
    if config.target is not None:
        return [(0, explainer(x, config.target))]
    if config.topk == 1:
        return [(1, explainer(x, None))]
    import camlens.targets

    top = getattr(camlens.targets, "top", None)
    if top is not None:  # the engine explains T targets per image in one pass
        return [(1, explainer(x, top(config.topk)))]
    # TODO(camlens.targets.top): until the engine takes several targets per image, explain
    # rank 1 and reuse its logits for ranks 2..K, one call per rank.
    first = explainer(x, None)
    if first.logits is None:
        raise InputError("topk needs a classifier that returns (B, classes) logits")
    k = min(config.topk, first.logits.shape[1])
    ids = first.logits.detach().topk(k, dim=1).indices
    return [(1, first)] + [(r + 1, explainer(x, ids[:, r])) for r in range(1, k)]


def rows(
    explainers: dict[str, Any],
    x: Tensor,
    indices: Sequence[int],
    items: Sequence[str],
    config: JobConfig,
) -> tuple[list[dict[str, Any]], list[tuple[int, str, int, int, Tensor, Tensor]]]:
    """One batch -> its Parquet rows, and (when ``config.overlays``) what to draw:
    (index, method, rank, target, image (C, H, W), map (H, W)) on the CPU."""
    from camlens.batch.shards import encode_map

    out: list[dict[str, Any]] = []
    draws: list[tuple[int, str, int, int, Tensor, Tensor]] = []
    top_ids: list[list[int]] | None = None
    top_probs: list[list[float]] | None = None
    xcpu = x.detach().cpu() if config.overlays else None
    for method, explainer in explainers.items():
        for first_rank, ex in _ranked(explainer, x, config):
            if top_ids is None:
                if ex.logits is not None:
                    probs = ex.logits.detach().float().softmax(1)
                    top = probs.topk(min(TOPK_COLUMNS, probs.shape[1]), dim=1)
                    top_ids, top_probs = top.indices.tolist(), top.values.tolist()
                else:
                    top_ids, top_probs = [[] for _ in indices], [[] for _ in indices]
            layer = ex.layers[0] if ex.layers else ""
            raw = ex.raw[layer] if layer in ex.raw else next(iter(ex.raw.values()))
            targets, scores, maps = ex.targets, ex.scores, ex.maps
            if targets.ndim == 1:  # one target per image: add the T axis
                raw, targets, scores, maps = (
                    raw[:, None],
                    targets[:, None],
                    scores[:, None],
                    maps[:, None],
                )
            raw = raw.detach().to("cpu", torch.float32)
            targets, scores = (
                targets.detach().cpu().tolist(),
                scores.detach().float().cpu().tolist(),
            )
            for b, index in enumerate(indices):
                for t in range(raw.shape[1]):
                    rank = 0 if first_rank == 0 else first_rank + t
                    out.append(
                        {
                            "index": int(index),
                            "source": items[index],
                            "method": method,
                            "layer": layer,
                            "rank": rank,
                            "target": int(targets[b][t]),
                            "score": float(scores[b][t]),
                            "map": encode_map(raw[b, t]),
                            "map_shape": list(raw.shape[2:]),
                            "topk_classes": top_ids[b],
                            "topk_probs": top_probs[b],
                        }
                    )
                    if xcpu is not None:
                        heat = maps[b, t].detach().float().cpu()
                        draws.append((int(index), method, rank, int(targets[b][t]), xcpu[b], heat))
    return out, draws


def overlay_name(index: int, source: str, method: str, rank: int, target: int) -> str:
    """``0000042_cat_gradcam_r1_c281.png``: sortable, unique per row, readable."""
    stem = Path(source).stem if not source.startswith("shapes:") else "shapes"
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:40]
    return f"{index:07d}_{stem}_{method}_r{rank}_c{target}.png"


def write_overlays(
    out: Path,
    draws: Sequence[tuple[int, str, int, int, Tensor, Tensor]],
    items: Sequence[str],
    preset: str,
    chunk: int = 256,
) -> None:
    """Overlay PNGs into OUT/overlays, each written to a temporary name and renamed.

    Blended in torch a chunk at a time (:func:`camlens.viz.overlays`, equal to ``overlay``
    image by image); PNGs are written with zlib level 1, which is several times faster than the
    default and only makes the files a little larger.
    """
    from PIL import Image

    from camlens.batch.shards import raise_if_disk_full
    from camlens.viz import overlays

    folder = out / "overlays"
    folder.mkdir(exist_ok=True)
    for start in range(0, len(draws), chunk):
        part = draws[start : start + chunk]
        pixels = overlays(
            torch.stack([d[4] for d in part]), torch.stack([d[5] for d in part]), "jet", 0.4, preset
        ).numpy()
        for (index, method, rank, target, _image, _heat), rgb in zip(part, pixels, strict=True):
            path = folder / overlay_name(index, items[index], method, rank, target)
            tmp = folder / f".{path.name}.tmp{os.getpid()}"
            try:
                Image.fromarray(rgb).save(tmp, format="PNG", compress_level=1)
                os.replace(tmp, path)
            except BaseException as exc:
                tmp.unlink(missing_ok=True)  # a full disk leaves no partial file behind
                raise_if_disk_full(exc, path)
                raise


def config_dict(config: JobConfig) -> dict[str, Any]:
    """The job's parameters as a JSON-ready dict (as stored in the manifest)."""
    d = asdict(config)
    d["methods"] = list(config.methods)
    return d

"""What the web app holds: one model, the images it was shown, and explanation jobs.

No web framework here: :class:`AppState` is plain Python and torch, so it is tested without a
server. The explaining is :class:`camlens.Explainer`; the pictures are :mod:`camlens.viz`;
the scores are :mod:`camlens.metrics`. What this module adds:

- uploads are decoded safely (size and pixel limits checked *before* the pixels are decoded,
  image formats only) and nothing is ever read from a path the page names;
- jobs run one at a time on a worker thread, under a lock, because explaining attaches hooks
  to the one shared model: two users' requests queue instead of mixing their activations;
- a job can be cancelled between forward passes, and reports progress for the methods that
  re-run the model (Score-CAM family), through a forward pre-hook that this module owns and
  attaches only while its own job runs (the engine is not changed);
- maps are kept per job, so colormap and opacity re-render without recomputing anything.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import math
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from camlens.engine import Explainer
from camlens.errors import CamlensError, InputError
from camlens.io import preprocess, read_image
from camlens.layers import find_last_spatial_layer
from camlens.models import ModelSpec
from camlens.registry import get_method, methods

#: image formats the app decodes; anything else is refused before decoding.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
#: colormaps offered on the page (any matplotlib name is accepted by the render call).
COLORMAPS = ("jet", "turbo", "viridis", "inferno", "magma", "plasma", "coolwarm", "gray")
#: methods selected on the first screen.
DEFAULT_METHODS = ("gradcam", "gradcampp")
#: methods that re-run the model per channel or position: slow, with progress and cancel.
SLOW_INPUTS = ("input_probe", "layer_probe", "black_box")


class JobCancelled(Exception):  # noqa: N818 - an outcome, not an error
    """Raised inside the model's forward pass to stop a cancelled job between chunks."""


@dataclass(frozen=True)
class Limits:
    """What an upload may be (at most ``max_bytes`` bytes and ``max_pixels`` pixels), and how
    many uploads, jobs and computed results are kept."""

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_images: int = 64
    max_jobs: int = 32
    max_cached: int = 256


@dataclass
class ImageEntry:
    """An image the model was shown: the model's input and its predictions."""

    id: str
    name: str
    x: Tensor  # (1, C, H, W): the model's input
    probs: Tensor  # (classes,)
    mask: Tensor | None = None  # (H, W) bool, ground truth where known
    label: int | None = None
    example: bool = False
    note: str | None = None  # a caveat from decoding (e.g. the first frame of an animation)


@dataclass
class MethodResult:
    """One method's explanation of one image."""

    method: str
    map: Tensor | None = None  # (H, W) in [0, 1]
    raw: Tensor | None = None  # (h, w) before ReLU, normalisation and upsampling
    layer: str = ""
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Job:
    """A request to explain one image with several methods at one layer and one class."""

    id: str
    image: str
    methods: list[str]
    layer: str | None
    target: int
    status: str = "queued"  # queued, running, done, cancelled, error
    current: str | None = None
    done: int = 0
    fraction: float = 0.0  # of the current method, where it can be known
    passes: int = 0  # forward passes of the current method
    results: dict[str, MethodResult] = field(default_factory=dict)
    cached: set[str] = field(default_factory=set)  # methods answered from the cache
    error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def progress(self) -> float:
        """Overall progress in [0, 1]."""
        if self.status in ("done", "cancelled", "error"):
            return 1.0
        return min(1.0, (self.done + min(self.fraction, 0.99)) / max(1, len(self.methods)))


def decode_image(data: bytes, limits: Limits) -> Image.Image:
    """Bytes of an uploaded file -> RGB PIL image, or :class:`InputError` saying why not.

    The size in bytes and the pixel count (from the header) are checked before any pixel is
    decoded, so a decompression bomb is refused without being expanded; only the formats in
    :data:`FORMATS` are tried. Decoding is :func:`camlens.io.read_image` (EXIF orientation,
    first frame of an animation, 16-bit, transparency); a caveat is kept in
    ``image.info["camlens.note"]``.
    """
    if not data:
        raise InputError("the file is empty; upload a PNG, JPEG, GIF, BMP, WEBP or TIFF image")
    if len(data) > limits.max_bytes:
        raise InputError(
            f"the file is {len(data) / 2**20:.1f} MiB; the limit is "
            f"{limits.max_bytes / 2**20:.0f} MiB"
        )
    img, note = read_image(data, max_pixels=limits.max_pixels, formats=FORMATS, name="the image")
    if note:
        img.info["camlens.note"] = note
    return img


def _mask_like(mask: Tensor, spec: ModelSpec) -> Tensor:
    """Put a ground-truth mask through the same resize and crop as :func:`camlens.io.preprocess`."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    m = mask[None].float()
    if spec.resize is None:
        m = TF.resize(m, [spec.size, spec.size], interpolation=InterpolationMode.NEAREST)
    else:
        size = list(spec.resize) if isinstance(spec.resize, (tuple, list)) else spec.resize
        m = TF.resize(m, size, interpolation=InterpolationMode.NEAREST)
        m = TF.center_crop(m, [spec.size, spec.size])
    return m[0] > 0.5


class AppState:
    """The model, the images, the jobs; everything the page can ask for, nothing more.

    Args:
        spec: the model to explain (from :func:`camlens.models.build_model`).
        batch_size: forward batch of the methods that re-run the model; cancellation and
            progress are checked between such batches.
        limits: upload limits.
        examples: how many built-in ``shapes`` images (with masks) to preload.
    """

    def __init__(
        self,
        spec: ModelSpec,
        batch_size: int = 16,
        limits: Limits | None = None,
        examples: int = 6,
    ):
        self.spec = spec
        self.model: nn.Module = spec.model.eval()
        self.device = next(self.model.parameters(), torch.empty(0)).device
        self.batch_size = int(batch_size)
        self.limits = limits or Limits()
        self.lock = threading.Lock()  # one explanation at a time on the shared model
        self._store_lock = threading.Lock()
        self.images: OrderedDict[str, ImageEntry] = OrderedDict()
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.explain_calls = 0  # how many explanations were computed (tests read it)
        # (image, method, layer, class) -> result: ticking one more method, or coming back to
        # a class, does not recompute what was already computed.
        self._cache: OrderedDict[tuple[str, str, str, int], MethodResult] = OrderedDict()
        # Predictions run on a copy, so that an upload is answered while a long job holds the
        # model (whose layers carry the engine's capture hooks during a job).
        try:
            self._predictor: nn.Module = copy.deepcopy(self.model).eval()
            self._predict_lock: Any = contextlib.nullcontext()
        except Exception:  # a model that cannot be copied shares the lock instead
            self._predictor, self._predict_lock = self.model, self.lock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="camlens-app")
        self._running: Job | None = None
        self._hook = None
        self._expected = 1
        self.examples: list[str] = []
        self._add_examples(examples)
        probe = next(iter(self.images.values())).x if self.images else self._blank()
        self.num_classes = int(self._predict(probe).shape[1])
        self.layers, self.channels = self._spatial_layers(probe)
        try:
            self.auto_layer: str | None = find_last_spatial_layer(self.model, probe)
        except CamlensError:
            self.auto_layer = None

    # ----------------------------------------------------------------- images
    def _blank(self) -> Tensor:
        return self._prepare(Image.new("RGB", (self.spec.size,) * 2, (128, 128, 128))).to(
            self.device
        )

    def _prepare(self, img: Image.Image) -> Tensor:
        """One PIL image -> the (1, C, H, W) input the model expects (the spec's own
        ``preprocess`` where it has one, e.g. timm's mean/std; else the preset's)."""
        own = getattr(self.spec, "preprocess", None)
        if callable(own):
            return own([img])
        return preprocess([img], self.spec.size, self.spec.resize, self.spec.preset)

    def _stats(self) -> dict[str, Any]:
        """The normalisation to undo for pictures: the spec's mean/std where it has them."""
        return {"mean": getattr(self.spec, "mean", None), "std": getattr(self.spec, "std", None)}

    def _add_examples(self, n: int) -> None:
        if n <= 0:
            return
        from camlens.demo import CLASSES, shapes

        images, labels, masks = shapes(n, seed=7)
        demo = self.spec.name == "demo"
        for i in range(n):
            arr = (images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            label = int(labels[i])
            entry = self._add(
                Image.fromarray(arr),
                f"{CLASSES[label]} (example)",
                mask=_mask_like(masks[i], self.spec),
                label=label if demo else None,
                example=True,
            )
            self.examples.append(entry.id)

    def _predict(self, x: Tensor) -> Tensor:
        """The model's (B, classes) logits for x, no grad, on the predictor copy."""
        x = x.to(self.device)
        with self._predict_lock, torch.no_grad():
            out = self._predictor(x)
        from camlens import models

        to_logits = getattr(models, "logits", None)  # dicts, ModelOutputs (where supported)
        if callable(to_logits) and not isinstance(out, Tensor):
            out = to_logits(out)
        if not isinstance(out, Tensor) or out.ndim != 2:
            raise CamlensError("the app explains classifiers whose output is (B, classes) logits")
        return out

    def _add(
        self,
        img: Image.Image,
        name: str,
        mask: Tensor | None = None,
        label: int | None = None,
        example: bool = False,
    ) -> ImageEntry:
        x = self._prepare(img).to(self.device)
        out = self._predict(x)
        entry = ImageEntry(
            id=uuid.uuid4().hex[:12],
            name=name,
            x=x,
            probs=out[0].float().softmax(0).cpu(),
            mask=mask,
            label=label,
            example=example,
        )
        with self._store_lock:
            self.images[entry.id] = entry
            user = [k for k, v in self.images.items() if not v.example]
            for key in user[: max(0, len(user) - self.limits.max_images)]:
                del self.images[key]
        return entry

    def add_upload(self, data: bytes, name: str) -> ImageEntry:
        """Decode an uploaded file (see :func:`decode_image`) and predict its classes."""
        img = decode_image(data, self.limits)
        clean = "".join(c for c in name if c.isprintable())[:80] or "upload"
        entry = self._add(img, clean)
        entry.note = img.info.get("camlens.note")
        return entry

    def image(self, image_id: str) -> ImageEntry:
        """The stored image with this id, or :class:`InputError`."""
        with self._store_lock:
            entry = self.images.get(image_id)
        if entry is None:
            raise InputError(f"no image {image_id!r} (uploads are kept for the last few images)")
        return entry

    def class_name(self, c: int) -> str:
        """The class name where the model has names, else ``class c``."""
        names = self.spec.classes
        return names[c] if 0 <= c < len(names) else f"class {c}"

    def image_info(self, entry: ImageEntry, k: int = 5) -> dict[str, Any]:
        """What the page shows about an image: its top classes with probabilities."""
        top = entry.probs.topk(min(k, entry.probs.numel()))
        return {
            "id": entry.id,
            "name": entry.name,
            "example": entry.example,
            "has_mask": entry.mask is not None,
            "note": entry.note,
            "label": None if entry.label is None else self.class_name(entry.label),
            "top": [
                {"class": int(c), "name": self.class_name(int(c)), "prob": float(p)}
                for p, c in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            ],
        }

    def input_png(self, image_id: str) -> bytes:
        """The image as the model sees it (resized, cropped), as PNG bytes."""
        from camlens.viz import denormalize

        rgb = denormalize(self.image(image_id).x[0], self.spec.preset, **self._stats())
        return _png(Image.fromarray((rgb * 255).round().astype(np.uint8)))

    # ----------------------------------------------------------------- layers, methods
    @torch.no_grad()
    def _spatial_layers(self, x: Tensor) -> tuple[list[str], dict[str, int]]:
        """Modules whose output is a spatial (B, C, h, w) map, in the model's module order."""
        seen: dict[str, int] = {}
        hooks = []
        for name, module in self.model.named_modules():
            if not name:
                continue

            def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
                if isinstance(out, Tensor) and out.ndim == 4 and out.shape[-2:].numel() > 1:
                    seen[name] = int(out.shape[1])

            hooks.append(module.register_forward_hook(hook))
        try:
            with self.lock:
                self.model(x)
        finally:
            for h in hooks:
                h.remove()
        order = [name for name, _ in self.model.named_modules() if name in seen]
        return order, seen

    def methods_info(self) -> list[dict[str, Any]]:
        """Every registered method, with its paper and whether it is slow (re-runs the model)."""
        out = []
        for name in methods():
            info = get_method(name)
            out.append(
                {
                    "name": name,
                    "paper": info.paper,
                    "gradients": info.needs_grads,
                    "slow": info.inputs in SLOW_INPUTS,
                    "default": name in DEFAULT_METHODS,
                }
            )
        return out

    # ----------------------------------------------------------------- jobs
    def submit(
        self, image_id: str, method_names: list[str], layer: str | None, target: int | None
    ) -> Job:
        """Queue a job; bad methods, layers, classes or image ids raise :class:`InputError`."""
        entry = self.image(image_id)
        if not method_names:
            raise InputError("choose at least one method")
        names = []
        for m in method_names:
            name = get_method(m).name
            if name not in names:
                names.append(name)
        if layer in (None, "", "auto"):
            layer = None
        elif layer not in self.channels:
            raise InputError(
                f"unknown layer {layer!r}; the layers with spatial outputs are: "
                f"{', '.join(self.layers[-8:])}, ..."
            )
        classes = entry.probs.numel()
        if target is None:
            target = int(entry.probs.argmax())
        if not 0 <= int(target) < classes:
            raise InputError(f"class {target} is out of range: the model has {classes} classes")
        job = Job(uuid.uuid4().hex[:12], image_id, names, layer, int(target))
        with self._store_lock:
            self.jobs[job.id] = job
            while len(self.jobs) > self.limits.max_jobs:
                old = next(iter(self.jobs))
                self.jobs[old].cancel.set()
                del self.jobs[old]
        self._executor.submit(self._run, job)
        return job

    def job(self, job_id: str) -> Job:
        """The job with this id, or :class:`InputError`."""
        with self._store_lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise InputError(f"no job {job_id!r}")
        return job

    def cancel(self, job_id: str) -> Job:
        """Ask a job to stop; it stops before its next forward pass."""
        job = self.job(job_id)
        job.cancel.set()
        if job.status == "queued":  # not started: the worker will skip it
            job.status = "cancelled"
            job.finished.set()
        return job

    def _pre_hook(self, _module: nn.Module, args: Any) -> None:
        job = self._running
        if job is None or threading.current_thread().name.find("camlens-app") < 0:
            return
        if job.cancel.is_set():
            raise JobCancelled(job.id)
        if args and isinstance(args[0], Tensor):
            job.passes += 1
            job.fraction += args[0].shape[0] / max(1, self._expected)

    def _expected_items(self, method: str, layer: str) -> int:
        """How many perturbed inputs a Score-CAM-family method scores (channels x samples)."""
        info = get_method(method)
        if info.inputs != "input_probe":
            return 0
        params = inspect.signature(info.fn).parameters
        mult = 1
        for key in ("samples", "steps"):
            if key in params and isinstance(params[key].default, int):
                mult *= params[key].default
        return self.channels.get(layer, 1) * mult

    def _run(self, job: Job) -> None:
        entry = self.images.get(job.image)
        if entry is None:
            job.status, job.error = "error", "the image is no longer stored"
            job.finished.set()
            return
        try:
            with self.lock:
                if job.cancel.is_set():
                    job.status = "cancelled"
                    return
                job.status = "running"
                self._running = job
                self._hook = self.model.register_forward_pre_hook(self._pre_hook)
                try:
                    for method in job.methods:
                        if job.cancel.is_set():
                            raise JobCancelled(job.id)
                        self._run_method(job, entry, method)
                        job.done += 1
                    job.status = "done"
                finally:
                    self._hook.remove()
                    self._running = None
        except JobCancelled:
            job.status = "cancelled"
        except Exception as exc:  # keep the app alive whatever a model does
            job.status, job.error = "error", f"{type(exc).__name__}: {exc}"
        finally:
            job.current = None
            job.finished.set()

    def _run_method(self, job: Job, entry: ImageEntry, method: str) -> None:
        job.current, job.fraction, job.passes = method, 0.0, 0
        layer = job.layer or self.auto_layer
        key = (entry.id, method, layer or "", job.target)
        with self._store_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
        if hit is not None:
            job.cached.add(method)
            job.results[method] = hit
            return
        self._expected = self._expected_items(method, layer or "")
        result = MethodResult(method)  # published in job.results only once complete
        try:
            explainer = Explainer(self.model, method, layer, batch_size=self.batch_size)
            target = torch.tensor([job.target], device=entry.x.device)
            start = time.perf_counter()
            ex = explainer(entry.x, target)
            result.seconds = time.perf_counter() - start
            self.explain_calls += 1
        except CamlensError as exc:  # the method does not fit: say why, and keep the answer
            result.error = str(exc)
            self._publish(job, key, result)
            return
        except JobCancelled:
            raise
        except Exception as exc:  # anything else (out of memory, a model's own error): say it,
            result.error = f"{type(exc).__name__}: {exc}"  # run the other methods, cache nothing
            job.results[method] = result
            return
        name = ex.layers[0] if ex.layers else ""
        result.layer = ", ".join(ex.layers)
        result.map = ex.maps[0].detach().float().cpu()
        raw = ex.raw.get(name)
        result.raw = None if raw is None else raw[0].detach().float().cpu()
        if entry.mask is not None:
            from camlens.metrics import iou, pointing_game

            maps, masks = ex.maps[:1].cpu(), entry.mask[None].cpu()
            result.metrics = {
                "pointing_game": float(pointing_game(maps, masks)[0]),
                "iou": float(iou(maps, masks)[0]),
            }
        self._publish(job, key, result)

    def _publish(self, job: Job, key: tuple[str, str, str, int], result: MethodResult) -> None:
        """Show a complete result to the job's readers, and keep it for later jobs."""
        job.results[result.method] = result
        with self._store_lock:
            self._cache[key] = result
            while len(self._cache) > self.limits.max_cached:
                self._cache.popitem(last=False)

    def job_info(self, job: Job) -> dict[str, Any]:
        """The job's status and, per finished method, its time, layer, metrics or error."""
        return {
            "id": job.id,
            "image": job.image,
            "status": job.status,
            "progress": job.progress,
            "current": job.current,
            "passes": job.passes,
            "target": job.target,
            "target_name": self.class_name(job.target),
            "layer": job.layer or self.auto_layer,
            "methods": job.methods,
            "error": job.error,
            "results": [
                {
                    "method": r.method,
                    "ok": r.map is not None,
                    "seconds": r.seconds,
                    "layer": r.layer,
                    "metrics": r.metrics,
                    "error": r.error,
                    "cached": r.method in job.cached,
                }
                for r in list(job.results.values())
            ],
        }

    # ----------------------------------------------------------------- pictures
    def _result(self, job_id: str, method: str) -> tuple[ImageEntry, MethodResult]:
        job = self.job(job_id)
        result = job.results.get(method)
        if result is None or result.map is None:
            raise InputError(f"job {job_id!r} has no map for {method!r} (yet)")
        return self.image(job.image), result

    def render(
        self, job_id: str, method: str, kind: str, colormap: str = "jet", alpha: float = 0.5
    ) -> bytes:
        """A stored map as PNG: ``kind`` "overlay" (blended over the image) or "heatmap".

        Re-colouring reads the cached map: nothing is recomputed.
        """
        from camlens.viz import heatmap_image, overlay

        entry, result = self._result(job_id, method)
        if not (isinstance(alpha, float) and math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
            raise InputError(f"opacity must be in [0, 1], got {alpha}")
        if kind == "overlay":
            img = overlay(
                entry.x[0], result.map, colormap, alpha, self.spec.preset, **self._stats()
            )
        elif kind == "heatmap":
            img = heatmap_image(result.map, colormap)
        else:
            raise InputError(f"kind must be 'overlay' or 'heatmap', got {kind!r}")
        return _png(img)

    def raw_npz(self, job_id: str) -> bytes:
        """The job's maps as ``.npz``: ``<method>`` the raw (h, w) map at the layer's
        resolution (as :func:`camlens.viz.save_raw` writes it), ``<method>_map`` the (H, W)
        map in [0, 1]."""
        job = self.job(job_id)
        arrays: dict[str, np.ndarray] = {}
        for r in list(job.results.values()):
            if r.map is None:
                continue
            if r.raw is not None:
                arrays[r.method] = r.raw.numpy()
            arrays[f"{r.method}_map"] = r.map.numpy()
        if not arrays:
            raise InputError(f"job {job_id!r} has no maps (yet)")
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    def close(self) -> None:
        """Cancel every job and stop the worker thread."""
        for job in list(self.jobs.values()):
            job.cancel.set()
        self._executor.shutdown(wait=True, cancel_futures=True)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()

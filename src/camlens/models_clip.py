"""Building open_clip models for the CLI (``open_clip:NAME``): random weights or a local file.

open_clip is an optional extra (``pip install camlens[clip]``), imported here only. Nothing is
downloaded: a pretrained tag would fetch weights, so ``--weights`` takes a local state dict
(safetensors, or a torch file read with ``weights_only=True``); without it the model has random
weights (the CLI warns). Preprocessing follows the model's own configuration (its image size,
mean, std and interpolation: OpenAI CLIP's statistics for most models).
"""

from __future__ import annotations

import difflib

from camlens.errors import InputError
from camlens.io import load_weights


def build_open_clip(name: str, weights: str | None):  # -> camlens.models.ModelSpec
    """An open_clip model by architecture name (``ViT-B-32``, ``RN50``, see
    ``open_clip.list_models()``), random init or ``weights`` from a local file."""
    from camlens.models import ModelSpec, _import_extra, _normalisation

    open_clip = _import_extra("open_clip", "clip")
    if not name:
        raise InputError("open_clip: needs an architecture name, e.g. open_clip:ViT-B-32")
    names = open_clip.list_models()
    if name not in names:
        near = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise InputError(
            f"unknown open_clip model {name!r}.{hint} See open_clip.list_models() for the names."
        )
    if weights == "DEFAULT":
        raise InputError(
            "open_clip pretrained tags download their weights; camlens stays offline: pass "
            "--weights PATH to a local state dict (.safetensors or .pth)"
        )
    model = open_clip.create_model(name, pretrained=None, require_pretrained=False)
    if weights is not None:
        load_weights(model, weights)
    visual = model.visual
    size = getattr(visual, "image_size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    cfg = getattr(visual, "preprocess_cfg", {}) or {}
    mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
    std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
    interpolation = str(cfg.get("interpolation", "bicubic"))
    if interpolation not in ("bilinear", "bicubic", "nearest"):
        interpolation = "bicubic"
    return ModelSpec(
        model.eval(),
        f"open_clip:{name}",
        [],
        size=size,
        resize=size,
        interpolation=interpolation,
        **_normalisation(mean, std),
    )

"""Building the models the CLI can explain: torchvision classifiers by name, the demo models,
timm models (``timm:NAME``), saved Hugging Face transformers models (``hf:LOCAL_DIR``) and
Ultralytics YOLO detectors (``ultralytics:CONFIG``).

timm and transformers are optional extras (``pip install camlens[timm]`` / ``camlens[hf]``);
they are imported inside the functions that need them, never by ``import camlens``. Nothing is
downloaded unless the caller asks for pretrained weights with ``weights="DEFAULT"``.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from camlens.errors import CamlensError, InputError, UnsupportedModelError
from camlens.io import load_state, load_weights, preprocess, read_state_dict
from camlens.viz import PRESETS


class WeightsUnavailableError(CamlensError, RuntimeError):
    """Pretrained weights were asked for but could not be had (e.g. no network)."""


class MissingExtraError(CamlensError, ImportError):
    """An optional dependency (timm, transformers) is needed but not installed."""


@dataclass
class ModelSpec:
    """A model ready to explain, with what the CLI needs to feed and label it.

    Images are prepared as :func:`camlens.io.preprocess` does: shorter side to ``resize``
    (a pair (h, w): exactly that; ``None``: straight to ``size`` x ``size``), centre crop
    ``size``, then normalised with
    ``mean``/``std`` when they are given, else with the named ``preset``.
    """

    model: nn.Module
    name: str
    classes: list[str] = field(default_factory=list)
    size: int = 224
    resize: int | tuple[int, int] | None = 256
    preset: str = "imagenet"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str = "bilinear"
    #: "classify", or "detect" for detectors (``ultralytics:``), which the CLI explains box by
    #: box after letterboxing each image to ``size`` (see :mod:`camlens.detection.yolo`)
    task: str = "classify"

    @property
    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """(mean, std) the inputs are normalised with, or None for inputs in [0, 1]."""
        if self.mean is not None and self.std is not None:
            return self.mean, self.std
        return PRESETS[self.preset]

    def preprocess(self, images: Sequence[Any]) -> Tensor:
        """PIL images -> the (B, 3, size, size) batch this model expects."""
        return preprocess(
            images,
            self.size,
            self.resize,
            self.preset,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
        )


def logits(output: Any) -> Tensor:
    """The logits in a model's output: a tensor is returned as it is; a dict or a Hugging Face
    ``ModelOutput`` gives its ``"logits"``; a tuple or list gives its first element.

    Anything else raises :class:`~camlens.errors.UnsupportedModelError`.
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        if isinstance(output.get("logits"), Tensor):
            return output["logits"]
        raise UnsupportedModelError(
            f"the model returned a {type(output).__name__} with keys {list(output)[:8]} and no "
            "'logits'; camlens reads class scores from a tensor, a dict/ModelOutput with "
            "'logits', or the first element of a tuple"
        )
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise UnsupportedModelError(
        f"the model returned a {type(output).__name__}; camlens reads class scores from a "
        "tensor, a dict/ModelOutput with 'logits', or the first element of a tuple"
    )


def torchvision_names() -> list[str]:
    """Every torchvision classification model name, sorted."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_model(name: str, weights: str | None = None, trust_pickle: bool = False) -> ModelSpec:
    """``name``: "demo" (the shapes CNN), "demo-vit" (the shapes hybrid ViT), a torchvision
    classification model ("resnet50"), ``"timm:NAME"`` (any ``timm.create_model`` name, with an
    optional pretrained tag) or ``"hf:LOCAL_DIR"`` (a directory written by a transformers image
    classifier's ``save_pretrained``).

    ``weights``: None (demo models: the shipped weights; torchvision and timm: random init),
    "DEFAULT" (torchvision's or timm's pretrained weights: needs the network or a filled cache),
    or a path to a state dict (safetensors, or torch with ``weights_only=True``). ``hf:`` models
    load the weights saved in their directory and take no ``weights``.

    ``"ultralytics:CONFIG"``: a YOLO detector (pip install camlens[yolo]) from a config name
    resolved as Ultralytics does (``ultralytics:yolov8n.yaml``) or a ``.yaml`` path, random
    weights unless ``weights`` is a state dict; a ``.pt`` checkpoint is a pickle and is loaded
    only with ``trust_pickle``.
    """
    if name.startswith("ultralytics:"):
        from camlens.detection.yolo import model_spec

        return model_spec(name.removeprefix("ultralytics:"), weights, trust_pickle)
    if name.startswith("timm:"):
        return _build_timm(name.removeprefix("timm:"), weights)
    if name.startswith("hf:"):
        return _build_hf(name.removeprefix("hf:"), weights)
    if name.startswith("open_clip:"):  # an image-text model: explain it with prompts
        from camlens.models_clip import build_open_clip

        return build_open_clip(name.removeprefix("open_clip:"), weights)
    if name == "demo":
        from camlens.demo import CLASSES, ShapesCNN, load_model

        if weights in (None, "DEFAULT"):
            model: nn.Module = load_model()
        else:
            model = load_weights(ShapesCNN(), weights).eval()
        return ModelSpec(model, name, list(CLASSES), size=96, resize=None, preset="none")
    if name == "demo-vit":
        from camlens.demo import CLASSES, ShapesViT, load_model

        if weights in (None, "DEFAULT"):
            model = load_model("vit")
        else:
            model = load_weights(ShapesViT(), weights).eval()
        return ModelSpec(model, name, list(CLASSES), size=96, resize=None, preset="none")
    import torchvision

    names = torchvision_names()
    if name not in names:
        near = difflib.get_close_matches(name, names, n=4)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise InputError(
            f"unknown model {name!r}.{hint} Use 'demo', 'demo-vit', a torchvision name, "
            "timm:NAME or hf:LOCAL_DIR."
        )
    enum = torchvision.models.get_model_weights(name)
    default = enum.DEFAULT
    if weights == "DEFAULT":
        try:
            model = torchvision.models.get_model(name, weights=default)
        except Exception as exc:  # URLError, HTTPError, socket errors, partial files
            raise WeightsUnavailableError(
                f"could not download torchvision's pretrained weights for {name} "
                f"({_first_line(exc)}); this needs the network or a torch hub cache. Offline, "
                "pass --weights PATH to a local state dict (.safetensors or .pth)."
            ) from None
    else:
        model = torchvision.models.get_model(name, weights=None)
        if weights is not None:
            load_weights(model, Path(weights))
    classes = list(default.meta.get("categories", []))
    crop = getattr(default.transforms(), "crop_size", [224])[0]
    resize = getattr(default.transforms(), "resize_size", [256])[0]
    return ModelSpec(model.eval(), name, classes, size=crop, resize=resize, preset="imagenet")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:120]}" if text else type(exc).__name__


def _normalisation(mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """The preset that has exactly these statistics, or explicit mean/std when none has."""
    mean_t, std_t = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    for preset, stats in PRESETS.items():
        if stats is not None and _close(stats[0], mean_t) and _close(stats[1], std_t):
            return {"preset": preset}
    if _close(mean_t, (0.0,) * len(mean_t)) and _close(std_t, (1.0,) * len(std_t)):
        return {"preset": "none"}
    # no preset has these statistics: "custom" makes code that reads only the preset fail loudly
    return {"preset": "custom", "mean": mean_t, "std": std_t}


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b, strict=True))


def _square(size: Sequence[int] | int, what: str) -> int:
    if isinstance(size, int):
        return size
    h, w = (int(v) for v in size)
    if h != w:
        raise UnsupportedModelError(
            f"{what} is {h} x {w}; camlens' CLI prepares square inputs only. Use the Python API "
            "(camlens.explain) with your own preprocessing for non-square inputs."
        )
    return h


def _import_extra(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{module} is not installed; it is an optional extra: pip install camlens[{extra}]"
        ) from None


# --- timm -------------------------------------------------------------------------------------


def _build_timm(name: str, weights: str | None) -> ModelSpec:
    """A timm model: random init, timm's pretrained weights ("DEFAULT"), or a local state dict.

    Preprocessing follows the model's data config (``timm.data.resolve_data_config``): input
    size, mean/std, ``crop_pct`` (resize the shorter side to ``floor(size / crop_pct)``, then
    centre crop, as timm's eval transform) and interpolation. A state dict whose classifier has
    another number of classes than the default head gets a classifier of that size.
    """
    timm = _import_extra("timm", "timm")
    from timm.data import resolve_data_config

    if not name:
        raise InputError(
            "timm: needs a model name, e.g. timm:resnet50 or timm:vit_small_patch16_224"
        )
    if not timm.is_model(name):
        near = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.5)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise InputError(
            f"unknown timm model {name!r}.{hint} See timm.list_models() for the names."
        )
    if weights == "DEFAULT":
        try:
            model = timm.create_model(name, pretrained=True)
        except Exception as exc:  # hub errors, connection errors, missing cache
            raise WeightsUnavailableError(
                f"could not get timm's pretrained weights for {name} ({_first_line(exc)}); this "
                "needs the network or a filled Hugging Face hub cache. Offline, pass --weights "
                "PATH to a local state dict (.safetensors or .pth)."
            ) from None
    else:
        model = timm.create_model(name, pretrained=False)
        if weights is not None:
            state = read_state_dict(weights)
            classes = _head_size(model, state)
            if classes is not None:
                model.reset_classifier(classes)
            load_state(model, state, weights)
    config = resolve_data_config({}, model=model)
    size = _square(config["input_size"][1:], f"timm:{name}'s input size")
    crop_pct = float(config.get("crop_pct") or 1.0)
    scale = math.floor(size / crop_pct)
    # timm's eval transform: "squash" resizes to (scale, scale), "center" (and, close enough,
    # "border") the shorter side to scale; then a centre crop of size
    resize: int | tuple[int, int] = (scale, scale) if config.get("crop_mode") == "squash" else scale
    interpolation = str(config.get("interpolation", "bilinear"))
    if interpolation not in ("bilinear", "bicubic", "nearest"):
        interpolation = "bilinear"
    return ModelSpec(
        model.eval(),
        f"timm:{name}",
        _timm_classes(model),
        size=size,
        resize=resize,
        interpolation=interpolation,
        **_normalisation(config["mean"], config["std"]),
    )


def _head_size(model: nn.Module, state: Mapping[str, Tensor]) -> int | None:
    """The number of classes of the state dict's classifier when it is not the model's."""
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier")
    heads = [classifier] if isinstance(classifier, str) else list(classifier or [])
    for head in heads:
        weight = state.get(f"{head}.weight")
        if weight is not None and weight.ndim >= 1 and weight.shape[0] != model.num_classes:
            return int(weight.shape[0])
    return None


def _timm_classes(model: nn.Module) -> list[str]:
    """Readable label names where timm knows the label set (ImageNet-1k, -12k, -22k), else []."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if not subset:
            return []
        names = ImageNetInfo(subset).label_descriptions()
    except Exception:  # unknown label set, missing package data: no names, not a failure
        return []
    if len(names) != getattr(model, "num_classes", len(names)):
        return []
    return [n.split(",")[0].strip() for n in names]


# --- Hugging Face transformers ----------------------------------------------------------------

_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
_GENERIC_LABEL = re.compile(r"LABEL_\d+")


def _build_hf(directory: str, weights: str | None) -> ModelSpec:
    """A transformers image classifier from a local ``save_pretrained`` directory, offline.

    Loaded with ``AutoModelForImageClassification.from_pretrained(local_files_only=True,
    trust_remote_code=False)``, from ``model.safetensors`` when the directory has it
    (``use_safetensors=True``), else from a torch file read with ``weights_only=True``.
    Preprocessing comes from ``preprocessor_config.json`` beside the model; classes from
    ``config.id2label``.
    """
    path = Path(directory).expanduser()
    if not directory:
        raise InputError("hf: needs a directory, e.g. hf:./my-vit (a save_pretrained output)")
    if weights is not None:
        raise InputError(
            f"hf:{directory} loads the weights saved in its directory; drop --weights (to use "
            "other weights, save them with the model's save_pretrained)"
        )
    if not path.is_dir():
        raise InputError(
            f"hf:{directory}: no such directory; pass a folder written by a transformers "
            "model's save_pretrained (config.json and model.safetensors)"
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise InputError(
            f"hf:{directory}: not a saved transformers model (no config.json); pass a folder "
            "written by save_pretrained"
        )
    try:
        raw_config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"hf:{directory}: config.json is not readable JSON ({exc})") from None
    has_safetensors = (
        any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file()
    )
    has_torch = any(
        (path / f).is_file() for f in ("pytorch_model.bin", "pytorch_model.bin.index.json")
    )
    if not has_safetensors and not has_torch:
        raise InputError(
            f"hf:{directory}: no weights (model.safetensors or pytorch_model.bin) in this folder"
        )
    transformers = _import_extra("transformers", "hf")
    options: dict[str, Any] = {
        "local_files_only": True,
        "trust_remote_code": False,
        "use_safetensors": has_safetensors,
    }
    loader = transformers.AutoModelForImageClassification
    if (
        not has_safetensors
        and "weights_only"
        in inspect.signature(transformers.PreTrainedModel.from_pretrained).parameters
    ):
        options["weights_only"] = True  # older releases read torch files with it by default
    bars = transformers.utils.logging
    quiet = bars.is_progress_bar_enabled()
    if quiet:
        bars.disable_progress_bar()  # no "Loading weights" bar on the CLI's stderr
    try:
        model, info = loader.from_pretrained(str(path), output_loading_info=True, **options)
    except ValueError as exc:  # an architecture without an image classification head
        kind = raw_config.get("model_type", "?")
        archs = raw_config.get("architectures") or ["?"]
        remote = (
            " It needs remote code, which camlens never runs." if "auto_map" in raw_config else ""
        )
        raise UnsupportedModelError(
            f"hf:{directory}: cannot load it as an image classifier (model_type {kind!r}, "
            f"architectures {archs}; {_first_line(exc)}).{remote} camlens' hf: loads "
            "AutoModelForImageClassification models (ViT, DeiT, ResNet, ConvNeXt, Swin, ...)"
        ) from None
    except (OSError, RuntimeError) as exc:
        raise InputError(
            f"hf:{directory}: could not load the saved model ({_first_line(exc)})"
        ) from None
    finally:
        if quiet:
            bars.enable_progress_bar()
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
        model = model.float()  # checkpoints saved in half precision load as saved in v5
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        archs = raw_config.get("architectures") or ["?"]
        raise UnsupportedModelError(
            f"hf:{directory}: the saved weights lack {len(missing)} parameters of "
            f"{type(model).__name__} (e.g. {missing[:3]}), which would be random: the folder "
            f"holds {archs}, not a trained image classifier"
        )
    prep = _hf_preprocessing(path, model.config)
    labels = getattr(model.config, "id2label", None) or {}
    classes = [str(labels.get(i, labels.get(str(i), ""))) for i in range(len(labels))]
    if all(_GENERIC_LABEL.fullmatch(c) for c in classes) or not all(classes):
        classes = []
    return ModelSpec(model.eval(), f"hf:{directory}", classes, **prep)


def _hf_size(value: Any, what: str) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping):
        if "height" in value and "width" in value:
            return _square((int(value["height"]), int(value["width"])), what)
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
    raise UnsupportedModelError(f"{what} {value!r} is not a size camlens can prepare inputs for")


def _hf_preprocessing(path: Path, config: Any) -> dict[str, Any]:
    """size, resize, interpolation and normalisation from ``preprocessor_config.json``.

    The image processors' rules: ``size`` {height, width} or an int resizes straight to it;
    ``shortest_edge`` with ``crop_pct`` (ConvNeXt/ResNet processors) resizes the shorter side
    to ``shortest_edge / crop_pct`` and centre crops ``shortest_edge`` (below 384, else warps);
    ``shortest_edge`` with ``do_center_crop`` (CLIP, BiT) resizes the shorter side and crops
    ``crop_size``; {height, width} with ``do_center_crop`` (DeiT, BEiT) resizes to exactly
    that and crops ``crop_size``. Without the file: the config's ``image_size``, ImageNet
    statistics.
    """
    file = path / "preprocessor_config.json"
    if not file.is_file():
        size = getattr(config, "image_size", 224)
        return {"size": _hf_size(size, "config.image_size"), "resize": None, "preset": "imagenet"}
    try:
        proc = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{file}: not readable JSON ({exc})") from None
    where = f"{file.name}"
    size_value = proc.get("size", getattr(config, "image_size", 224))
    size = _hf_size(size_value, f"{where} size")
    resize: int | tuple[int, int] | None = None
    shortest = isinstance(size_value, Mapping) and "shortest_edge" in size_value
    if shortest and proc.get("crop_pct") is not None:
        if size < 384:
            resize = int(size / float(proc["crop_pct"]))
    elif shortest:
        resize = size
        if proc.get("do_center_crop", True) and proc.get("crop_size") is not None:
            size = _hf_size(proc["crop_size"], f"{where} crop_size")
    elif proc.get("do_center_crop") and proc.get("crop_size") is not None:
        resize = (size, size)  # DeiT/BEiT processors: resize to exactly (h, w), then crop
        size = _hf_size(proc["crop_size"], f"{where} crop_size")
    if proc.get("do_resize") is False:
        raise UnsupportedModelError(
            f"{where} has do_resize false: inputs of any size; camlens' CLI needs a fixed size"
        )
    interpolation = _PIL_RESAMPLE.get(int(proc.get("resample", 2)), "bilinear")
    out: dict[str, Any] = {"size": size, "resize": resize, "interpolation": interpolation}
    if proc.get("do_normalize", True):
        mean = proc.get("image_mean", PRESETS["imagenet"][0])  # type: ignore[index]
        std = proc.get("image_std", PRESETS["imagenet"][1])  # type: ignore[index]
        if isinstance(mean, (int, float)):
            mean = [mean] * 3
        if isinstance(std, (int, float)):
            std = [std] * 3
        out.update(_normalisation(mean, std))
    else:
        out["preset"] = "none"
    return out

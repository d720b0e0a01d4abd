"""Building the models the CLI can explain: torchvision classifiers by name, or the demo models."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from camlens.errors import CamlensError, InputError
from camlens.io import load_weights


class WeightsUnavailableError(CamlensError, RuntimeError):
    """Pretrained weights were asked for but could not be had (e.g. no network)."""


@dataclass
class ModelSpec:
    """A model ready to explain, with what the CLI needs to feed and label it."""

    model: nn.Module
    name: str
    classes: list[str] = field(default_factory=list)
    size: int = 224
    resize: int | None = 256
    preset: str = "imagenet"


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_model(name: str, weights: str | None = None) -> ModelSpec:
    """``name``: "demo" (the shapes CNN), "demo-vit" (the shapes hybrid ViT) or a torchvision
    classification model ("resnet50").

    ``weights``: None (demo models: the shipped weights; torchvision: random init), "DEFAULT"
    (torchvision's pretrained weights: needs the network or a filled torch hub cache), or a
    path to a state dict (safetensors, or torch with ``weights_only=True``).
    """
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
            f"unknown model {name!r}.{hint} Use 'demo', 'demo-vit' or a torchvision name."
        )
    enum = torchvision.models.get_model_weights(name)
    default = enum.DEFAULT
    if weights == "DEFAULT":
        try:
            model = torchvision.models.get_model(name, weights=default)
        except Exception as exc:  # URLError, HTTPError, socket errors, partial files
            raise WeightsUnavailableError(
                f"could not download torchvision's pretrained weights for {name} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); "
                "this needs the network or a torch hub cache. Offline, pass --weights PATH to a "
                "local state dict (.safetensors or .pth)."
            ) from None
    else:
        model = torchvision.models.get_model(name, weights=None)
        if weights is not None:
            load_weights(model, Path(weights))
    classes = list(default.meta.get("categories", []))
    crop = getattr(default.transforms(), "crop_size", [224])[0]
    resize = getattr(default.transforms(), "resize_size", [256])[0]
    return ModelSpec(model.eval(), name, classes, size=crop, resize=resize, preset="imagenet")

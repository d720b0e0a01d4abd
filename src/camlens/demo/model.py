"""The built-in demo models: a small CNN with a GAP + linear head, trained on ``shapes``, and
(:mod:`camlens.demo.vit`) a small hybrid ViT on top of its features; :func:`load_model` loads
either."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal, overload

import torch
from torch import Tensor, nn

from camlens.demo.shapes import CLASSES
from camlens.errors import InputError

if TYPE_CHECKING:
    from camlens.demo.vit import ShapesViT

WEIGHTS_FILE = "shapes_cnn.safetensors"


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ShapesCNN(nn.Module):
    """conv stem (stride 2) -> 3 stages -> ``features`` (B, 96, H/8, W/8) -> GAP -> ``fc``.

    Inputs are images in [0, 1] (no normalisation preset: the first batch norm learns it).
    The head is global average pooling and one linear layer, so CAM applies; ``features`` is
    the layer the demo explains (12 x 12 for 96 x 96 images).
    """

    def __init__(self, num_classes: int = len(CLASSES)):
        super().__init__()
        self.features = nn.Sequential(
            _block(3, 24, stride=2),
            _block(24, 32),
            nn.MaxPool2d(2),
            _block(32, 64),
            _block(64, 64),
            nn.MaxPool2d(2),
            _block(64, 96),
            _block(96, 96),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(96, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) images in [0, 1] -> (B, 6) logits."""
        return self.fc(self.pool(self.features(x)).flatten(1))


#: the demo models :func:`load_model` knows by name, and their shipped weights files
MODELS: dict[str, str] = {"cnn": WEIGHTS_FILE, "vit": "shapes_vit.safetensors"}


@overload
def load_model(
    model: Literal["vit"],
    device: str | torch.device = "cpu",
    *,
    path: str | Path | None = None,
) -> ShapesViT: ...


@overload
def load_model(
    model: Literal["cnn"] | Path | None = None,
    device: str | torch.device = "cpu",
    *,
    path: str | Path | None = None,
) -> ShapesCNN: ...


@overload
def load_model(
    model: str,
    device: str | torch.device = "cpu",
    *,
    path: str | Path | None = None,
) -> ShapesCNN | ShapesViT: ...


def load_model(
    model: str | Path | None = None,
    device: str | torch.device = "cpu",
    *,
    path: str | Path | None = None,
) -> ShapesCNN | ShapesViT:
    """A demo model with its shipped weights (or those at ``path``), in eval mode.

    ``model``: ``"cnn"`` (default: :class:`ShapesCNN`) or ``"vit"`` (the hybrid
    :class:`~camlens.demo.vit.ShapesViT`); any other string or a ``Path`` is a weights file for
    the CNN, as before (``load_model("w.safetensors")`` = ``load_model(path="w.safetensors")``).
    Weights are safetensors, loaded without pickle.
    """
    from safetensors.torch import load_file

    name = model if isinstance(model, str) and model in MODELS else "cnn"
    if model is not None and name == "cnn" and model != "cnn":
        if path is not None:
            raise InputError(
                f"load_model got two weights files ({model!r} and path={path!r}); pass a model "
                f"name ({', '.join(map(repr, MODELS))}) first, or one path"
            )
        path = model
    net: ShapesCNN | ShapesViT
    if name == "vit":
        from camlens.demo.vit import ShapesViT

        net = ShapesViT()
    else:
        net = ShapesCNN()
    if path is None:
        ref = resources.files("camlens.demo").joinpath(MODELS[name])
        with resources.as_file(ref) as file:
            state = load_file(str(file))
    else:
        if not Path(path).is_file():
            raise InputError(
                f"no such weights file: {path!r}. load_model takes a model name "
                f"({', '.join(map(repr, MODELS))}) or a path to a .safetensors file"
            )
        state = load_file(str(path))
    where = "the shipped weights" if path is None else f"{str(path)!r}"
    try:
        result = net.load_state_dict(state, strict=False)
        bad = result.missing_keys or result.unexpected_keys
        detail = f"missing keys {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}"
    except RuntimeError as exc:  # shape mismatches
        bad, detail = True, str(exc).strip().splitlines()[-1].strip()[:200]
    if bad:
        raise InputError(
            f"{where} do not fit the demo {name.upper()} ({detail}); CNN weights load with "
            "load_model(path=...), ViT weights with load_model('vit', path=...)"
        )
    return net.eval().to(device)

"""The built-in demo model: a small CNN with a GAP + linear head, trained on ``shapes``."""

from __future__ import annotations

from importlib import resources

import torch
from torch import Tensor, nn

from camlens.demo.shapes import CLASSES

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
        return self.fc(self.pool(self.features(x)).flatten(1))


def load_model(path: str | None = None, device: str | torch.device = "cpu") -> ShapesCNN:
    """The demo model with its shipped weights (or those at ``path``), in eval mode.

    Weights are safetensors, loaded without pickle.
    """
    from safetensors.torch import load_file

    model = ShapesCNN()
    if path is None:
        ref = resources.files("camlens.demo").joinpath(WEIGHTS_FILE)
        with resources.as_file(ref) as file:
            state = load_file(str(file))
    else:
        state = load_file(str(path))
    model.load_state_dict(state)
    return model.eval().to(device)

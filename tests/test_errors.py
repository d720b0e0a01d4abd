"""Bad input gets a clear error from camlens.errors, and leaves the model untouched."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import camlens
from tests.conftest import GapNet, hook_count


@pytest.fixture
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


X = torch.randn(2, 3, 32, 32)


def test_unknown_layer_lists_near_matches(resnet) -> None:
    with pytest.raises(camlens.LayerNotFoundError, match="layer4") as err:
        camlens.explain(resnet, X, layer="layer5")
    assert "Near matches" in str(err.value)


def test_module_not_in_model(resnet) -> None:
    with pytest.raises(camlens.LayerNotFoundError, match="not a submodule"):
        camlens.explain(resnet, X, layer=nn.Conv2d(3, 3, 1))


def test_non_spatial_layer(resnet) -> None:
    with pytest.raises(camlens.LayerError, match=r"'fc' outputs \(2, 10\)"):
        camlens.explain(resnet, X, layer="fc")
    assert hook_count(resnet) == 0


def test_layer_that_does_not_run() -> None:
    model = GapNet()
    model.unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(camlens.LayerError, match="did not run"):
        camlens.explain(model, torch.randn(1, 3, 8, 8), layer="unused")


@pytest.mark.parametrize(
    ("target", "match"),
    [
        (10, r"out of range.*10 classes.*\[0, 9\]"),
        (-1, "out of range"),
        ([1, 2, 3], r"shape \(3,\).*2 images"),
        ([1.5, 2.0], "integers"),
        ("cat", "target must be"),
        (True, "class id"),
    ],
)
def test_bad_targets(resnet, target, match) -> None:
    with pytest.raises(camlens.TargetError, match=match):
        camlens.explain(resnet, X, layer="layer4", target=target)
    assert hook_count(resnet) == 0


def test_callable_target_with_wrong_shape(resnet) -> None:
    with pytest.raises(camlens.TargetError, match=r"\(B,\).*\(B, T\)"):
        camlens.explain(resnet, X, layer="layer4", target=lambda out: out[None])


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.randn(3, 32, 32), "unsqueeze"),
        (torch.randn(32, 32), "4-D"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "float"),
        ([[1.0]], "torch.Tensor"),
        (torch.randn(0, 3, 8, 8), "empty"),
    ],
)
def test_bad_images(resnet, images, match) -> None:
    with pytest.raises(camlens.InputError, match=match):
        camlens.explain(resnet, images)


def test_cam_without_gap_linear_head_suggests_gradcam() -> None:
    torch.manual_seed(0)
    vgg = torchvision.models.vgg11(weights=None, num_classes=4).eval()
    with pytest.raises(camlens.UnsupportedModelError, match="gradcam"):
        camlens.explain(vgg, torch.randn(1, 3, 32, 32), method="cam")
    assert hook_count(vgg) == 0


class DictModel(nn.Module):
    def __init__(self, key: str = "out"):
        super().__init__()
        self.net = GapNet()
        self.key = key

    def forward(self, x):
        return {self.key: self.net(x)}


def test_model_returning_an_unknown_dict_needs_a_callable_target() -> None:
    x = torch.randn(2, 3, 8, 8)
    # 'logits' (HF ModelOutput) and 'out' (torchvision segmentation) are read as the output
    plain = camlens.explain(DictModel("logits"), x, layer="net.features")
    assert plain.logits is not None and plain.logits.shape == (2, 5)
    model = DictModel("scores")
    with pytest.raises(
        camlens.UnsupportedModelError, match=r"dict with keys \['scores'\].*target="
    ):
        camlens.explain(model, x, layer="net.features")
    ex = camlens.explain(model, x, layer="net.features", target=lambda o: o["scores"][:, 0])
    assert ex.maps.shape == (2, 8, 8)


def test_unknown_method_lists_registered() -> None:
    with pytest.raises(camlens.MethodNotFoundError, match="Did you mean 'gradcam'") as err:
        camlens.explain(GapNet(), torch.randn(1, 3, 8, 8), method="gradcan")
    assert "layercam" in str(err.value)


def test_not_a_model() -> None:
    with pytest.raises(camlens.InputError, match=r"nn\.Module"):
        camlens.explain(lambda x: x, torch.randn(1, 3, 8, 8))


def test_model_without_spatial_layer() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(camlens.LayerError, match="no layer with a spatial"):
        camlens.explain(mlp, torch.randn(1, 3, 2, 2))


def test_shared_module_called_twice() -> None:
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(self.conv(self.conv(x)).mean((2, 3)))

    with pytest.raises(camlens.LayerError, match="ran 2 times"):
        camlens.explain(Twice(), torch.randn(1, 3, 8, 8), layer="conv")


def test_errors_are_catchable_as_builtin_kinds() -> None:
    assert issubclass(camlens.LayerNotFoundError, KeyError)
    assert issubclass(camlens.TargetError, ValueError)
    assert issubclass(camlens.InputError, camlens.CamlensError)

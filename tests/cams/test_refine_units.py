"""RefineCAM on a tiny model: the product of two layers' scaled maps, its displayed map, several
targets, and every refusal by its whole message."""

from __future__ import annotations

import re

import pytest
import torch

import camlens
from camlens.cams.model_based import ModelCall
from camlens.cams.refine import refine_product, refinecam
from camlens.errors import InputError, LayerError
from camlens.maps import minmax, upsample
from tests.conftest import GapNet


def _exact(msg: str) -> str:
    return "^" + re.escape(msg) + "$"


LAYERS = ["features.1", "features.3"]  # 10 x 14, then 5 x 7


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(10)  # every map has a positive part (no empty-map warning)
    model = GapNet(channels=5, classes=4).eval()
    return model, torch.randn(2, 3, 10, 14)


@pytest.mark.parametrize("target", [[1, 3], [[1, 2], [3, 0]]])
def test_refinecam_of_two_layers_by_hand(setup, target) -> None:
    """raw = up(minmax(ReLU(M_1))) * up(minmax(ReLU(M_2))) at the finer layer's 10 x 14, each
    factor scaled per image and target; the displayed map is that product upsampled to the
    image and min-max scaled (here the image's size: the product itself, scaled)."""
    model, x = setup
    ex = camlens.explain(model, x, "refinecam", layer=LAYERS, target=target, base="gradcam")
    base = camlens.explain(model, x, "gradcam", layer=LAYERS, target=target)
    lead = (2,) if isinstance(target[0], int) else (2, 2)
    fine, coarse = (base.raw[n].reshape(-1, *base.raw[n].shape[-2:]) for n in LAYERS)
    assert fine.shape[-2:] == (10, 14) and coarse.shape[-2:] == (5, 7)
    expected = minmax(fine.clamp(min=0)) * upsample(minmax(coarse.clamp(min=0)), (10, 14))
    assert ex.raw["refinecam"].shape == (*lead, 10, 14)
    assert torch.allclose(ex.raw["refinecam"].reshape(-1, 10, 14), expected, atol=1e-6)
    assert torch.allclose(ex.maps.reshape(-1, 10, 14), minmax(expected), atol=1e-6)
    assert ex.maps.shape == (*lead, 10, 14)
    assert torch.equal(ex.targets, base.targets) and torch.equal(ex.scores, base.scores)
    assert ex.extras == {} and ex.layers == ["refinecam"]


def test_refinecam_display_is_the_product_upsampled_then_scaled() -> None:
    """Images of 20 x 28: the product (10 x 14) is upsampled to the image, then scaled."""
    torch.manual_seed(9)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 5, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(5, 4),
    ).eval()
    x = torch.randn(2, 3, 20, 28)
    layers = ["3", "1"]  # 5 x 7 and 10 x 14; the order of the layers does not matter
    ex = camlens.explain(model, x, "refinecam", layer=layers, target=[0, 2], base="layercam")
    base = camlens.explain(model, x, "layercam", layer=layers, target=[0, 2])
    product = refine_product([base.raw[n] for n in layers])
    assert product.shape == (2, 10, 14)
    assert torch.allclose(ex.raw["refinecam"], product, atol=1e-6)
    assert torch.allclose(ex.maps, minmax(upsample(product, (20, 28))), atol=1e-6)


def test_the_default_base_is_gradcampp(setup) -> None:
    model, x = setup
    ex = camlens.explain(model, x, "refinecam", layer=LAYERS, target=[1, 3])
    pp = camlens.explain(model, x, "refinecam", layer=LAYERS, target=[1, 3], base="gradcampp")
    gc = camlens.explain(model, x, "refinecam", layer=LAYERS, target=[1, 3], base="gradcam")
    assert torch.equal(ex.raw["refinecam"], pp.raw["refinecam"])
    assert not torch.allclose(ex.raw["refinecam"], gc.raw["refinecam"])


SEVERAL = (
    "refinecam multiplies the maps of several layers: pass layer=[...] with at least two "
    "layers, e.g. layer=['layer2', 'layer3', 'layer4'] for a ResNet"
)


def test_refinecam_refusals(setup) -> None:
    model, x = setup
    with pytest.raises(LayerError, match=_exact(SEVERAL)):
        camlens.explain(model, x, "refinecam")  # the automatic layer: one
    with pytest.raises(LayerError, match=_exact(SEVERAL)):
        camlens.explain(model, x, "refinecam", layer="features.3")
    with pytest.raises(LayerError, match=_exact(SEVERAL)):
        camlens.explain(model, x, "refinecam", layer=["features.3"])
    for base in ("fullgrad", "refinecam", "RefineCAM"):
        msg = (
            "refinecam's base must be a layer method (gradcam, gradcampp, layercam, ...), "
            f"got {base!r}"
        )
        with pytest.raises(InputError, match=_exact(msg)):
            camlens.explain(model, x, "refinecam", layer=LAYERS, base=base)
    with pytest.raises(
        LayerError, match=_exact("refinecam multiplies the maps of at least two layers")
    ):
        refine_product([torch.ones(1, 2, 2)])


def test_refinecam_needs_the_explain_callback(setup) -> None:
    model, x = setup
    call = ModelCall(
        model=model,
        images=x,
        target=None,
        score=lambda out: (out[:, 0], torch.zeros(2, dtype=torch.long)),
        layers=[("features.1", model.features[1]), ("features.3", model.features[3])],
    )
    with pytest.raises(InputError, match=_exact("refinecam needs the engine's explain callback")):
        refinecam(call)

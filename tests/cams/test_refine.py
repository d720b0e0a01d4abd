"""RefineCAM: the product of per-layer scaled maps, by hand and against the peers."""

from __future__ import annotations

import pytest
import torch
import torchvision

import camlens
from camlens.cams.refine import refine_product
from camlens.errors import InputError, LayerError
from camlens.maps import minmax


def test_refine_product_by_hand() -> None:
    """Layer 1 (2 x 2) has a negative value and a range of 10, layer 2 (2 x 2) a range of 4:
    each is ReLU'd and scaled to [0, 1] before the product (the raw product would differ)."""
    a = torch.tensor([[[10.0, 5.0], [-3.0, 0.0]]])  # ReLU + scale: [[1, .5], [0, 0]]
    b = torch.tensor([[[2.0, 4.0], [6.0, 6.0]]])  # scale: [[0, .5], [1, 1]]
    out = refine_product([a, b])
    assert torch.equal(out, torch.tensor([[[0.0, 0.25], [0.0, 0.0]]]))
    assert not torch.allclose(minmax(out), minmax((a * b).clamp(min=0)))
    # a coarse layer is upsampled (bilinear) to the finest layer's size after its scaling
    coarse = torch.tensor([[[1.0, 3.0]]])  # (1, 1, 2): scaled to [0, 1] -> [[0, 1]]
    fine = torch.ones(1, 1, 4) + torch.tensor([[[0.0, 0.0, 0.0, 1.0]]])  # scaled [0, 0, 0, 1]
    expected = torch.nn.functional.interpolate(
        torch.tensor([[[0.0, 1.0]]]), size=4, mode="linear", align_corners=False
    ) * torch.tensor([[[0.0, 0.0, 0.0, 1.0]]])
    assert torch.allclose(refine_product([coarse, fine]), expected)
    with pytest.raises(LayerError, match="two"):
        refine_product([a])


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    return model, torch.randn(2, 3, 64, 64)


LAYERS = ["layer2", "layer3", "layer4"]


def test_refinecam_is_the_product_of_the_base_maps(resnet) -> None:
    model, x = resnet
    ex = camlens.explain(model, x, "refinecam", layer=LAYERS, target=[3, 7])
    base = camlens.explain(model, x, "gradcampp", layer=LAYERS, target=[3, 7])
    expected = refine_product([base.raw[n] for n in LAYERS])
    assert ex.raw["refinecam"].shape == (2, 8, 8)
    assert torch.allclose(ex.raw["refinecam"], expected)
    assert torch.equal(ex.targets, torch.tensor([3, 7]))
    assert ex.maps.shape == (2, 64, 64) and float(ex.maps.amax()) == 1.0
    pairs = torch.tensor([[3, 1], [7, 2]])
    two = camlens.explain(model, x, "refinecam", layer=LAYERS, target=pairs)
    assert two.maps.shape == (2, 2, 64, 64) and two.raw["refinecam"].shape == (2, 2, 8, 8)
    assert torch.allclose(two.raw["refinecam"][:, 0], ex.raw["refinecam"], atol=1e-6)
    assert torch.allclose(two.maps[:, 0], ex.maps, atol=1e-6)


def test_refinecam_needs_layers_and_a_layer_base(resnet) -> None:
    model, x = resnet
    with pytest.raises(LayerError, match="at least"):
        camlens.explain(model, x, "refinecam")
    with pytest.raises(LayerError, match="at least"):
        camlens.explain(model, x, "refinecam", layer="layer4")
    with pytest.raises(InputError, match="layer method"):
        camlens.explain(model, x, "refinecam", layer=LAYERS, base="fullgrad")


def test_agrees_with_torchcam(resnet) -> None:
    """TorchCAM's RefineCAM (scale at each layer's size, resize, multiply) with LayerCAM."""
    methods = pytest.importorskip("torchcam.methods")
    if not hasattr(methods, "RefineCAM"):
        pytest.skip("this torchcam has no RefineCAM")
    model, x = resnet
    with methods.RefineCAM(
        model, LAYERS, input_shape=(3, 64, 64), base_method=methods.LayerCAM
    ) as extractor:
        theirs = extractor([3, 7], model(x), normalized=False)[0]
    ex = camlens.explain(model, x, "refinecam", layer=LAYERS, target=[3, 7], base="layercam")
    assert torch.allclose(ex.raw["refinecam"], theirs.detach(), atol=1e-5)


def test_against_pytorch_grad_cam(resnet) -> None:
    """pytorch-grad-cam upsamples every layer's map to the input before scaling it and its
    scaling loop is a no-op on a copy; its maps were already scaled, so the pictures agree up to
    the interpolation order."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    targets = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    if not hasattr(pgc, "RefineCAM"):
        pytest.skip("this pytorch-grad-cam has no RefineCAM")
    model, x = resnet
    layers = [getattr(model, n) for n in LAYERS]
    cam = pgc.RefineCAM(model, layers)
    theirs = torch.from_numpy(cam(x, [targets.ClassifierOutputTarget(c) for c in (3, 7)])).float()
    ex = camlens.explain(model, x, "refinecam", layer=LAYERS, target=[3, 7])
    assert torch.corrcoef(torch.stack([ex.maps.flatten(), theirs.flatten()]))[0, 1] > 0.95

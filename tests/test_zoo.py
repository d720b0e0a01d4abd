"""The zoo: timm families and Hugging Face image-classification types explain with layer=None.

Each model: Grad-CAM with the automatic layer, no glue code. The layer must be a sensible one
(on the main path, never a stem, patch embedding, head or side branch), the map not constant,
the model left as it came. The fixes of issue 16 are pinned by name in the fast subset; the
whole sweep (tests/zoo_models.py, about 120 models) is marked slow.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import camlens
from camlens.layers import find_default_layer
from tests.conftest import HandNet, hook_count

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

from tests.zoo_models import HF, TIMM, timm_model  # noqa: E402

#: words that name a stem, a patch embedding or a head: never the automatic layer
BAD = ("stem", "patch_embed", "embeddings", "embedding_layer", "head", "classifier", "fc.")


def explain_as_a_user(model: nn.Module, x: torch.Tensor) -> camlens.Explanation:
    """layer=None, no glue; the model comes back as it came (flags, requires_grad, hooks)."""
    model.train()
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    before = hook_count(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm/HF deprecations; the empty-map one is tested below
        ex = camlens.explain(model, x, "gradcam")
    assert all(m.training for m in model.modules())
    assert not frozen.requires_grad and hook_count(model) == before
    model.eval()
    return ex


def sensible(ex: camlens.Explanation) -> None:
    layer = ex.layers[0]
    assert not any(word in layer for word in BAD), layer
    raw = ex.raw[layer]
    assert raw.shape[-2:].numel() > 1, f"{layer}: a 1 x 1 map"
    # the raw map varies over the image (its display may be empty where the raw map is <= 0
    # everywhere with random weights: that is warned about, see below)
    assert float(raw.std()) > 1e-6 * float(raw.abs().max()), f"{layer}: a constant map"


FAST_TIMM = {
    # issue 16: the stem (LeViT), the FFN side branch (EfficientViM), the head (EfficientViT)
    "levit": "stages",
    "efficientvim": "stages.2.blocks.1",
    "efficientvit_mit": "stages",
    "resnet": "layer4",
    "vision_transformer": "blocks.1.norm1",
    "beit": "blocks.1",  # mean-pooled: the last block, not the norm of its MLP branch
}
FAST_HF = {
    # issue 16: the MLP branch (PoolFormer), a conv inside attention (CvT), the patch
    # embedding (LeViT), scores in last_hidden_state (PPLCNet)
    "poolformer": "poolformer.encoder.block.3.0",
    "cvt": "cvt.encoder.stages.2.layers.2.layernorm_before",
    "levit": "levit.encoder.stages.2",
    "pp_lcnet": "encoder.blocks.4",
    "vit": "vit.layers.1.layernorm_before",
}


@pytest.mark.parametrize("family", FAST_TIMM)
def test_timm_fixed_families(family: str) -> None:
    model, x = timm_model(family)
    ex = explain_as_a_user(model, x)
    assert ex.layers == [FAST_TIMM[family]]
    sensible(ex)


@pytest.mark.parametrize("kind", FAST_HF)
def test_hf_fixed_types(kind: str) -> None:
    model, x = HF[kind]()
    ex = explain_as_a_user(model, x)
    assert ex.layers == [FAST_HF[kind]]
    sensible(ex)


def test_pplcnet_scores_are_its_last_hidden_state() -> None:
    model, x = HF["pp_lcnet"]()
    ex = camlens.explain(model, x, "gradcam", target=1)
    with torch.no_grad():
        scores = model(x).last_hidden_state
    assert torch.allclose(ex.scores, scores[:, 1]) and torch.allclose(ex.logits, scores)


def test_ssdlite_explains_the_base_network_not_an_extra_block() -> None:
    import torchvision

    torch.manual_seed(0)
    lite = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None
    ).eval()
    assert find_default_layer(lite, [torch.rand(3, 320, 320)]) == "backbone.features.1"


@pytest.mark.slow
def test_ssd_explains_vgg_up_to_fc7_not_the_1x1_extra_block() -> None:
    """torchvision puts VGG's fc6/fc7 (the base network's end) in ``extra[0]``."""
    import torchvision

    torch.manual_seed(0)
    ssd = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None).eval()
    assert find_default_layer(ssd, [torch.rand(3, 300, 300)]) == "backbone.extra.0"


def test_a_raw_map_below_zero_everywhere_is_a_warning() -> None:
    """HandNet: Grad-CAM's raw map is (1/hw) sum_k w_ck A^k; with A >= 0 and w_c < 0 it is
    < 0 everywhere, so the displayed map is empty: say so, as for a zero gradient."""
    model = HandNet(torch.tensor([[-1.0, -2.0], [1.0, 1.0]])).eval()
    x = torch.rand(2, 2, 4, 4) + 0.1
    with pytest.warns(
        UserWarning, match=r"<= 0 everywhere at \(image\[, target\]\) \[\[0\], \[1\]\]"
    ):
        ex = camlens.explain(model, x, "gradcam", layer="features", target=0)
    assert float(ex.maps.abs().max()) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # class 1 has positive weights: no warning
        camlens.explain(model, x, "gradcam", layer="features", target=1)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(TIMM))
def test_every_timm_family(family: str) -> None:
    model, x = timm_model(family)
    sensible(explain_as_a_user(model, x))


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(HF))
def test_every_hf_image_classification_type(kind: str) -> None:
    model, x = HF[kind]()
    sensible(explain_as_a_user(model, x))

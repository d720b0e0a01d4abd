"""The zoo: one small variant of every timm architecture family and a tiny configuration of
every Hugging Face image-classification model type, random weights, built offline.

Used by tests/test_zoo.py (the sweep) and by ``python -m tests.zoo_models`` (the table of
docs/guides/zoo.md). Random initialisations zero some weights on purpose (zero-initialised
residual branches, LeViT's last BatchNorm of each branch, classifier heads), which makes maps
constant by construction; :func:`randomize` gives every norm a random affine map and every
all-zero weight small random values, as training would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

#: timm module (family) -> (model name, create_model kwargs, input size)
TIMM: dict[str, tuple[str, dict[str, Any], int]] = {
    "beit": ("beit_base_patch16_224", {"depth": 2, "img_size": 64}, 64),
    "byoanet": ("halonet26t", {}, 256),
    "byobnet": ("gernet_s", {}, 64),
    "cait": ("cait_xxs24_224", {"depth": 2, "img_size": 64}, 64),
    "coat": ("coat_lite_tiny", {"img_size": 64}, 64),
    "convit": ("convit_tiny", {"depth": 2, "img_size": 64}, 64),
    "convmixer": ("convmixer_768_32", {}, 64),
    "convnext": ("convnext_atto", {}, 64),
    "cpubone": ("cpubone_nano", {}, 64),
    "crossvit": ("crossvit_tiny_240", {}, 240),
    "cspnet": ("cs3darknet_s", {}, 64),
    "cspnext": ("cspnext_tiny", {}, 64),
    "davit": ("davit_tiny", {"depths": (1, 1, 1, 1)}, 64),
    "deit": ("deit_tiny_patch16_224", {"depth": 2, "img_size": 64}, 64),
    "densenet": ("densenet121", {}, 64),
    "dla": ("dla34", {}, 64),
    "dpn": ("dpn68", {}, 64),
    "edgenext": ("edgenext_xx_small", {}, 64),
    "efficientformer": ("efficientformer_l1", {}, 224),
    "efficientformer_v2": ("efficientformerv2_s0", {}, 224),
    "efficientnet": ("efficientnet_b0", {}, 64),
    "efficientvim": ("efficientvim_m1", {}, 128),
    "efficientvit_mit": ("efficientvit_b0", {}, 64),
    "efficientvit_msra": ("efficientvit_m0", {}, 224),
    "eva": ("eva02_tiny_patch14_224", {"depth": 2, "img_size": 56}, 56),
    "fasternet": ("fasternet_t0", {}, 64),
    "fastvit": ("fastvit_t8", {}, 64),
    "focalnet": ("focalnet_tiny_srf", {}, 64),
    "gcvit": ("gcvit_xxtiny", {"img_size": 224}, 224),
    "ghostnet": ("ghostnet_050", {}, 64),
    "hardcorenas": ("hardcorenas_a", {}, 64),
    "hgnet": ("hgnet_tiny", {}, 64),
    "hiera": ("hiera_tiny_224", {}, 224),
    "hrnet": ("hrnet_w18_small", {}, 64),
    "inception_next": ("inception_next_atto", {}, 64),
    "inception_resnet_v2": ("inception_resnet_v2", {}, 160),
    "inception_v3": ("inception_v3", {}, 160),
    "inception_v4": ("inception_v4", {}, 160),
    "lcnetv2": ("lcnetv2_small", {}, 64),
    "levit": ("levit_128s", {}, 224),
    "mambaout": ("mambaout_femto", {}, 64),
    "maxxvit": ("maxvit_pico_rw_256", {"img_size": 64}, 64),
    "metaformer": ("poolformer_s12", {}, 64),
    "mlp_mixer": ("mixer_s32_224", {"img_size": 64}, 64),
    "mobilenetv3": ("mobilenetv3_small_050", {}, 64),
    "mobilevit": ("mobilevit_xxs", {}, 64),
    "mvitv2": ("mvitv2_tiny", {"img_size": 64}, 64),
    "nest": ("nest_tiny", {"img_size": 64}, 64),
    "nextvit": ("nextvit_small", {}, 64),
    "nfnet": ("nf_resnet26", {}, 64),
    "pit": ("pit_ti_224", {"img_size": 64}, 64),
    "pvt_v2": ("pvt_v2_b0", {}, 64),
    "rdnet": ("rdnet_tiny", {}, 64),
    "regnet": ("regnetx_002", {}, 64),
    "repghost": ("repghostnet_050", {}, 64),
    "repvit": ("repvit_m0_9", {}, 64),
    "res2net": ("res2net50_14w_8s", {}, 64),
    "resnest": ("resnest14d", {}, 64),
    "resnet": ("resnet18", {}, 64),
    "resnetv2": ("resnetv2_18", {}, 64),
    "rexnet": ("rexnet_100", {}, 64),
    "selecsls": ("selecsls42", {}, 96),
    "senet": ("legacy_seresnet18", {}, 64),
    "sequencer": ("sequencer2d_s", {}, 64),
    "shvit": ("shvit_s1", {}, 224),
    "sknet": ("skresnet18", {}, 64),
    "starnet": ("starnet_s050", {}, 64),
    "swiftformer": ("swiftformer_xs", {}, 224),
    "swin_transformer": ("swin_tiny_patch4_window7_224", {"depths": (1, 1, 1, 1)}, 224),
    "swin_transformer_v2": ("swinv2_tiny_window8_256", {"depths": (1, 1, 1, 1)}, 256),
    "swin_transformer_v2_cr": ("swinv2_cr_tiny_224", {"depths": (1, 1, 1, 1)}, 224),
    "tiny_vit": ("tiny_vit_5m_224", {}, 224),
    "tnt": ("tnt_s_patch16_224", {"depth": 2, "img_size": 64}, 64),
    "tresnet": ("tresnet_m", {}, 64),
    "twins": ("twins_svt_small", {"depths": (1, 1, 1, 1)}, 64),
    "vgg": ("vgg11", {}, 64),
    "visformer": ("visformer_tiny", {}, 224),
    "vision_transformer": ("vit_tiny_patch16_224", {"depth": 2, "img_size": 64}, 64),
    "vision_transformer_hybrid": ("vit_tiny_r_s16_p8_224", {"depth": 2, "img_size": 64}, 64),
    "vision_transformer_relpos": ("vit_relpos_small_patch16_224", {"depth": 2, "img_size": 64}, 64),
    "vision_transformer_sam": ("samvit_base_patch16", {"depth": 2, "img_size": 64}, 64),
    "vitamin": ("vitamin_small_224", {"img_size": 64}, 64),
    "volo": ("volo_d1_224", {"img_size": 64}, 64),
    "vovnet": ("ese_vovnet19b_slim", {}, 64),
    "xception": ("legacy_xception", {}, 96),
    "xception_aligned": ("xception41", {}, 96),
    "xcit": ("xcit_nano_12_p8_224", {"depth": 2, "img_size": 64}, 64),
}


def randomize(model: nn.Module, x: torch.Tensor | None = None, seed: int = 0) -> nn.Module:
    """Norms get a random affine map, all-zero weights small random values and, given inputs
    ``x``, BatchNorm layers the running statistics of those inputs (as after training); returns
    the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            norm = isinstance(
                module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
            ) or type(module).__name__.endswith(("Norm", "Norm2d", "NormAct2d", "LayerNorm2d"))
            if norm and isinstance(getattr(module, "weight", None), torch.Tensor):
                w = module.weight
                w.copy_(0.5 + torch.rand(w.shape, generator=gen))
                if isinstance(getattr(module, "bias", None), torch.Tensor):
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
        for p in model.parameters():
            if p.numel() and not bool(p.any()):
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
        if x is not None:  # BatchNorm statistics of the data, as training leaves them
            norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            for bn in norms:
                bn.reset_running_stats()
                bn.momentum = None  # a cumulative average over the calibration pass
            model.train()
            batch = torch.cat([x, x.flip(-1), x.flip(-2), -x])
            model(batch)
            for bn in norms:
                bn.momentum = 0.1
    return model.eval()


def timm_model(family: str) -> tuple[nn.Module, torch.Tensor]:
    import timm

    name, kwargs, size = TIMM[family]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5, **kwargs)
    torch.manual_seed(1)
    x = torch.randn(1, 3, size, size)
    return randomize(model, x), x


def _hf(config: Callable[[Any], Any], model: str, size: int = 64, **kw: Any):
    def build() -> tuple[nn.Module, torch.Tensor]:
        import transformers

        torch.manual_seed(0)
        cfg = getattr(transformers, config)(num_labels=5, **kw)
        net = getattr(transformers, model)(cfg)
        torch.manual_seed(1)
        x = torch.randn(1, getattr(cfg, "num_channels", 3), size, size)
        return randomize(net, x), x

    return build


def _hf_vision(config: str, model: str):
    """Image-text configs (CLIP, SigLIP): a tiny vision tower."""
    return _hf(config, model, vision_config=dict(_VIT64), text_config=dict(_VIT, vocab_size=64))


_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
_VIT64 = dict(_VIT, image_size=64, patch_size=8)

#: HF model type -> builder of a tiny (model, input)
HF: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    "beit": _hf("BeitConfig", "BeitForImageClassification", **_VIT64),
    "bit": _hf("BitConfig", "BitForImageClassification", depths=[1, 1, 1, 1]),
    "convnext": _hf("ConvNextConfig", "ConvNextForImageClassification", depths=[1, 1, 1, 1]),
    "convnextv2": _hf("ConvNextV2Config", "ConvNextV2ForImageClassification", depths=[1, 1, 1, 1]),
    "cvt": _hf(
        "CvtConfig",
        "CvtForImageClassification",
        embed_dim=[16, 32, 48],
        num_heads=[1, 2, 3],
        depth=[1, 2, 3],
    ),
    "data2vec-vision": _hf(
        "Data2VecVisionConfig", "Data2VecVisionForImageClassification", **_VIT64
    ),
    "deit": _hf("DeiTConfig", "DeiTForImageClassificationWithTeacher", **_VIT64),
    "dinov2": _hf("Dinov2Config", "Dinov2ForImageClassification", **_VIT64),
    "dinov2_with_registers": _hf(
        "Dinov2WithRegistersConfig", "Dinov2WithRegistersForImageClassification", **_VIT64
    ),
    "efficientnet": _hf("EfficientNetConfig", "EfficientNetForImageClassification", size=64),
    "focalnet": _hf("FocalNetConfig", "FocalNetForImageClassification", depths=[1, 1, 1, 1]),
    "hgnet_v2": _hf("HGNetV2Config", "HGNetV2ForImageClassification"),
    "hiera": _hf("HieraConfig", "HieraForImageClassification", size=224, depths=[1, 1, 1, 1]),
    "ijepa": _hf("IJepaConfig", "IJepaForImageClassification", **_VIT64),
    "levit": _hf(
        "LevitConfig",
        "LevitForImageClassificationWithTeacher",
        size=224,
        hidden_sizes=[32, 48, 64],
        num_attention_heads=[1, 2, 2],
        depths=[1, 1, 1],
        key_dim=[8, 8, 8],
    ),
    "mobilenet_v1": _hf(
        "MobileNetV1Config", "MobileNetV1ForImageClassification", depth_multiplier=0.25
    ),
    "mobilenet_v2": _hf(
        "MobileNetV2Config", "MobileNetV2ForImageClassification", depth_multiplier=0.35
    ),
    "mobilevit": _hf("MobileViTConfig", "MobileViTForImageClassification", image_size=64),
    "mobilevitv2": _hf("MobileViTV2Config", "MobileViTV2ForImageClassification", image_size=64),
    "poolformer": _hf(
        "PoolFormerConfig",
        "PoolFormerForImageClassification",
        depths=[1, 1, 1, 1],
        hidden_sizes=[16, 32, 48, 64],
    ),
    "pp_lcnet": _hf("PPLCNetConfig", "PPLCNetForImageClassification"),
    "pvt": _hf("PvtConfig", "PvtForImageClassification", image_size=64, depths=[1, 1, 1, 1]),
    "pvt_v2": _hf("PvtV2Config", "PvtV2ForImageClassification", depths=[1, 1, 1, 1]),
    "regnet": _hf("RegNetConfig", "RegNetForImageClassification", depths=[1, 1, 1, 1]),
    "resnet": _hf("ResNetConfig", "ResNetForImageClassification", depths=[1, 1, 1, 1]),
    "segformer": _hf("SegformerConfig", "SegformerForImageClassification", depths=[1, 1, 1, 1]),
    "swiftformer": _hf(
        "SwiftFormerConfig", "SwiftFormerForImageClassification", size=224, depths=[1, 1, 1, 1]
    ),
    "swin": _hf(
        "SwinConfig",
        "SwinForImageClassification",
        image_size=64,
        depths=[1, 1, 1, 1],
        window_size=2,
    ),
    "swinv2": _hf(
        "Swinv2Config",
        "Swinv2ForImageClassification",
        image_size=64,
        depths=[1, 1, 1, 1],
        window_size=2,
    ),
    "textnet": _hf("TextNetConfig", "TextNetForImageClassification"),
    "vit": _hf("ViTConfig", "ViTForImageClassification", **_VIT64),
    "clip": _hf_vision("CLIPConfig", "CLIPForImageClassification"),
    "metaclip_2": _hf_vision("MetaClip2Config", "MetaClip2ForImageClassification"),
    "siglip": _hf_vision("SiglipConfig", "SiglipForImageClassification"),
    "donut-swin": _hf(
        "DonutSwinConfig",
        "DonutSwinForImageClassification",
        image_size=64,
        depths=[1, 1, 1, 1],
        window_size=2,
    ),
    "timm_wrapper": _hf(
        "TimmWrapperConfig", "TimmWrapperForImageClassification", architecture="resnet18"
    ),
    "vit_msn": _hf("ViTMSNConfig", "ViTMSNForImageClassification", **_VIT64),
}


def _table() -> None:  # pragma: no cover - writes the docs table
    import camlens

    print("| library | family | model | automatic layer | map |")
    print("|---|---|---|---|---|")
    rows = [("timm", f, (lambda f=f: timm_model(f))) for f in TIMM]
    rows += [("transformers", t, b) for t, b in HF.items()]
    for lib, family, build in rows:
        try:
            model, x = build()
            ex = camlens.explain(model, x, "gradcam")
            raw = ex.raw[ex.layers[0]]
            name = TIMM[family][0] if lib == "timm" else type(model).__name__
            shape = "x".join(str(d) for d in raw.shape[-2:])
            print(f"| {lib} | {family} | {name} | `{ex.layers[0]}` | {shape} |", flush=True)
        except Exception as exc:
            print(
                f"| {lib} | {family} | | ERROR {type(exc).__name__}: {str(exc)[:90]} | |",
                flush=True,
            )


if __name__ == "__main__":
    _table()

# %% [markdown]
# # ViTs and Swin
#
# The same call explains vision transformers, with no `reshape_transform`: camlens reads a token
# layer (B, N, C) as a (B, C, h, w) grid, the grid taken from the patch embedding's output seen in
# the same forward, so prefix tokens (class, distillation, register tokens) are dropped and
# non-square inputs work. Channels-last layers (Swin) are decided from the input's geometry, never
# guessed. This page runs on the shipped demo ViT (a hybrid ViT trained on the shapes benchmark,
# 100 % accurate) and on torchvision's Swin-T with random weights.

# %%
import torch
import torchvision

import camlens
from camlens import metrics as M
from camlens.demo import CLASSES, load_model, shapes

vit = load_model("vit")
images, labels, masks = shapes(6, seed=5, size=96)
ex = camlens.explain(vit, images, "layercam", target=labels)
print(ex.layers, {k: tuple(v.shape) for k, v in ex.raw.items()})
print(camlens.Explainer(vit, "layercam").__class__.__name__, "layout:",
      camlens.Explainer(vit, "layercam")(images[:1]).layers)

# %% [markdown]
# The automatic layer is `blocks.1.norm1`, the input norm of the last block: the last LayerNorm
# whose *patch* tokens still reach the class token's score (checked with one gradient on the dry
# run). The raw map is the 12 x 12 patch grid, the class token dropped.

# %%
ex

# %% [markdown]
# ## Which methods work on a transformer
#
# On this ViT, Grad-CAM's channel weights (the mean gradient over the tokens) mix the tokens'
# signs; the element-wise methods (LayerCAM, HiResCAM) and the attention methods do better (the
# [measured table](../choosing.md#the-demo-vit) has 200 images and every metric):

# %%
methods = ["gradcam", "layercam", "hirescam", "gae", "rollout"]
exs = {m: camlens.explain(vit, images, m, target=labels) for m in methods}
for m, e in exs.items():
    hits = M.pointing_game(e.maps, masks).float().mean()
    print(f"{m:9s} layers {e.layers}  pointing {hits:.2f}")

# %%
from camlens.viz import grid
from IPython.display import Image

grid(images[:4], {m: e.maps[:4] for m, e in exs.items()}, "vit.png", preset="none")
Image("vit.png")

# %% [markdown]
# `gae` (Chefer et al. 2021) propagates relevance through every attention layer,
# $R \leftarrow R + \mathbb{E}_h[(\nabla A \odot A)^+]\,R$ from $R = I$, and reads the class
# token's row; `rollout` (Abnar & Zuidema 2020) multiplies
# $\mathrm{rownorm}(0.5 I + 0.5\,\mathbb{E}_h[A])$ over the layers and is the same for every class.
# Both need the attention probabilities, which fused `scaled_dot_product_attention` never
# materialises: camlens computes each call explicitly for one forward, with nothing patched or
# hooked.
#
# ## Swin: channels-last stages
#
# Swin's stages give (B, h, w, C) maps. camlens decides that layout from the input's geometry
# and explains the last stage:

# %%
torch.manual_seed(0)
swin = torchvision.models.swin_t(weights=None).eval()
x = torch.randn(1, 3, 224, 224)
ex = camlens.explain(swin, x, "gradcam")
print(ex.layers, {k: tuple(v.shape) for k, v in ex.raw.items()}, tuple(ex.maps.shape))
print("layout:", camlens.Explainer(swin, "gradcam", ex.layers[0]).layout(ex.layers[0]))

# %% [markdown]
# What cannot be decided is an error naming `layout=`; `layout="nchw" | "nhwc" | "tokens"` or a
# callable (pytorch-grad-cam's `reshape_transform`) overrides it. timm and Hugging Face ViTs
# (DeiT, EVA, with register tokens) work the same way; `camlens explain --model timm:NAME` and
# `--model hf:DIR` load them (see the [CLI reference](../reference/cli.md)).
#
# A torchvision `vit_b_16(weights=None)` has a zero-initialised head: its gradients are zero
# everywhere and camlens warns instead of returning empty maps.

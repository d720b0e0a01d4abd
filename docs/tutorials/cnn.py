# %% [markdown]
# # CNN classifiers
#
# camlens explains any CNN classifier with no glue code: the layer is found automatically (the
# last feature map), the whole batch goes through once, and the model comes back as it went in.
# This page runs on the shipped shapes CNN (trained: its maps mean something) and on a
# torchvision ResNet with random weights (to show what camlens picks on a real architecture;
# pretrained weights would need the network, which the site's build does not have).

# %%
import torch
import torchvision

import camlens
from camlens import metrics as M
from camlens.demo import CLASSES, load_model, shapes
from camlens.viz import grid

model = load_model()
images, labels, masks = shapes(6, seed=3, size=96)
print(model.__class__.__name__, "accuracy on these images:",
      (model(images).argmax(1) == labels).float().mean().item())

# %% [markdown]
# ## Four methods side by side
#
# `camlens.methods()` lists every registered method. On this model's head (global average
# pooling + one linear layer) CAM and Grad-CAM give the same maps, as the papers say they must.

# %%
methods = ["cam", "gradcam", "gradcampp", "layercam", "scorecam", "eigencam"]
maps = {m: camlens.explain(model, images, m, "features", target=labels).maps for m in methods}
print(torch.allclose(maps["cam"], maps["gradcam"], atol=1e-5))
grid(images[:4], {m: v[:4] for m, v in maps.items()}, "cnn_grid.png", preset="none")
from IPython.display import Image

Image("cnn_grid.png")

# %% [markdown]
# How well each localises the object on these images (the [measured tables](../choosing.md) use
# 500 images):

# %%
for m, v in maps.items():
    print(f"{m:10s} pointing {M.pointing_game(v, masks).float().mean():.2f}"
          f"   IoU {M.iou(v, masks).mean():.3f}")

# %% [markdown]
# ## One explanation, shown
#
# `ex.show()` draws image, heatmap and overlay with the method, class and score:

# %%
ex = camlens.explain(model, images[:3], "gradcampp", target=labels[:3])
fig = ex.show(classes=CLASSES)

# %% [markdown]
# ## A torchvision ResNet
#
# With normalised inputs, `preset="imagenet"` undoes the normalisation for the pictures (the
# default guesses from the value range). The automatic layer is `layer4`, the last feature map:

# %%
torch.manual_seed(0)
resnet = torchvision.models.resnet18(weights=None).eval()
x = torch.randn(2, 3, 224, 224)
ex = camlens.explain(resnet, x, "gradcam")
print(ex.layers, {k: tuple(v.shape) for k, v in ex.raw.items()}, tuple(ex.maps.shape))
print("training flag kept:", resnet.training, "| hooks left:", len(resnet._forward_hooks))

# %% [markdown]
# Several layers are fused as in LayerCAM (tanh scaling, element-wise maximum), and any
# dotted module name works:

# %%
ex = camlens.explain(resnet, x, "layercam", layer=["layer3", "layer4"])
print(ex.layers, {k: tuple(v.shape) for k, v in ex.raw.items()})

# %% [markdown]
# From image files, `camlens.io.load_image` and `camlens.io.preprocess` make the batch; on the
# command line, `camlens explain cat.jpg --model resnet50 --weights r50.safetensors --method
# gradcam layercam` writes the overlays (see the [CLI reference](../reference/cli.md)).

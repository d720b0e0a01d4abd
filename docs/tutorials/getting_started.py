# %% [markdown]
# # Getting started
#
# ## Install
#
# From a checkout (Python 3.10+):
#
# ```bash
# make demo    # sets up .venv, explains the built-in shapes benchmark -> out/demo/
# make test    # the whole test suite, lint included
# pip install -e .                 # or: the library and the `camlens` command only
# pip install -e ".[docs]"         # + what `make docs` needs to build this site
# ```
#
# Optional extras: `bench` (the peer libraries, for cross-checks), `timm`, `hf`, `app` (the web
# page), `batch` (Parquet), `ray` (Ray clusters), `docs`; `dev` installs them all. `import camlens`
# imports none of them.
#
# ## The demo
#
# `camlens demo` needs no network and takes a few seconds: it explains 240 generated images with
# the small CNN that ships with camlens and, because the images come with ground-truth masks,
# *measures* how well each method localises the object (`out/demo/grid.png`, `report.html`,
# `summary.json`). Everything on this page runs at the site's build, on the same shipped model.
#
# ## The first explanation
#
# Any PyTorch vision model and a batch of preprocessed images, on the model's device:

# %%
import torch

import camlens
from camlens.demo import CLASSES, load_model, shapes

model = load_model()  # the shipped shapes CNN, in eval mode
images, labels, masks = shapes(4, seed=0, size=96)  # (4, 3, 96, 96) in [0, 1], labels, masks
ex = camlens.explain(model, images, method="gradcam")  # layer=None: found automatically
ex

# %% [markdown]
# In a notebook an `Explanation` shows itself as above: for each image, the image, the heatmap
# and the heatmap over the image, with the method, the layer, the class and its score (`ex.html(
# classes=..., preset=...)` names the classes and undoes a normalisation; `ex.show()` draws the
# same as a matplotlib figure).
#
# ## Reading the result

# %%
print("maps  ", tuple(ex.maps.shape), ex.maps.dtype, float(ex.maps.min()), float(ex.maps.max()))
print("raw   ", {k: tuple(v.shape) for k, v in ex.raw.items()})
print("layers", ex.layers)
print("targets", ex.targets.tolist(), [CLASSES[c] for c in ex.targets.tolist()])
print("labels ", labels.tolist())
print("scores", [round(s, 2) for s in ex.scores.tolist()])

# %% [markdown]
# - `ex.maps`: (B, H, W) float32 in [0, 1] at the input's size: the raw map through ReLU,
#   bilinear upsampling and a per-image min-max.
# - `ex.raw`: layer name -> (B, h, w), the method's weighted sum of activations at the layer's
#   resolution, *before* ReLU, normalisation and upsampling (what a metric or your own
#   post-processing should start from).
# - `ex.layers`: the layers explained; `layer=None` found `features`, the CNN's last feature map.
# - `ex.targets`, `ex.scores`: the explained class of each image (its top class by default) and
#   its logit.
#
# Another method, another layer, a given class:

# %%
ex = camlens.explain(model, images, "layercam", layer="features", target=labels)
fig = ex.show(classes=CLASSES, max_items=2)

# %% [markdown]
# How well do the maps point at the object? The masks are the ground truth:

# %%
from camlens import metrics as M

print("pointing game hits:", M.pointing_game(ex.maps, masks).tolist())
print("IoU at 0.5:", [round(v, 3) for v in M.iou(ex.maps, masks).tolist()])

# %% [markdown]
# The reusable form finds the automatic layer once; errors say what would work:

# %%
explainer = camlens.Explainer(model, "gradcampp")
print(explainer(images).layers)
try:
    camlens.explain(model, images, "gradcam", layer="featurs")
except camlens.LayerNotFoundError as err:
    print(type(err).__name__, ":", str(err)[:160], "...")

# %% [markdown]
# Next: [choosing a method](../choosing.md), the [model guides](cnn.md), and
# [measuring explanations](../metrics.md).

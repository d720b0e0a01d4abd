# %% [markdown]
# # Several targets per image
#
# `target=` says what to explain. Several classes per image cost **one forward and one batched
# gradient** for the gradient methods, CAM and Eigen-CAM
# (`torch.autograd.grad(..., is_grads_batched=True)`); the Score-CAM family scores each masked
# image once for all targets. Maps become (B, T, H, W), targets and scores (B, T).

# %%
import torch

import camlens
from camlens import targets as T
from camlens.demo import CLASSES, load_model, shapes

model = load_model()
images, labels, masks = shapes(3, seed=4, size=96)
ex = camlens.explain(model, images, "gradcam", target=T.top(3))
print(tuple(ex.maps.shape), ex.targets.tolist())
print([[CLASSES[c] for c in row] for row in ex.targets.tolist()])

# %%
from IPython.display import HTML

HTML(ex.html(classes=CLASSES, max_items=6))

# %% [markdown]
# The targets, from the simplest:
#
# | `target=` | explains | shapes |
# |---|---|---|
# | `None` | each image's top class | (B, H, W) |
# | `3` or `[3, 1, 4]` | one class for all, or one per image | (B, H, W) |
# | `T.top(k)` | the k top classes of each image | (B, k, H, W) |
# | a (B, T) tensor of ids | given classes per image (multi-label) | (B, T, H, W) |
# | `T.segmentation(c, mask)` | a segmenter's class over a mask | (B, H, W) |
# | `T.similarity(r)` | cosine similarity to an embedding | (B, H, W) |
# | `T.detections(...)` | every detected or given box | (B, T, H, W) |
# | a callable `output -> (B,)` or `(B, T)` | any score you write | (B, H, W) or (B, T, H, W) |
#
# A table of classes per image:

# %%
ids = torch.tensor([[0, 1], [2, 3], [4, 5]])
ex = camlens.explain(model, images, "layercam", target=ids)
print(tuple(ex.maps.shape), ex.targets.tolist())

# %% [markdown]
# A callable scores the output itself; here "star rather than circle", a contrastive score
# $S = y^{\text{star}} - y^{\text{circle}}$ (Finer-CAM, `finercam`, does this with the most
# similar classes):

# %%
star, circle = CLASSES.index("star"), CLASSES.index("circle")
ex = camlens.explain(model, images, "gradcam", target=lambda out: out[:, star] - out[:, circle])
print([round(s, 2) for s in ex.scores.tolist()], ex.targets.tolist())

# %% [markdown]
# The batched path gives the same maps as one run per class, for a fraction of the cost
# (`benchmarks/bench_multitarget.py`, see [Benchmarks](../benchmarks.md)):

# %%
one_by_one = torch.stack(
    [camlens.explain(model, images, "gradcam", target=ids[:, t]).maps for t in range(2)], dim=1
)
batched = camlens.explain(model, images, "gradcam", target=ids).maps
print(torch.allclose(one_by_one, batched, atol=1e-5))

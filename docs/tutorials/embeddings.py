# %% [markdown]
# # Embeddings and similarity
#
# An embedding model has no classes. `camlens.targets.similarity(reference)` explains the cosine
# similarity $S = \cos(f(x), r)$ between each image's embedding and a reference embedding: which
# parts of the image make it look like the reference (the `SimilarityToConceptTarget` of
# pytorch-grad-cam's embeddings tutorial, batched).
#
# The embedder here is the shipped shapes CNN without its classifier: the 96-dimensional pooled
# features.

# %%
from collections import OrderedDict

import torch
from torch import nn

import camlens
from camlens import targets as T
from camlens.demo import CLASSES, load_model, shapes

cnn = load_model()
embedder = nn.Sequential(
    OrderedDict(features=cnn.features, pool=cnn.pool, flatten=nn.Flatten())
).eval()
images, labels, masks = shapes(12, seed=11, size=96)
with torch.no_grad():
    emb = embedder(images)
print(tuple(emb.shape), [CLASSES[c] for c in labels.tolist()])

# %% [markdown]
# The reference is the mean embedding of the images of one class ("a concept"), taken from
# *other* images than the ones explained:

# %%
star = CLASSES.index("star")
ref_images, ref_labels, _ = shapes(60, seed=99, size=96)
with torch.no_grad():
    reference = embedder(ref_images[ref_labels == star]).mean(0)
from camlens import metrics as M

print("classes:", [CLASSES[c] for c in labels[:6].tolist()])
for method in ("gradcam", "layercam"):
    ex = camlens.explain(embedder, images[:6], method, target=T.similarity(reference))
    print(f"{method:8s} layer {ex.layers}  cosine similarity to 'star':",
          [round(s, 2) for s in ex.scores.tolist()],
          " map's maximum on the object:", M.pointing_game(ex.maps, masks[:6]).int().tolist())
ex

# %% [markdown]
# The scores are the cosine similarities (`targets` are -1: no class); the stars score highest.
# Which method to read them with matters: Grad-CAM weights each channel by its mean gradient,
# and the gradient of a cosine similarity has both signs, so its maps often leave the object
# (as on the [ViT](vit.md)); LayerCAM keeps each position's positive evidence and lands on the
# object far more often (the pointing-game line above). The maps shown are LayerCAM's.
#
# A (B, D) reference explains each image against its own reference, e.g. image retrieval
# pairs:

# %%
ex = camlens.explain(embedder, images[:4], "layercam", target=T.similarity(emb[4:8]))
print([round(s, 2) for s in ex.scores.tolist()])

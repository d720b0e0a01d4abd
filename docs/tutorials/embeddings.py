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
import torch
from torch import nn

import camlens
from camlens import targets as T
from camlens.demo import CLASSES, load_model, shapes

cnn = load_model()
embedder = nn.Sequential(cnn.features, cnn.pool, nn.Flatten()).eval()
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
ex = camlens.explain(embedder, images[:6], "gradcam", target=T.similarity(reference))
print("layer", ex.layers, "| cosine similarity to 'star':",
      [round(s, 2) for s in ex.scores.tolist()])
print("classes:", [CLASSES[c] for c in labels[:6].tolist()])
ex

# %% [markdown]
# The scores are the cosine similarities; `targets` are -1 (no class). The stars score highest,
# and their maps sit on the star. A (B, D) reference explains each image against its own
# reference, e.g. image retrieval pairs:

# %%
ex = camlens.explain(embedder, images[:4], "layercam", target=T.similarity(emb[4:8]))
print([round(s, 2) for s in ex.scores.tolist()])

# %% [markdown]
# # Detection
#
# `camlens.targets.detections()` explains a torchvision detector's boxes: one map per detected
# (or given) box, from one forward and one batched gradient. The input is a list of images, as
# torchvision detectors take it; the automatic layer is the backbone's last stage (never the FPN
# or the heads), and the maps are cropped to the resized image, not its padding, so they line up
# with the input.
#
# The site's build has no network, so this detector has random weights (`box_score_thresh=0`
# keeps its low-confidence boxes): the point here is the plumbing, the shapes and the pictures.
# With trained weights the same code explains real detections.

# %%
import torch
import torchvision

import camlens
from camlens import targets as T
from camlens.demo import shapes

torch.manual_seed(0)
det = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
    weights=None, weights_backbone=None, num_classes=3, box_score_thresh=0.0,
    box_detections_per_img=4,
).eval()
images, _, _ = shapes(2, seed=1, size=128)
frames = list(images)  # a list of (3, H, W) images in [0, 1]
with torch.no_grad():
    out = det(frames)
print([len(o["boxes"]) for o in out], out[0]["scores"].tolist())

# %%
ex = camlens.explain(det, frames, "gradcam", target=T.detections(score_threshold=0.0))
print("layers", ex.layers)
print("maps", tuple(ex.maps.shape), "boxes", tuple(ex.extras["boxes"].shape))
print("labels", ex.targets.tolist())

# %% [markdown]
# Each box gets its own map; `ex.extras["boxes"]` holds them (x1, y1, x2, y2 in input pixels).
# Drawn together:

# %%
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from camlens.viz import overlay

fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
for t, ax in enumerate(axes):
    ax.imshow(overlay(images[0], ex.maps[0, t], preset="none"))
    x1, y1, x2, y2 = ex.extras["boxes"][0, t].tolist()
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="white", lw=2))
    ax.set_title(f"box {t}: class {int(ex.targets[0, t])}, {float(ex.scores[0, t]):.2f}", fontsize=8)
    ax.axis("off")
fig.tight_layout()

# %% [markdown]
# ## Explaining boxes you give
#
# With `boxes=` (and optionally `labels=`), each given box is matched to the detection of the
# same label with the highest IoU >= `iou`; a box with no match gets score 0, an empty map and
# `extras["matched"]` False:

# %%
given = torch.tensor([[10.0, 10.0, 70.0, 70.0], [0.0, 0.0, 4.0, 4.0]])
ex = camlens.explain(det, frames, "gradcam", target=T.detections(boxes=given, iou=0.3))
print(tuple(ex.maps.shape), ex.extras["matched"].tolist())

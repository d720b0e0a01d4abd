# %% [markdown]
# # Volumes and video
#
# Inputs (B, C, D, H, W) give maps (B, D, H, W): a layer's (B, C, d, h, w) output is read with
# its depth (or time) axis and upsampled trilinearly. The gradient methods, CAM, Eigen-CAM, the
# Score-CAM family, Ablation-CAM and Recipro-CAM work over any number of spatial dimensions.
#
# A trained video model, offline: the shipped shapes CNN applied to every frame, then averaged
# over time and space (a temporal-segment network). Its `frames` module outputs
# (B, C, D, h, w), so camlens sees a video layer.

# %%
import torch
from torch import nn

import camlens
from camlens.demo import CLASSES, load_model, shapes


class Frames(nn.Module):
    """A 2-D network run on each frame: (B, C, D, H, W) -> (B, C', D, h, w)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        b, c, d, h, w = x.shape
        y = self.net(x.transpose(1, 2).reshape(b * d, c, h, w))
        return y.reshape(b, d, *y.shape[1:]).transpose(1, 2)


class VideoNet(nn.Module):
    def __init__(self, cnn: nn.Module):
        super().__init__()
        self.frames = Frames(cnn.features)
        self.fc = cnn.fc

    def forward(self, x):
        return self.fc(self.frames(x).mean(dim=(2, 3, 4)))


video = VideoNet(load_model()).eval()
# A clip of 6 frames: 3 of a circle, then 3 of a star (96 x 96).
images, labels, _ = shapes(40, seed=2, size=96)
circle, star = CLASSES.index("circle"), CLASSES.index("star")
frames = torch.cat([images[labels == circle][:3], images[labels == star][:3]])
clip = frames.transpose(0, 1)[None]  # (1, 3, 6, 96, 96)
print(tuple(clip.shape))

# %%
ex = camlens.explain(video, clip, "gradcam", target=star)
print(ex.layers, {k: tuple(v.shape) for k, v in ex.raw.items()}, tuple(ex.maps.shape))
print("map energy per frame:", [round(float(ex.maps[0, d].mean()), 3) for d in range(6)])

# %% [markdown]
# The star's evidence is in the last three frames. Every frame's overlay:

# %%
import matplotlib.pyplot as plt

from camlens.viz import overlays

pics = overlays(frames, ex.maps[0], preset="none")
fig, axes = plt.subplots(1, 6, figsize=(12, 2.3))
for d, ax in enumerate(axes):
    ax.imshow(pics[d].numpy())
    ax.set_title(f"frame {d}", fontsize=8)
    ax.axis("off")
fig.tight_layout()

# %% [markdown]
# In a notebook the explanation shows its middle slice (`ex.html(depth=d)` picks another):

# %%
from IPython.display import HTML

HTML(ex.html(depth=4, classes=CLASSES))

# %% [markdown]
# ## torchvision's video models
#
# `r3d_18`, `mc3_18`, `r2plus1d_18` and other 3-D CNNs work as they are (random weights here):

# %%
import torchvision

torch.manual_seed(0)
r3d = torchvision.models.video.r3d_18(weights=None).eval()
x = torch.randn(1, 3, 8, 64, 64)
ex = camlens.explain(r3d, x, "gradcam")
print(ex.layers, {k: tuple(v.shape) for k, v in ex.raw.items()}, tuple(ex.maps.shape))

# %% [markdown]
# # Segmentation
#
# A segmentation model outputs one score map per class. `camlens.targets.segmentation(c)`
# explains the sum of class `c`'s logits over the pixels predicted as `c` (or over a mask you
# give): which features made the model call these pixels `c`.
#
# To have a trained segmenter offline, this page turns the shipped shapes CNN into a fully
# convolutional network (Long et al. 2015): its linear classifier applied at every position of
# the feature map is a 1 x 1 convolution, upsampled to the image.

# %%
import torch
import torch.nn.functional as F
from torch import nn

import camlens
from camlens import targets as T
from camlens.demo import CLASSES, load_model, shapes


class ShapesFCN(nn.Module):
    """The demo CNN as a segmenter: features -> 1x1 conv (the classifier's weights) -> upsample."""

    def __init__(self, cnn: nn.Module):
        super().__init__()
        self.features = cnn.features
        fc = cnn.fc
        self.classifier = nn.Conv2d(fc.in_features, fc.out_features, 1)
        with torch.no_grad():
            self.classifier.weight.copy_(fc.weight[:, :, None, None])
            self.classifier.bias.copy_(fc.bias)

    def forward(self, x):
        out = self.classifier(self.features(x))
        return {"out": F.interpolate(out, size=x.shape[-2:], mode="bilinear")}


cnn = load_model()
print([name for name, _ in cnn.named_children()])

# %%
seg = ShapesFCN(cnn).eval()
images, labels, masks = shapes(4, seed=7, size=96)
with torch.no_grad():
    pred = seg(images)["out"].argmax(1)
print("pixels predicted as the true class:",
      [int((pred[i] == labels[i]).sum()) for i in range(4)])

# %% [markdown]
# Explain the true class of each image over its predicted pixels. The output is a dict with
# `"out"` (torchvision's convention), which camlens reads. The automatic layer of this model is
# its last spatial layer, `classifier`: the 1 x 1 convolution whose maps are the class logits
# themselves. `layer="features"` asks which features made them:

# %%
print("automatic layer:", camlens.explain(seg, images[:1], "gradcam",
                                          target=T.segmentation(int(labels[0]))).layers)
ex = camlens.explain(seg, images, "gradcam", "features", target=T.segmentation(labels.tolist()))
print(ex.layers, tuple(ex.maps.shape))
from IPython.display import HTML

HTML(ex.html(classes=CLASSES))  # `ex` alone shows the same with class ids

# %% [markdown]
# Over a region you choose, e.g. the ground-truth mask:

# %%
ex = camlens.explain(
    seg, images, "layercam", "features", target=T.segmentation(labels.tolist(), masks)
)
fig = ex.show(classes=CLASSES, max_items=2)

# %% [markdown]
# ## torchvision's segmentation models
#
# DeepLabV3, FCN and LR-ASPP work as they are; the automatic layer is the backbone's last stage,
# never the head (random weights here: the shapes are the point):

# %%
import torchvision

torch.manual_seed(0)
deeplab = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
    weights=None, weights_backbone=None, num_classes=4
).eval()
x = torch.randn(1, 3, 128, 128)
ex = camlens.explain(deeplab, x, "gradcam", target=T.segmentation(1))
print(ex.layers, {k: tuple(v.shape) for k, v in ex.raw.items()}, tuple(ex.maps.shape))

# %% [markdown]
# When no pixel is predicted as the class, camlens warns rather than returning empty maps.

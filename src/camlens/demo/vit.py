"""The second demo model: a small hybrid Vision Transformer on top of the demo CNN's features.

The hybrid architecture of the ViT paper (Dosovitskiy et al., "An Image is Worth 16x16 Words",
ICLR 2021, sec. 3.1): the input sequence is built from a CNN feature map instead of raw image
patches. Here the CNN is the shipped :class:`~camlens.demo.model.ShapesCNN`'s ``features``
(96 x 96 images -> (B, 96, 12, 12), frozen during training and stored in this model's state, so
its safetensors file is self-contained), projected by a 1 x 1 convolution to ``dim`` channels and
flattened to 144 patch tokens. A class token is prepended, learned position embeddings added,
then ``depth`` pre-norm transformer blocks, a final LayerNorm and a linear head on the class
token:

    z_0 = [x_cls; E(F(x))] + E_pos
    z'_l = z_{l-1} + MSA(LN(z_{l-1})),   z_l = z'_l + MLP(LN(z'_l))
    y = head(LN(z_L)[:, 0])

Module names follow timm's ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks.i.norm1``, ``blocks.i.attn.qkv``, ``norm``, ``head``; the CNN is
``patch_embed.backbone`` as in timm's ``HybridEmbed``), and attention runs through
:func:`torch.nn.functional.scaled_dot_product_attention` as in timm, so tools written for timm
ViTs apply.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from camlens.demo.model import ShapesCNN
from camlens.demo.shapes import CLASSES
from camlens.errors import InputError

#: the CNN's total stride: one token per 8 x 8 pixels
PATCH = 8
#: the image size the position embeddings are learned for
IMAGE_SIZE = 96


class PatchEmbed(nn.Module):
    """``backbone`` (the demo CNN's features) -> ``proj`` (1 x 1 Conv2d) -> (B, h*w, dim).

    ``proj``'s output (B, dim, h, w) is the last 4-D feature map before the tokens: flattened
    row by row, so token ``1 + i*w + j`` (after the class token) is grid cell (i, j).
    """

    def __init__(self, dim: int = 64, image_size: int = IMAGE_SIZE):
        super().__init__()
        self.backbone = ShapesCNN().features
        self.proj = nn.Conv2d(96, dim, kernel_size=1)
        self.img_size = (image_size, image_size)
        self.patch_size = (PATCH, PATCH)
        self.grid_size = (image_size // PATCH, image_size // PATCH)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, N, dim) patch tokens."""
        return self.proj(self.backbone(x)).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention: ``qkv`` Linear -> fused SDPA -> ``proj`` Linear.

    softmax(q k^T / sqrt(d_head)) v per head, computed by
    :func:`torch.nn.functional.scaled_dot_product_attention` (as timm does), so the attention
    weights are never materialised by the model itself.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise InputError(f"dim {dim} must be a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, dim) -> (B, N, dim): multi-head self-attention (fused SDPA)."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    """``fc1`` -> GELU ``act`` -> ``fc2``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, dim) -> (B, N, dim)."""
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 2.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, dim) -> (B, N, dim): pre-norm attention and MLP, each with a residual."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


@torch.fx.wrap
def _check_tokens(tokens: Tensor, expected: int) -> Tensor:
    """``tokens`` unchanged if it has ``expected`` patch tokens, else a clear error.

    A leaf for torch.fx (the check depends on a shape), so the model stays traceable.
    """
    if tokens.shape[1] != expected:
        side = round(expected**0.5) * PATCH
        raise InputError(
            f"ShapesViT's position embeddings are learned for {side} x {side} images "
            f"({expected} patch tokens); these images give {tokens.shape[1]}. "
            f"Resize the images to {side} x {side} (camlens.demo.shapes(..., size={side}))."
        )
    return tokens


class ShapesViT(nn.Module):
    """Hybrid ViT: demo CNN features -> 1 x 1 conv -> 144 tokens + class token -> 2 blocks.

    Inputs are images in [0, 1], 96 x 96 (as for :class:`ShapesCNN`). ``num_prefix_tokens`` is 1
    (the class token), ``patch_embed.grid_size`` (12, 12). Not a GAP head, so CAM does not apply;
    Grad-CAM and relatives explain a block's input norm (``blocks.1.norm1``).
    """

    def __init__(
        self,
        num_classes: int = len(CLASSES),
        dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.embed_dim = dim
        self.num_prefix_tokens = 1
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, dim))
        self.blocks = nn.Sequential(*(Block(dim, num_heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """timm's ViT initialisation for the transformer part (the CNN keeps its own)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in [*self.blocks.modules(), self.head]:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def transformer_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the CNN backbone's: what training updates."""
        frozen = {id(p) for p in self.patch_embed.backbone.parameters()}
        return [p for p in self.parameters() if id(p) not in frozen]

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) images in [0, 1] -> (B, 6) logits from the class token."""
        tokens = _check_tokens(self.patch_embed(x), self.patch_embed.num_patches)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        z = torch.cat([cls, tokens], dim=1) + self.pos_embed
        z = self.norm(self.blocks(z))
        return self.head(z[:, 0])

"""Transformer blocks: find them, tap them for one forward, and read their tokens out.

Layer-wise transformer methods (LeGrad) need three things the generic layer machinery does not
give: the list of a ViT's blocks, each block's output tokens z_l in the autograd graph, and the
model's own *readout* (final norm, pooling, head or projection) applied to z_l as if it were the
last block's output. This room knows the families camlens supports (``pool="model"``):

- torchvision ``VisionTransformer``: blocks ``encoder.layers``, readout
  ``heads(encoder.ln(z)[:, 0])``;
- timm ``VisionTransformer`` (DeiT, EVA, register tokens, average pooling): ``blocks``,
  ``forward_head(norm(z))``; timm-style models without ``forward_head`` (the demo ViT):
  ``head(norm(z)[:, 0])``;
- HF ``ViTForImageClassification``: ``vit.encoder.layer``, ``classifier(vit.layernorm(z)[:, 0])``;
- HF ``CLIPVisionModelWithProjection``: ``vision_model.encoder.layers``,
  ``visual_projection(vision_model.post_layernorm(z[:, 0]))``;
- open_clip ``VisionTransformer`` (``model.visual``): ``transformer.resblocks``,
  ``model._pool(z)[0] @ model.proj`` (its own pooling and ``ln_post``).

``pool="mean"`` replaces the pooling with the mean over *all* tokens (class token included)
followed by the final norm and the head: ``head(norm(mean_t z_t))``, what the LeGrad authors'
code does for CLIP and TorchCAM does for torchvision ViTs.

:class:`BlockTaps` is a context manager active for one forward: each block's input becomes a
fresh leaf that requires grad (so that no gradient flows from block l + 1 back into block l),
and each block's output is recorded. Its hooks are removed on exit, also after an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from camlens.capture import HookSet
from camlens.errors import InputError, UnsupportedModelError

Readout = Callable[[Tensor], Any]


def _get(model: nn.Module, path: str) -> Any:
    obj: Any = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


_BLOCK_PATHS = (
    "encoder.layers",  # torchvision
    "blocks",  # timm, the demo ViT
    "vit.encoder.layer",  # HF ViT (transformers < 5 and 5)
    "vit.encoder.layers",
    "vit.layers",
    "vision_model.encoder.layers",  # HF CLIP vision tower
    # open_clip CLIP explained with targets.text: its image tower's blocks (the CLIP's own
    # ``transformer`` is its text tower, so this path comes first)
    "visual.transformer.resblocks",
    "transformer.resblocks",  # open_clip VisionTransformer
)


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, block) of a supported ViT's transformer blocks, in forward order.

    Looks for the containers listed in the module docstring (``encoder.layers``, ``blocks``,
    ``vit.encoder.layer``, ``vision_model.encoder.layers``, ``transformer.resblocks``).
    """
    for path in _BLOCK_PATHS:
        container = _get(model, path)
        if isinstance(container, (nn.ModuleList, nn.Sequential)) and len(container) > 0:
            return [(f"{path}.{name}", block) for name, block in container.named_children()]
    raise UnsupportedModelError(
        f"cannot find the transformer blocks of {type(model).__name__}: legrad supports "
        "torchvision, timm and Hugging Face ViTs and CLIP vision towers (open_clip "
        "model.visual, HF CLIPVisionModelWithProjection), whose blocks are one of "
        f"{', '.join(_BLOCK_PATHS)}; for other transformers use 'gae' or a layer method"
    )


def _pooled(z: Tensor, pool: str, prefix: int) -> Tensor:
    """The class token (``"cls"``) or the mean over all tokens (``"mean"``)."""
    if pool == "mean":
        return z.mean(dim=1)
    if prefix == 0:
        raise UnsupportedModelError(
            "the model has no class token to pool; use pool='mean' or readout=..."
        )
    return z[:, 0]


def default_pool(model: nn.Module) -> str:
    """``"mean"`` for torchvision ViTs (as the LeGrad authors' code and TorchCAM read them),
    ``"model"`` (the model's own pooling) for every other family."""
    tv = isinstance(_get(model, "encoder.ln"), nn.Module) and hasattr(model, "heads")
    return "mean" if tv else "model"


def find_readout(model: nn.Module, pool: str = "model") -> Readout:
    """The model's own readout as a function of one block's output tokens z (B, N, C).

    ``pool="model"``: the model's final norm, pooling and head, exactly as its forward applies
    them after the last block (so the readout of the last block's output is the model's
    output); ``pool="mean"``: ``head(norm(mean over all tokens of z))``. See the module table.
    An image-text model explained with :func:`camlens.targets.text` (the engine runs its image
    tower, :class:`camlens.targets_text.ImageTower`, whose output is the cosine similarity to
    each prompt): the tower's readout, normalised, times the prompts' unit embeddings.
    """
    if pool not in ("model", "mean"):
        raise InputError(f"pool must be 'model' or 'mean', got {pool!r}")
    text = getattr(model, "text", None)
    if isinstance(text, Tensor) and hasattr(model, "wrapped"):  # targets.text's ImageTower
        visual = getattr(model, "visual", None)
        inner = _own_readout(visual if isinstance(visual, nn.Module) else model, pool)
        return lambda z: F.normalize(inner(z), dim=-1) @ text.to(z.device, z.dtype).T
    return _own_readout(model, pool)


def _own_readout(model: nn.Module, pool: str) -> Readout:
    """:func:`find_readout` for one model family (the table in the module docstring)."""
    # torchvision VisionTransformer
    ln, heads = _get(model, "encoder.ln"), getattr(model, "heads", None)
    if isinstance(ln, nn.Module) and isinstance(heads, nn.Module):
        if pool == "mean":
            return lambda z: heads(ln(z.mean(dim=1)))
        return lambda z: heads(ln(z)[:, 0])
    # open_clip VisionTransformer
    if hasattr(model, "ln_post") and hasattr(model, "_pool"):

        def open_clip_readout(z: Tensor) -> Tensor:
            if getattr(_get(model, "transformer"), "batch_first", True) is False:
                z = z.transpose(0, 1)
            pooled = model.ln_post(z.mean(dim=1)) if pool == "mean" else model._pool(z)[0]
            return pooled @ model.proj if model.proj is not None else pooled

        return open_clip_readout
    # HF CLIPVisionModelWithProjection
    post, proj = (
        _get(model, "vision_model.post_layernorm"),
        getattr(model, "visual_projection", None),
    )
    if isinstance(post, nn.Module) and isinstance(proj, nn.Module):
        return lambda z: proj(post(_pooled(z, "mean" if pool == "mean" else "cls", 1)))
    # HF ViTForImageClassification
    norm, classifier = _get(model, "vit.layernorm"), getattr(model, "classifier", None)
    if isinstance(norm, nn.Module) and isinstance(classifier, nn.Module):
        if pool == "mean":
            return lambda z: classifier(norm(z.mean(dim=1)))
        return lambda z: classifier(norm(z)[:, 0])
    # timm and timm-style
    norm, head = getattr(model, "norm", None), getattr(model, "head", None)
    if isinstance(norm, nn.Module) and isinstance(head, nn.Module):
        prefix = int(getattr(model, "num_prefix_tokens", 1))
        if pool == "mean":
            fc_norm = getattr(model, "fc_norm", nn.Identity())
            return lambda z: head(fc_norm(norm(z.mean(dim=1))))
        forward_head = getattr(model, "forward_head", None)
        if callable(forward_head):
            return lambda z: forward_head(norm(z))
        return lambda z: head(norm(z)[:, 0] if prefix else norm(z).mean(dim=1))
    raise UnsupportedModelError(
        f"cannot find the readout (final norm + head) of {type(model).__name__}; pass "
        "readout=callable mapping one block's output tokens (B, N, C) to the model's output"
    )


def _tokens(output: Any) -> Tensor:
    """A block's output tokens: the tensor itself or the first element of a tuple."""
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        output = output[0]
    if not isinstance(output, Tensor) or output.ndim != 3:
        kind = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise UnsupportedModelError(f"a transformer block returned {kind}, not tokens (B, N, C)")
    return output


class BlockTaps(HookSet):
    """For one forward: cut the graph between blocks and record every block's output.

    ``with BlockTaps(blocks) as taps: model(x)`` then ``taps.outputs[l]`` is block l's output
    tokens (B, N, C), in the graph. Each block's input (its first positional argument or
    ``hidden_states``) is replaced by ``input.detach().requires_grad_(True)``: the values are
    unchanged, but a gradient taken from block l's output stops at block l's input, so
    d s_l / d A_l (A_l block l's attention) is what one backward of sum_l s_l gives.
    """

    def __init__(self, blocks: list[tuple[str, nn.Module]]):
        self.blocks = blocks
        self.outputs: list[Tensor | None] = [None] * len(blocks)
        super().__init__()

    def _pre(self, _module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        def cut(t: Any) -> Any:
            return t.detach().requires_grad_(True) if isinstance(t, Tensor) else t

        if args:
            return (cut(args[0]), *args[1:]), kwargs
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": cut(kwargs["hidden_states"])}
        return args, kwargs

    def _post(self, index: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if self.outputs[index] is not None:
                raise UnsupportedModelError(
                    f"block {self.blocks[index][0]!r} ran twice in one forward pass"
                )
            self.outputs[index] = _tokens(output)

        return hook

    def _register(self) -> Iterator[Any]:
        for i, (_, block) in enumerate(self.blocks):
            yield block.register_forward_pre_hook(self._pre, with_kwargs=True)
            yield block.register_forward_hook(self._post(i))


def ran(taps: BlockTaps) -> list[Tensor]:
    """The recorded outputs, with an error naming the blocks that did not run."""
    pairs = zip(taps.blocks, taps.outputs, strict=True)
    missing = [name for (name, _), out in pairs if out is None]
    if missing:
        raise UnsupportedModelError(f"transformer block(s) {missing} did not run in the forward")
    return [out for out in taps.outputs if out is not None]

"""Text prompts for image-text models (CLIP, SigLIP): one map per prompt.

``camlens.explain(clip, images, "gradcam", target=camlens.targets.text(prompts, clip))``
explains, for each prompt p, the cosine similarity of the image embedding to the prompt's
embedding,

    S_p(x) = <f(x), t_p> / (|f(x)| |t_p|),   t_p = g(tokenize(p)),

where f is the model's image tower (with its projection) and g its text tower. The prompts are
tokenized with the model's own tokenizer and embedded once, when the target is built, without
gradient. At explain time the engine runs the model through :class:`ImageTower`, a module whose
children *are* the model's children (so layer names are the model's own) and whose forward is
the image tower followed by the cosine similarities (B, P); the P similarities of a batch are
explained by one forward and one batched gradient.

Supported: open_clip models (``encode_image`` / ``encode_text``; the default tokenizer is the
simple BPE tokenizer that ships with open_clip, offline) and Hugging Face ``CLIPModel`` /
``SiglipModel`` (``get_image_features`` / ``get_text_features``; the tokenizer or processor is
passed, or a local folder that holds one). Re-exported by :mod:`camlens.targets`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camlens.caller import warn_user
from camlens.capture import preserved_model
from camlens.errors import InputError, TargetError, UnsupportedModelError
from camlens.layouts import describe, primary_output
from camlens.targets import ScoreFn, Selection, Target

_SIMPLE_VOCAB = 49408  # open_clip's SimpleTokenizer (the OpenAI CLIP BPE)


def _features(value: Any) -> Tensor:
    """A tower's embedding: a tensor, or ``pooler_output`` / ``*_embeds`` of a ModelOutput."""
    if isinstance(value, Tensor):
        return value
    for key in ("pooler_output", "image_embeds", "text_embeds"):
        found = value.get(key) if isinstance(value, Mapping) else getattr(value, key, None)
        if isinstance(found, Tensor):
            return found
    raise UnsupportedModelError(f"an image-text tower returned {describe(value)}, no embedding")


def _towers(model: nn.Module) -> tuple[Callable[[Tensor], Tensor], str]:
    """(image tower x -> (B, D) embeddings, family) of an image-text model."""
    if callable(getattr(model, "encode_image", None)) and callable(
        getattr(model, "encode_text", None)
    ):
        return (lambda x: _features(model.encode_image(x))), "open_clip"
    if callable(getattr(model, "get_image_features", None)) and callable(
        getattr(model, "get_text_features", None)
    ):
        return (lambda x: _features(model.get_image_features(pixel_values=x))), "hf"
    raise UnsupportedModelError(
        f"text() needs an image-text model with an image and a text tower: an open_clip model "
        f"(encode_image / encode_text) or a Hugging Face CLIPModel / SiglipModel "
        f"(get_image_features / get_text_features), got {type(model).__name__}"
    )


def _hf_tokenizer(tokenizer: Any) -> Any:
    """An HF tokenizer from a tokenizer, a processor (its ``.tokenizer``) or a local folder."""
    if isinstance(tokenizer, (str, Path)):
        if not Path(tokenizer).is_dir():
            raise InputError(
                f"tokenizer={str(tokenizer)!r} is not a local folder; pass a tokenizer or "
                "processor object, or the folder where one was saved (save_pretrained)"
            )
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True)
    return getattr(tokenizer, "tokenizer", None) or tokenizer


def _default_tokenizer(model: nn.Module, family: str) -> Any:
    if family == "open_clip":
        vocab = getattr(model, "vocab_size", None)
        if vocab not in (None, _SIMPLE_VOCAB):
            raise InputError(
                f"{type(model).__name__} has a text vocabulary of {vocab} tokens, not the "
                f"{_SIMPLE_VOCAB} of open_clip's simple tokenizer; pass "
                "tokenizer=open_clip.get_tokenizer(MODEL_NAME)"
            )
        from open_clip.tokenizer import SimpleTokenizer

        return SimpleTokenizer(context_length=int(getattr(model, "context_length", 77)))
    source = getattr(getattr(model, "config", None), "_name_or_path", "")
    if source and Path(source).is_dir():
        try:
            return _hf_tokenizer(source)
        except (OSError, ValueError):
            pass
    raise InputError(
        f"text() needs the tokenizer of this {type(model).__name__}: pass tokenizer= a "
        "tokenizer or processor object, or the local folder where one was saved"
    )


def _token_inputs(model: nn.Module, family: str, tokenizer: Any, prompts: list[str]) -> dict:
    """The text tower's keyword inputs for ``prompts``, on the model's device."""
    device = next(model.parameters()).device
    if family == "open_clip" and not isinstance(tokenizer, (str, Path)):
        if not callable(tokenizer):
            raise InputError(f"tokenizer must be callable, got {type(tokenizer).__name__}")
        ids = tokenizer(prompts)
        if isinstance(ids, Tensor):
            return {"text": ids.to(device)}
        ids = _features_ids(ids)
        return {"text": ids.to(device)}
    if family == "open_clip":
        import open_clip

        return {"text": open_clip.get_tokenizer(str(tokenizer))(prompts).to(device)}
    tok = _hf_tokenizer(tokenizer)
    if not callable(tok):
        raise InputError(f"tokenizer must be callable, got {type(tok).__name__}")
    text_config = getattr(getattr(model, "config", None), "text_config", None)
    longest = int(getattr(text_config, "max_position_embeddings", 77))
    siglip = "siglip" in type(model).__name__.lower()
    # SigLIP was trained on prompts padded to the full length (its model card says so); CLIP
    # pools at the end-of-text token and takes an attention mask.
    encoded = tok(
        prompts,
        padding="max_length" if siglip else True,
        truncation=True,
        max_length=longest,
        return_tensors="pt",
    )
    out = {"input_ids": _features_ids(encoded).to(device)}
    mask = encoded.get("attention_mask") if isinstance(encoded, Mapping) else None
    if mask is not None and not siglip:
        out["attention_mask"] = mask.to(device)
    return out


def _features_ids(encoded: Any) -> Tensor:
    ids = encoded.get("input_ids") if isinstance(encoded, Mapping) else None
    if not isinstance(ids, Tensor):
        raise InputError(
            f"the tokenizer returned {describe(encoded)}; it must return token ids as a tensor "
            "or a mapping with 'input_ids'"
        )
    return ids


def embed_text(model: nn.Module, prompts: Sequence[str], tokenizer: Any = None) -> Tensor:
    """t_p / |t_p|: the unit text embeddings (P, D) of ``prompts`` by the model's text tower,
    without gradient; the model is left as it came (eval for the call)."""
    _, family = _towers(model)
    tokenizer = _default_tokenizer(model, family) if tokenizer is None else tokenizer
    inputs = _token_inputs(model, family, tokenizer, list(prompts))
    with preserved_model(model), torch.no_grad():
        if family == "open_clip":
            emb = _features(model.encode_text(inputs["text"]))
        else:
            emb = _features(model.get_text_features(**inputs))
    return F.normalize(emb.float(), dim=-1)


class ImageTower(nn.Module):
    """forward(x) = cos(f(x), t_p) for every prompt p: (B, P), f the image tower.

    Its children are the wrapped model's children (the same modules, not copies), so that
    layer names and modules are the model's own; the model itself is not registered.
    """

    def __init__(self, model: nn.Module, image: Callable[[Tensor], Tensor], text: Tensor):
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "wrapped", model)
        object.__setattr__(self, "_image", image)
        self.text = text

    def forward(self, images: Tensor) -> Tensor:
        emb = self._image(images)
        if emb.ndim != 2 or emb.shape[1] != self.text.shape[1]:
            raise UnsupportedModelError(
                f"{type(self.wrapped).__name__} returned {describe(emb)} for the images, but the "
                f"prompts' embeddings have {self.text.shape[1]} dimensions: explain the "
                "image-text model the prompts were embedded with, or its image tower"
            )
        text = self.text.to(emb.device, emb.dtype)
        return F.normalize(emb, dim=-1) @ text.T


class Text(Target):
    """S_p = cos(f(x), t_p) for each prompt p (or each image's ``top`` best prompts)."""

    def __init__(
        self,
        prompts: str | Sequence[str],
        model: nn.Module,
        tokenizer: Any = None,
        top: int | None = None,
    ):
        single = isinstance(prompts, str)
        items = [prompts] if single else prompts
        if (
            not isinstance(items, Sequence)
            or isinstance(items, (bytes, bytearray))
            or not items
            or not all(isinstance(p, str) and p.strip() for p in items)
        ):
            kinds = sorted({type(p).__name__ for p in items}) if isinstance(items, Sequence) else []
            got = f"{type(prompts).__name__}" + (f" of {', '.join(kinds)}" if kinds else "")
            raise TargetError(
                f"text() prompts must be a non-empty string or a non-empty list of non-empty "
                f"strings, got {got}"
            )
        if not isinstance(model, nn.Module):
            raise TargetError(
                f"text(prompts, model) needs the image-text nn.Module, got {type(model).__name__}"
            )
        if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
            raise TargetError(f"text(top=k) needs a positive int, got {top!r}")
        if top is not None and top > len(items):
            raise TargetError(f"text(top={top}) but there are only {len(items)} prompts")
        self.prompts = list(items)
        self.single = single and top is None
        self.top = top
        self.model = model
        image, _ = _towers(model)
        self.embeddings = embed_text(model, self.prompts, tokenizer)
        self._tower = ImageTower(model, image, self.embeddings)

    def bind(self, model: nn.Module) -> nn.Module:
        """The module the engine runs: the model's image tower scored against the prompts."""
        if model is self.model or model is self._tower:
            return self._tower
        if isinstance(model, ImageTower):
            raise TargetError("this text() target was built with another model")
        # an image tower alone (e.g. clip.visual): its output is the image embedding
        warn_user(
            f"text(): the prompts were embedded with {type(self.model).__name__}, explained "
            f"through {type(model).__name__}; its output must be that model's image embedding"
        )
        return ImageTower(model, lambda x: _features(model(x)), self.embeddings)

    def select(
        self, output: Any, batch: int, copies: int = 0, score: ScoreFn | None = None
    ) -> Selection:
        sims = primary_output(output)
        total, count = batch * (1 + copies), len(self.prompts)
        if sims.ndim != 2 or sims.shape != (total, count):
            raise UnsupportedModelError(
                f"text() reads the ({total}, {count}) prompt similarities of its image tower, got "
                f"{describe(output)}; pass the image-text model to camlens.explain"
            )
        if self.top is not None:
            ids = sims[:batch].detach().topk(self.top, dim=1).indices
            ids = torch.cat([ids, ids.repeat_interleave(copies, dim=0)]) if copies else ids
        else:
            ids = torch.arange(count, device=sims.device).expand(total, count)
        picked = sims.gather(1, ids)
        if self.single:
            return Selection(picked[:, 0], ids[:, 0].clone())
        return Selection(picked, ids.clone())

    def __repr__(self) -> str:
        return f"text({self.prompts!r})"


def text(
    prompts: str | Sequence[str],
    model: nn.Module,
    tokenizer: Any = None,
    top: int | None = None,
) -> Text:
    """Explain an image-text model's similarity to text prompts: one map per prompt.

    S_p = <f(x), t_p> / (|f(x)| |t_p|) (the cosine similarity CLIP's zero-shot logits scale by
    ``logit_scale``; SigLIP adds a bias and a sigmoid, monotone in it), t_p from the model's
    own text tower, embedded once here.

    ``prompts``: a string (maps (B, H, W)) or a list of P strings (maps (B, P, H, W), one
    batched gradient); ``top=k``: zero-shot, explain each image's k most similar prompts
    (maps (B, k, H, W), ``targets`` the prompt indices, best first). ``model``: an open_clip
    model or an HF ``CLIPModel`` / ``SiglipModel``; pass the same model to ``camlens.explain``
    (the automatic layer is then found on its image tower). ``tokenizer``: None (open_clip's
    simple tokenizer; for HF models a tokenizer saved next to the model's config), a tokenizer
    or processor, a local folder holding one (HF), or an open_clip model name
    (``open_clip.get_tokenizer``). ``Explanation.logits`` holds all P similarities.
    """
    return Text(prompts, model, tokenizer, top)

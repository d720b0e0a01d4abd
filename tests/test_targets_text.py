"""text(prompts, model): CLIP / SigLIP prompt similarities against the models' own towers.

Tiny models with random weights, built offline: open_clip's CLIP with its simple tokenizer (its
vocabulary ships with open_clip), and Hugging Face CLIPModel / SiglipModel with a word-level
tokenizer saved to a temporary folder.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import camlens
from camlens import targets as T
from tests.conftest import hook_count

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

PROMPTS = ["a dog", "a cat", "a red car"]
WORDS = ["[PAD]", "[UNK]", "[EOS]", "a", "dog", "cat", "red", "car", "photo", "of"]


@pytest.fixture(scope="module")
def oc_model() -> nn.Module:
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=32)
    text = CLIPTextCfg(context_length=16, vocab_size=49408, width=32, heads=2, layers=1)
    return open_clip.CLIP(16, vision, text).eval()


@pytest.fixture(scope="module")
def hf_tokenizer_dir(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]"
    )
    folder = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(folder)
    return folder


def hf_model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    text = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=len(WORDS),
        max_position_embeddings=16,
    )
    if kind == "clip":
        config = transformers.CLIPConfig(
            text_config={**text, "eos_token_id": 2, "bos_token_id": 0, "pad_token_id": 0},
            vision_config=vision,
            projection_dim=16,
        )
        return transformers.CLIPModel(config).eval()
    config = transformers.SiglipConfig(text_config=text, vision_config=vision)
    return transformers.SiglipModel(config).eval()


@pytest.fixture
def x() -> Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32)


def _pooled(value) -> Tensor:
    return value if isinstance(value, Tensor) else value.pooler_output


def hand_cosines(model: nn.Module, images: Tensor, tokenizer_dir: Path | None) -> Tensor:
    """cos(f(x), g(p)) by the model's own towers, written out without camlens."""
    with torch.no_grad():
        if tokenizer_dir is None:
            tokens = open_clip.tokenizer.SimpleTokenizer(context_length=16)(PROMPTS)
            img, txt = model.encode_image(images), model.encode_text(tokens)
        else:
            tok = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
            siglip = isinstance(model, transformers.SiglipModel)
            enc = tok(
                PROMPTS,
                padding="max_length" if siglip else True,
                truncation=True,
                max_length=16,
                return_tensors="pt",
            )
            kwargs = {"input_ids": enc["input_ids"]}
            if not siglip:
                kwargs["attention_mask"] = enc["attention_mask"]
            txt = _pooled(model.get_text_features(**kwargs))
            img = _pooled(model.get_image_features(pixel_values=images))
    return F.cosine_similarity(img[:, None, :], txt[None, :, :], dim=-1)


def hand_gradcam(model: nn.Module, layer: nn.Module, image_fn, text: Tensor, x: Tensor) -> Tensor:
    """Grad-CAM per prompt: hook, leaf, autograd per prompt, re-index the 4 x 4 patch tokens."""
    store: dict[str, Tensor] = {}

    def hook(_m, _i, out):
        store["a"] = out.detach().requires_grad_(True)
        return store["a"]

    handle = layer.register_forward_hook(hook)
    try:
        emb = image_fn(x)
    finally:
        handle.remove()
    cos = F.normalize(emb, dim=-1) @ text.T
    a = store["a"]
    prefix = a.shape[1] - 16
    maps = []
    for p in range(text.shape[0]):
        (g,) = torch.autograd.grad(cos[:, p].sum(), a, retain_graph=True)
        grid = lambda t: t[:, prefix:].transpose(1, 2).reshape(t.shape[0], -1, 4, 4)  # noqa: E731
        weights = grid(g).mean(dim=(2, 3), keepdim=True)
        maps.append((weights * grid(a.detach())).sum(dim=1))
    return torch.stack(maps, dim=1)


def test_open_clip_prompt_scores_equal_the_cosine_by_hand(oc_model, x) -> None:
    target = T.text(PROMPTS, oc_model)
    ex = camlens.explain(oc_model, x, "gradcam", target=target)
    cos = hand_cosines(oc_model, x, None)
    assert torch.allclose(ex.scores, cos, atol=1e-6)
    assert torch.allclose(ex.logits, cos, atol=1e-6)
    assert ex.targets.tolist() == [[0, 1, 2]] * 2
    assert ex.maps.shape == (2, 3, 32, 32)
    assert ex.layers == ["visual.transformer.resblocks.1.ln_1"]  # the last block's input norm


def test_open_clip_maps_equal_a_hand_written_gradcam(oc_model, x) -> None:
    target = T.text(PROMPTS, oc_model)
    ex = camlens.explain(oc_model, x, "gradcam", target=target)
    layer = oc_model.visual.transformer.resblocks[1].ln_1
    ref = hand_gradcam(oc_model, layer, oc_model.encode_image, target.embeddings, x)
    assert torch.allclose(ex.raw[ex.layers[0]], ref, atol=1e-6)
    # the image tower alone, with the same prompts, gives the same maps under its own names
    with pytest.warns(UserWarning, match="embedded with CLIP"):
        alone = camlens.explain(oc_model.visual, x, "gradcam", target=target)
    assert torch.allclose(alone.raw["transformer.resblocks.1.ln_1"], ref, atol=1e-6)


def test_the_image_tower_warning_points_at_the_users_call(oc_model, x) -> None:
    """The warning of text() explained through another module names the user's line (not
    the engine's context manager that binds the target), for explain and Explainer alike."""
    target = T.text(PROMPTS, oc_model)
    explainer = camlens.Explainer(oc_model.visual, "gradcam")
    message = (
        "text(): the prompts were embedded with CLIP, explained through VisionTransformer; its "
        "output must be that model's image embedding"
    )
    lines: list[int] = []
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        lines.append(inspect.currentframe().f_lineno + 1)
        camlens.explain(oc_model.visual, x, "gradcam", target=target)
        lines.append(inspect.currentframe().f_lineno + 1)
        explainer(x, target)
    found = [w for w in record if "embedded with" in str(w.message)]
    assert [str(w.message) for w in found] == [message] * 2
    assert [(w.filename, w.lineno, w.category) for w in found] == [
        (__file__, line, UserWarning) for line in lines
    ]


def test_one_forward_one_batched_gradient_and_the_model_as_it_came(oc_model, x, monkeypatch):
    target = T.text(PROMPTS, oc_model)
    oc_model.train()
    oc_model.text_projection.requires_grad_(False)
    try:
        forwards: list[int] = []
        handle = oc_model.visual.register_forward_hook(lambda *_: forwards.append(1))
        calls: list[bool] = []
        real = torch.autograd.grad

        def counting(*args, **kwargs):
            calls.append(bool(kwargs.get("is_grads_batched")))
            return real(*args, **kwargs)

        explainer = camlens.Explainer(oc_model, "layercam")
        explainer(x, target)  # the automatic layer's dry run happens on this first call
        forwards.clear()
        monkeypatch.setattr(torch.autograd, "grad", counting)
        explainer(x, target)
        monkeypatch.undo()
        handle.remove()
        assert forwards == [1] and calls == [True]
        assert all(m.training for m in oc_model.modules())
        assert not oc_model.text_projection.requires_grad
        assert oc_model.visual.proj.requires_grad
        assert hook_count(oc_model) == 0
    finally:
        oc_model.eval()
        oc_model.text_projection.requires_grad_(True)


def test_zero_shot_top_k(oc_model, x) -> None:
    ex = camlens.explain(oc_model, x, "gradcam", target=T.text(PROMPTS, oc_model, top=2))
    cos = hand_cosines(oc_model, x, None)
    top = cos.topk(2, dim=1)
    assert torch.equal(ex.targets, top.indices)
    assert torch.allclose(ex.scores, top.values, atol=1e-6)
    full = camlens.explain(oc_model, x, "gradcam", target=T.text(PROMPTS, oc_model))
    key = ex.layers[0]
    picked = full.raw[key].gather(1, top.indices[:, :, None, None].expand(-1, -1, 4, 4))
    assert torch.allclose(ex.raw[key], picked, atol=1e-6)
    one = camlens.explain(oc_model, x, "gradcam", target=T.text("a cat", oc_model))
    assert one.maps.shape == (2, 32, 32)
    assert torch.allclose(one.raw[key], full.raw[key][:, 1], atol=1e-6)


@pytest.mark.parametrize("method", ["layercam", "gradcampp", "gae", "scorecam", "legrad"])
def test_other_methods_explain_each_prompt(oc_model, x, method: str) -> None:
    """One batched run equals one run per prompt, for layer methods and GAE alike."""
    ex = camlens.explain(oc_model, x, method, target=T.text(PROMPTS, oc_model))
    assert ex.maps.shape == (2, 3, 32, 32)
    for p, prompt in enumerate(PROMPTS[:2]):
        one = camlens.explain(oc_model, x, method, target=T.text(prompt, oc_model))
        assert torch.allclose(ex.maps[:, p], one.maps, atol=1e-5)
    assert float(ex.maps.std()) > 0


@pytest.mark.parametrize(
    "kind, layer",
    [
        ("clip", "vision_model.encoder.layers.1.layer_norm1"),
        ("siglip", "vision_model.post_layernorm"),
    ],
)
def test_hugging_face_clip_and_siglip(hf_tokenizer_dir, x, kind: str, layer: str) -> None:
    model = hf_model(kind)
    target = T.text(PROMPTS, model, tokenizer=hf_tokenizer_dir)
    ex = camlens.explain(model, x, "gradcam", target=target)
    assert ex.layers == [layer]
    assert torch.allclose(ex.scores, hand_cosines(model, x, hf_tokenizer_dir), atol=1e-5)
    image_fn = lambda images: _pooled(model.get_image_features(pixel_values=images))  # noqa: E731
    ref = hand_gradcam(model, model.get_submodule(layer), image_fn, target.embeddings, x)
    assert torch.allclose(ex.raw[layer], ref, atol=1e-5)
    # a processor-like object holding the tokenizer works as well
    holder = type("Processor", (), {})()
    holder.tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_tokenizer_dir))
    same = camlens.explain(model, x, "gradcam", target=T.text(PROMPTS, model, tokenizer=holder))
    assert torch.allclose(same.raw[layer], ex.raw[layer], atol=1e-6)


def test_bad_prompts_and_models_are_one_clear_line(oc_model, hf_tokenizer_dir) -> None:
    with pytest.raises(camlens.TargetError, match=r"prompts must be a non-empty .* got int$"):
        T.text(3, oc_model)
    with pytest.raises(camlens.TargetError, match="got list of int, str"):
        T.text(["a dog", 7], oc_model)
    with pytest.raises(camlens.TargetError, match="non-empty list"):
        T.text([], oc_model)
    with pytest.raises(camlens.TargetError, match="only 3 prompts"):
        T.text(PROMPTS, oc_model, top=4)
    with pytest.raises(camlens.UnsupportedModelError, match="needs an image-text model"):
        T.text(PROMPTS, nn.Linear(3, 3))
    with pytest.raises(camlens.InputError, match="needs the tokenizer of this CLIPModel"):
        T.text(PROMPTS, hf_model("clip"))
    with pytest.raises(camlens.InputError, match="not a local folder"):
        T.text(PROMPTS, hf_model("clip"), tokenizer="openai/clip-vit-base-patch32")
    target = T.text(PROMPTS, oc_model)
    with pytest.raises(camlens.UnsupportedModelError, match="prompts' embeddings have 16"):
        with pytest.warns(UserWarning):
            camlens.explain(nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8), "gradcam", target=target)


def test_text_targets_import_no_optional_dependency() -> None:
    import subprocess
    import sys

    code = (
        "import sys, camlens; camlens.targets.text; camlens.targets.output; "
        "import camlens.models_clip; "
        "bad = [m for m in ('open_clip', 'transformers', 'timm') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_legrad_on_prompts_equals_legrad_on_the_image_tower_with_the_text_embedding(
    oc_model, x
) -> None:
    """LeGrad through targets.text reads the image tower's blocks (not the CLIP's text
    transformer) and its readout followed by the cosine to each prompt: the same maps as LeGrad
    on ``model.visual`` with a similarity target to that prompt's text embedding."""
    with torch.no_grad():
        tokens = open_clip.tokenizer.SimpleTokenizer(context_length=16)(PROMPTS)
        text = oc_model.encode_text(tokens)
    ex = camlens.explain(oc_model, x, "legrad", target=T.text(PROMPTS, oc_model))
    assert ex.maps.shape == (2, 3, 32, 32)
    for p in range(len(PROMPTS)):
        alone = camlens.explain(oc_model.visual, x, "legrad", target=T.similarity(text[p]))
        (key,) = alone.raw
        assert torch.allclose(ex.raw[key][:, p], alone.raw[key], atol=1e-6)
        assert torch.allclose(ex.scores[:, p], alone.scores, atol=1e-6)

"""The shipped demo ViT: architecture, weights, accuracy, loading, training and CLI wiring."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch.overrides import TorchFunctionMode

from camlens.cli import main
from camlens.demo import CLASSES, ShapesCNN, ShapesViT, load_model, shapes
from camlens.demo.model import MODELS
from camlens.demo.train import accuracy
from camlens.errors import InputError
from camlens.models import build_model


@pytest.fixture(scope="module")
def vit() -> ShapesViT:
    return load_model("vit")


class _CountSDPA(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is F.scaled_dot_product_attention:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def _outputs(model: torch.nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    got: dict[str, torch.Tensor] = {}
    handles = [
        modules[n].register_forward_hook(lambda _m, _i, out, n=n: got.__setitem__(n, out))
        for n in names
    ]
    try:
        with torch.no_grad():
            got["logits"] = model(x)
    finally:
        for h in handles:
            h.remove()
    return got


def test_shapes_of_every_stage_and_the_token_grid() -> None:
    torch.manual_seed(0)
    model = ShapesViT().eval()
    x, _, _ = shapes(3, seed=5)
    out = _outputs(model, x, ["patch_embed.backbone", "patch_embed.proj", "blocks.1.norm1"])
    assert out["patch_embed.backbone"].shape == (3, 96, 12, 12)
    assert out["patch_embed.proj"].shape == (3, 64, 12, 12)
    assert out["blocks.1.norm1"].shape == (3, 1 + 144, 64)
    assert out["logits"].shape == (3, len(CLASSES))
    assert model.num_prefix_tokens == 1
    assert model.patch_embed.grid_size == (12, 12) and model.patch_embed.patch_size == (8, 8)
    assert isinstance(model.patch_embed.proj, torch.nn.Conv2d)
    names = dict(model.named_modules())
    for name in ("blocks.0", "blocks.1.norm1", "blocks.1.attn", "blocks.1.norm2", "norm", "head"):
        assert name in names, name
    assert {"cls_token", "pos_embed"} <= {n for n, _ in model.named_parameters()}


def test_attention_is_fused_sdpa_and_equals_softmax_attention() -> None:
    torch.manual_seed(1)
    model = ShapesViT().eval()
    x, _, _ = shapes(2, seed=6)
    counter = _CountSDPA()
    with torch.no_grad(), counter:
        logits = model(x)
    assert counter.calls == 2  # one per block, through F.scaled_dot_product_attention
    attn = model.blocks[1].attn
    assert attn.num_heads == 4
    tokens = torch.randn(2, 145, 64)
    b, n, c = tokens.shape
    q, k, v = attn.qkv(tokens).reshape(b, n, 3, 4, c // 4).permute(2, 0, 3, 1, 4)
    weights = (q @ k.transpose(-2, -1) / (c // 4) ** 0.5).softmax(-1)
    by_hand = attn.proj((weights @ v).transpose(1, 2).reshape(b, n, c))
    with torch.no_grad():
        assert torch.allclose(attn(tokens), by_hand, atol=1e-5)
    assert torch.isfinite(logits).all()


def test_shipped_weights_are_safetensors_small_and_self_contained() -> None:
    ref = resources.files("camlens.demo").joinpath(MODELS["vit"])
    assert ref.is_file()
    assert len(ref.read_bytes()) <= 4 * 2**20
    with resources.as_file(ref) as file, safe_open(str(file), framework="pt") as f:
        keys = set(f.keys())
    assert keys == set(ShapesViT().state_dict())
    assert any(k.startswith("patch_embed.backbone.") for k in keys)


def test_load_model_vit_is_in_eval_mode(vit: ShapesViT) -> None:
    assert isinstance(vit, ShapesViT)
    assert not any(m.training for m in vit.modules())
    assert all(p.requires_grad for p in vit.parameters())  # an ordinary model, not frozen


def test_accuracy_on_the_issue_test_set(vit: ShapesViT) -> None:
    x, y, _ = shapes(300, seed=4242)
    assert accuracy(vit, x, y) >= 0.95


def test_the_cnn_part_is_the_shipped_cnn_features(vit: ShapesViT) -> None:
    cnn = load_model()
    ours, theirs = vit.patch_embed.backbone.state_dict(), cnn.features.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    x, _, _ = shapes(2, seed=8)
    with torch.no_grad():
        assert torch.equal(vit.patch_embed.backbone(x), cnn.features(x))


def test_fx_traceable_and_other_sizes_are_a_clear_error(vit: ShapesViT) -> None:
    x, _, _ = shapes(2, seed=9)
    traced = torch.fx.symbolic_trace(vit)
    with torch.no_grad():
        assert torch.allclose(traced(x), vit(x))
    with pytest.raises(InputError, match="96 x 96"):
        vit(torch.rand(1, 3, 64, 96))


def test_load_model_keeps_the_cnn_calls(tmp_path, vit: ShapesViT) -> None:
    cnn = load_model()
    assert isinstance(cnn, ShapesCNN) and not cnn.training
    assert isinstance(load_model("cnn"), ShapesCNN)
    weights = tmp_path / "cnn.safetensors"
    state = {k: v.clone() for k, v in cnn.state_dict().items()}
    state["fc.bias"] += 1.0
    save_file(state, str(weights))
    for loaded in (load_model(path=weights), load_model(str(weights)), load_model(weights, "cpu")):
        assert isinstance(loaded, ShapesCNN)
        assert torch.equal(loaded.fc.bias, state["fc.bias"])
    vit_file = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(vit_file))
    assert isinstance(load_model("vit", path=vit_file), ShapesViT)
    with pytest.raises(InputError, match="'vit'"):
        load_model("vitt")
    with pytest.raises(InputError, match="do not fit the demo CNN"):
        load_model(path=vit_file)
    with pytest.raises(InputError, match="do not fit the demo VIT"):
        load_model("vit", path=weights)
    with pytest.raises(InputError, match="two weights files"):
        load_model(str(weights), path=weights)


def test_build_model_demo_vit() -> None:
    spec = build_model("demo-vit")
    assert isinstance(spec.model, ShapesViT) and not spec.model.training
    assert (spec.name, spec.size, spec.resize, spec.preset) == ("demo-vit", 96, None, "none")
    assert spec.classes == list(CLASSES)


def test_train_vit_freezes_the_cnn_and_writes_loadable_weights(tmp_path, capsys) -> None:
    out = tmp_path / "vit.safetensors"
    argv = ["demo", "train", "--model", "vit", "--steps", "3", "--seed", "1", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "shapes(1000, seed=12345)" in printed and "shapes(300, seed=4242)" in printed
    trained = load_model("vit", path=out)
    frozen = load_model().features.state_dict()
    for key, value in trained.patch_embed.backbone.state_dict().items():
        assert torch.equal(value, frozen[key]), key  # weights and batch-norm statistics
    fresh = ShapesViT()
    assert not torch.equal(trained.head.weight, fresh.head.weight)


def test_explain_cli_on_the_vit(tmp_path, capsys) -> None:
    from PIL import Image

    x, _, _ = shapes(1, seed=31)
    image = tmp_path / "shape.png"
    Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(image)
    argv = ["explain", str(image), "--model", "demo-vit", "--method", "gradcam"]
    argv += ["--layer", "patch_embed.proj", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "random weights" not in captured.err
    assert len(list((tmp_path / "o").glob("shape_gradcam_*.png"))) == 1


def test_demo_cli_on_the_vit(tmp_path, capsys) -> None:
    assert main(["demo", "--model", "vit", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["model"] == "vit" and summary["accuracy"] >= 0.95
    assert set(summary["methods"]) == {"gradcam", "gradcampp", "layercam", "gae"}
    for row in summary["methods"].values():
        for key in ("pointing_game", "energy_pointing_game", "iou"):
            assert 0.0 <= row[key] <= 1.0
    assert (tmp_path / "grid.png").is_file() and (tmp_path / "report.html").is_file()
    assert summary["layers"] == ["blocks.1.norm1"]  # the token layer, not the patch embedding


def test_evaluate_cli_on_the_vit(tmp_path, capsys) -> None:
    argv = ["evaluate", "--model", "demo-vit", "--methods", "gradcam", "layercam"]
    argv += ["--data", "shapes:6", "--steps", "3", "--road", "50", "--sanity-images", "2"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "random weights" not in captured.err
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["methods"]) == {"gradcam", "layercam"} and not results["errors"]


def test_the_automatic_layer_is_the_last_block_input_norm(vit: ShapesViT) -> None:
    import camlens

    x, y, _ = shapes(2, seed=3)
    ex = camlens.explain(vit, x, method="gradcam", target=y)
    assert ex.layers == ["blocks.1.norm1"]  # never the patch embedding (the CNN's map)
    assert ex.maps.shape == (2, 96, 96) and ex.raw["blocks.1.norm1"].shape == (2, 12, 12)

"""The command line with --model timm:NAME and --model hf:LOCAL_DIR (tiny models, offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

import camlens
from camlens.cli import main
from camlens.models import build_model


class Logits(nn.Module):
    """A hand-written adapter: the HF model's logits as a plain tensor (the reference)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(90, 70), (70, 80)]):
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        arr[20:50, 20:50] = (255, 0, 0)
        path = folder / f"img{i}.png"
        Image.fromarray(arr).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def hf_resnet(tmp_path_factory) -> Path:
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    folder = tmp_path_factory.mktemp("hf_resnet")
    torch.manual_seed(0)
    labels = {0: "cat", 1: "dog", 2: "bird"}
    config = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        num_labels=3,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    ResNetForImageClassification(config).save_pretrained(folder)
    ConvNextImageProcessor(
        size={"shortest_edge": 64}, crop_pct=0.875, image_mean=[0.4, 0.5, 0.6], image_std=[0.2] * 3
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = tmp_path_factory.mktemp("hf_vit")
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
        num_labels=4,
    )
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


HF_LAYER = "resnet.encoder.stages.1.layers.0.layer.1.convolution"


def test_explain_timm_model_with_weights_file(tmp_path, image_files, capsys) -> None:
    import timm

    torch.manual_seed(7)
    weights = tmp_path / "w.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=5).state_dict(), str(weights))
    out = tmp_path / "out"
    argv = ["explain", *image_files, "--model", "timm:test_resnet", "--weights", str(weights)]
    code = main([*argv, "--method", "gradcam", "layercam", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "random weights" not in captured.err
    assert "class 0" in captured.out or "class 4" in captured.out  # 5 classes: no names
    assert len(list(out.glob("img*_gradcam_class_*.png"))) == 2
    raw = np.load(out / "raw_maps.npz")
    assert set(raw.files) == {"gradcam", "layercam"}
    # the same maps as the Python API on the same spec and preprocessing
    spec = build_model("timm:test_resnet", str(weights))
    x = spec.preprocess([Image.open(p).convert("RGB") for p in image_files])
    expected = camlens.explain(spec.model, x, "gradcam")
    assert np.allclose(raw["gradcam"], next(iter(expected.raw.values())).numpy(), atol=1e-5)


def test_explain_timm_without_weights_warns(tmp_path, image_files, capsys) -> None:
    argv = ["explain", image_files[0], "--model", "timm:test_resnet", "--out", str(tmp_path)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "timm:test_resnet has random weights" in captured.err
    line = next(line for line in captured.out.splitlines() if line.startswith(image_files[0]))
    assert line.count(",") >= 4 and "class " not in line  # ImageNet names from timm's label set


def test_explain_unknown_timm_model_is_one_line(tmp_path, capsys) -> None:
    code = main(["explain", "x.png", "--model", "timm:resnet5o", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "unknown timm model 'resnet5o'" in err[0] and "resnet50" in err[0]


def test_explain_missing_hf_dir_is_one_line(tmp_path, capsys) -> None:
    code = main(["explain", "x.png", "--model", f"hf:{tmp_path / 'nope'}", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no such directory" in err[0]


def test_explain_hf_prints_named_predictions(tmp_path, image_files, hf_resnet, capsys) -> None:
    """Reading the ModelOutput's logits is the CLI's own job (models.logits)."""
    argv = ["explain", *image_files, "--model", f"hf:{hf_resnet}", "--layer", HF_LAYER]
    main([*argv, "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert "random weights" not in captured.err
    lines = [line for line in captured.out.splitlines() if line.startswith(image_files[0])]
    assert len(lines) == 1
    assert all(name in lines[0] for name in ("cat", "dog", "bird"))


def test_explain_hf_resnet_gradcam_end_to_end(tmp_path, image_files, hf_resnet, capsys) -> None:
    out = tmp_path / "out"
    argv = ["explain", *image_files, "--model", f"hf:{hf_resnet}", "--method", "gradcam"]
    code = main([*argv, "--layer", HF_LAYER, "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert len(list(out.glob("img*_gradcam_*.png"))) == 2
    raw = np.load(out / "raw_maps.npz")["gradcam"]
    spec = build_model(f"hf:{hf_resnet}")
    x = spec.preprocess([Image.open(p).convert("RGB") for p in image_files])
    reference = camlens.explain(Logits(spec.model), x, "gradcam", layer=f"model.{HF_LAYER}")
    assert np.allclose(raw, next(iter(reference.raw.values())).numpy(), atol=1e-5)


def test_explain_hf_vit_gradcam_end_to_end(tmp_path, image_files, hf_vit, capsys) -> None:
    out = tmp_path / "out"
    argv = ["explain", image_files[0], "--model", f"hf:{hf_vit}", "--method", "gradcam"]
    code = main([*argv, "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert len(list(out.glob("img0_gradcam_*.png"))) == 1
    raw = np.load(out / "raw_maps.npz")["gradcam"]
    assert raw.shape == (1, 4, 4)  # the 4 x 4 patch grid, class token dropped
    spec = build_model(f"hf:{hf_vit}")
    ex = camlens.explain(spec.model, spec.preprocess([Image.open(image_files[0])]), "gradcam")
    assert "patch_embeddings" not in ex.layers[0]  # a block's tokens, not the patch embedding
    # The command's raw map is Grad-CAM of the top class at that layer, value for value.
    assert float(np.abs(raw).max()) > 0
    assert np.allclose(raw, ex.raw[ex.layers[0]].numpy(), rtol=1e-4, atol=1e-6)
    cls = spec.classes[int(ex.targets[0])] if spec.classes else f"class {int(ex.targets[0])}"
    assert (out / f"img0_gradcam_{cls.replace(' ', '_')}.png").is_file()


def _folder(tmp_path: Path, image_files: list[str]) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    for p in image_files:
        (folder / Path(p).name).write_bytes(Path(p).read_bytes())
    return folder


EVAL_OPTS = ["--methods", "gradcam", "--steps", "2", "--road", "50", "--sanity-images", "1"]


def test_evaluate_timm_model_on_a_folder(tmp_path, image_files, capsys) -> None:
    data = _folder(tmp_path, image_files)
    argv = ["evaluate", "--model", "timm:test_resnet", "--data", str(data), *EVAL_OPTS]
    code = main([*argv, "--out", str(tmp_path / "ev")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "`gradcam`" in captured.out and "failed" not in captured.out
    assert (tmp_path / "ev" / "results.json").is_file()


def test_evaluate_hf_model_on_a_folder(tmp_path, image_files, hf_resnet, capsys) -> None:
    data = _folder(tmp_path, image_files)
    argv = ["evaluate", "--model", f"hf:{hf_resnet}", "--data", str(data), *EVAL_OPTS]
    code = main([*argv, "--layer", HF_LAYER, "--out", str(tmp_path / "ev")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "`gradcam`" in captured.out and "failed" not in captured.out

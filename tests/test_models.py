"""Building models from names: timm:NAME and hf:LOCAL_DIR (tiny configs, nothing downloaded),
their preprocessing, the logits helper, and the optional extras staying optional."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from camlens.errors import InputError, UnsupportedModelError
from camlens.io import CheckpointError
from camlens.models import (
    MissingExtraError,
    WeightsUnavailableError,
    build_model,
    logits,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_import_camlens_does_not_import_timm_or_transformers() -> None:
    code = (
        "import sys, camlens, camlens.models, camlens.cli, camlens.io, camlens.evaluate; "
        "print(sorted(m for m in ('timm', 'transformers') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "[]"


# --- logits -----------------------------------------------------------------------------------


def test_logits_reads_tensors_dicts_model_outputs_and_tuples() -> None:
    from transformers.modeling_outputs import ImageClassifierOutput

    t = torch.randn(2, 5)
    assert logits(t) is t
    assert logits({"logits": t, "hidden": torch.zeros(1)}) is t
    assert logits(ImageClassifierOutput(logits=t)) is t
    assert logits((t, torch.zeros(3))) is t
    assert logits([t]) is t


@pytest.mark.parametrize("output", [{"out": torch.zeros(1)}, None, (), "text", ("a", 1)])
def test_logits_refuses_outputs_without_class_scores(output) -> None:
    with pytest.raises(UnsupportedModelError, match="'logits'"):
        logits(output)


# --- timm -------------------------------------------------------------------------------------


def _random_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        k: (torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone())
        for k, v in model.state_dict().items()
    }


def test_timm_spec_follows_the_models_data_config() -> None:
    spec = build_model("timm:test_resnet")
    # test_resnet's pretrained_cfg: 160 x 160, crop_pct 0.95, bilinear, mean = std = 0.5
    assert spec.name == "timm:test_resnet"
    assert (spec.size, spec.resize, spec.interpolation) == (160, 168, "bilinear")
    assert spec.preset == "inception" and spec.stats == ((0.5,) * 3, (0.5,) * 3)
    assert len(spec.classes) == 1000 and spec.classes[:2] == ["tench", "goldfish"]
    assert not spec.model.training
    img = Image.new("RGB", (200, 180), (255, 0, 0))
    x = spec.preprocess([img])
    assert x.shape == (1, 3, 160, 160)
    assert torch.allclose(x[0, :, 80, 80], torch.tensor([1.0, -1.0, -1.0]))
    assert logits(spec.model(x)).shape == (1, 1000)


def test_timm_vit_takes_bicubic_interpolation_from_its_config() -> None:
    spec = build_model("timm:test_vit")
    assert spec.interpolation == "bicubic" and spec.size == 160


def test_timm_weights_file_is_really_loaded(tmp_path) -> None:
    import timm

    reference = timm.create_model("test_resnet", pretrained=False)
    state = _random_state(reference, seed=3)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    spec = build_model("timm:test_resnet", str(path))
    loaded = spec.model.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    fresh = build_model("timm:test_resnet").model.state_dict()
    assert not torch.equal(fresh["fc.weight"], state["fc.weight"])


def test_timm_weights_with_another_head_size_rebuild_the_classifier(tmp_path) -> None:
    import timm

    reference = timm.create_model("test_resnet", pretrained=False, num_classes=7)
    path = tmp_path / "w7.pth"
    torch.save(_random_state(reference, seed=4), path)
    spec = build_model("timm:test_resnet", str(path))
    x = torch.zeros(1, 3, 64, 64)
    assert spec.model(x).shape == (1, 7)
    assert spec.classes == []  # ImageNet names do not label 7 classes


def test_timm_weights_of_another_model_are_refused(tmp_path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"conv.weight": torch.zeros(2, 3, 1, 1)}, str(path))
    with pytest.raises(CheckpointError, match="do not fit"):
        build_model("timm:test_resnet", str(path))


def test_unknown_timm_name_suggests_near_matches() -> None:
    with pytest.raises(InputError, match=r"unknown timm model 'resnet5o'.*Did you mean.*resnet50"):
        build_model("timm:resnet5o")
    with pytest.raises(InputError, match="needs a model name"):
        build_model("timm:")


def test_timm_pretrained_offline_is_a_clear_error(monkeypatch) -> None:
    import timm

    real = timm.create_model

    def offline(name: str, pretrained: bool = False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsUnavailableError, match=r"timm's pretrained.*--weights PATH"):
        build_model("timm:test_resnet", "DEFAULT")


@pytest.mark.parametrize(
    ("name", "module", "extra"), [("timm:resnet18", "timm", "timm"), ("hf:.", "transformers", "hf")]
)
def test_missing_extra_names_the_pip_command(monkeypatch, tmp_path, name, module, extra) -> None:
    if module == "transformers":
        (tmp_path / "config.json").write_text("{}")
        save_file({"a": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
        name = f"hf:{tmp_path}"
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(MissingExtraError, match=rf"pip install camlens\[{extra}\]"):
        build_model(name)


# --- Hugging Face -----------------------------------------------------------------------------


def _save_hf_resnet(folder: Path, labels: dict[int, str] | None = None) -> torch.nn.Module:
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    labels = labels if labels is not None else {0: "cat", 1: "dog", 2: "bird"}
    config = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        num_labels=len(labels),
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    model = ResNetForImageClassification(config).eval()
    model.save_pretrained(folder)
    ConvNextImageProcessor(
        size={"shortest_edge": 64},
        crop_pct=0.875,
        image_mean=[0.4, 0.5, 0.6],
        image_std=[0.2, 0.3, 0.4],
    ).save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def hf_resnet(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("hf_resnet")
    return folder, _save_hf_resnet(folder)


def test_hf_resnet_loads_offline_with_its_processor_settings(hf_resnet) -> None:
    folder, saved = hf_resnet
    spec = build_model(f"hf:{folder}")
    assert spec.classes == ["cat", "dog", "bird"]
    # ConvNeXt processor: shorter side to int(64 / 0.875) = 73, centre crop 64, PIL bicubic
    assert (spec.size, spec.resize, spec.interpolation) == (64, 73, "bicubic")
    assert spec.preset == "custom"
    assert spec.stats == ((0.4, 0.5, 0.6), (0.2, 0.3, 0.4))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(logits(spec.model(x)), saved(x).logits)  # the saved weights
    img = Image.new("RGB", (90, 70), (255, 255, 255))
    px = spec.preprocess([img])
    assert px.shape == (1, 3, 64, 64)
    expected = (torch.ones(3) - torch.tensor([0.4, 0.5, 0.6])) / torch.tensor([0.2, 0.3, 0.4])
    assert torch.allclose(px[0, :, 32, 32], expected, atol=1e-5)


def test_hf_vit_with_a_height_width_processor(tmp_path) -> None:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
        num_labels=4,
    )
    ViTForImageClassification(config).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    spec = build_model(f"hf:{tmp_path}")
    assert (spec.size, spec.resize) == (32, None)  # straight resize, no crop
    assert spec.preset == "inception" and spec.mean is None
    assert spec.classes == []  # LABEL_0.. are not names
    assert logits(spec.model(torch.zeros(1, 3, 32, 32))).shape == (1, 4)


def test_hf_torch_bin_weights_load_without_pickle(tmp_path) -> None:
    folder = tmp_path / "bin"
    saved = _save_hf_resnet(folder)
    (folder / "model.safetensors").unlink()
    state = _random_state(saved, seed=5)
    torch.save(state, folder / "pytorch_model.bin")
    loaded = build_model(f"hf:{folder}").model.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_hf_bad_directories_are_clear_errors(tmp_path, hf_resnet) -> None:
    with pytest.raises(InputError, match="no such directory"):
        build_model(f"hf:{tmp_path / 'missing'}")
    with pytest.raises(InputError, match=r"no config\.json"):
        build_model(f"hf:{tmp_path}")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    with pytest.raises(InputError, match="no weights"):
        build_model(f"hf:{tmp_path}")
    with pytest.raises(InputError, match="drop --weights"):
        build_model(f"hf:{hf_resnet[0]}", "w.safetensors")


def test_hf_remote_code_is_never_run(tmp_path) -> None:
    config = {"model_type": "mything", "auto_map": {"AutoModelForImageClassification": "m.M"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({"a": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "m.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(UnsupportedModelError, match="remote code, which camlens never runs"):
        build_model(f"hf:{tmp_path}")


def test_hf_base_model_without_a_head_is_refused(tmp_path) -> None:
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
    )
    ViTModel(config).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match=r"lack 2 parameters.*ViTModel"):
        build_model(f"hf:{tmp_path}")


def test_hf_deit_style_processor_resizes_exactly_then_crops(tmp_path) -> None:
    from transformers import DeiTImageProcessor

    _save_hf_resnet(tmp_path)
    (tmp_path / "preprocessor_config.json").unlink()
    DeiTImageProcessor(
        size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(tmp_path)
    spec = build_model(f"hf:{tmp_path}")
    assert (spec.size, spec.resize) == (32, (40, 40))
    assert spec.preprocess([Image.new("RGB", (100, 50))]).shape == (1, 3, 32, 32)


def test_hf_half_precision_checkpoint_runs_in_float32(tmp_path) -> None:
    saved = _save_hf_resnet(tmp_path)
    saved.half().save_pretrained(tmp_path)
    spec = build_model(f"hf:{tmp_path}")
    assert all(p.dtype == torch.float32 for p in spec.model.parameters())
    assert logits(spec.model(torch.zeros(1, 3, 64, 64))).dtype == torch.float32

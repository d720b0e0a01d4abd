"""Image loading, preprocessing, and checkpoint loading without pickle."""

from __future__ import annotations

import pickle

import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from safetensors.torch import save_file

from camlens.errors import InputError
from camlens.io import CheckpointError, load_image, load_weights, preprocess, read_state_dict
from tests.conftest import GapNet


def test_load_and_preprocess(tmp_path) -> None:
    Image.new("L", (40, 20), 128).save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.mode == "RGB"
    x = preprocess([img], size=16, resize=18, preset="none")
    assert x.shape == (1, 3, 16, 16)
    assert torch.allclose(x, torch.full_like(x, 128 / 255), atol=1e-3)
    assert preprocess([img], size=8, resize=None).shape == (1, 3, 8, 8)


def test_unreadable_files(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="not a readable image"):
        load_image(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "missing.jpg")


def test_state_dicts_from_safetensors_and_torch(tmp_path) -> None:
    model = GapNet()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        fresh = GapNet()
        load_weights(fresh, tmp_path / name)
        assert all(
            torch.equal(a, b)
            for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True)
        )


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path) -> None:
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"weight": Evil()}, f)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_state_dict(tmp_path / "evil.pth")


def test_mismatched_weights(tmp_path) -> None:
    save_file(GapNet(channels=3).state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_weights(GapNet(channels=6), tmp_path / "w.safetensors")
    save_file({"other.weight": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(CheckpointError, match="missing keys"):
        load_weights(GapNet(), tmp_path / "x.safetensors")


def test_preprocess_with_explicit_mean_std_and_bicubic() -> None:
    img = Image.new("RGB", (40, 30), (51, 102, 204))
    x = preprocess([img], 16, 20, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    expected = (torch.tensor([0.2, 0.4, 0.8]) - torch.tensor([0.1, 0.2, 0.3])) / 0.5
    assert torch.allclose(x[0, :, 8, 8], expected, atol=1e-5)
    edge = torch.zeros(3, 8, 8, dtype=torch.uint8)
    edge[:, :, 4:] = 255  # a hard edge: bicubic upsampling overshoots it by about 7%
    sharp = TF.to_pil_image(edge)
    y = preprocess([sharp], 16, None, "none", interpolation="bicubic")
    assert y.shape == (1, 3, 16, 16) and float(y.min()) == 0 and float(y.max()) == 1
    assert not torch.equal(y, preprocess([sharp], 16, None, "none"))  # not bilinear
    with pytest.raises(InputError, match="both be given"):
        preprocess([img], 16, mean=(0.5, 0.5, 0.5))
    with pytest.raises(InputError, match="unknown interpolation"):
        preprocess([img], 16, interpolation="lanczos")


def test_preprocess_resize_pair_warps_then_crops() -> None:
    img = Image.new("RGB", (40, 20))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # the left quarter white
    x = preprocess([img], 8, (10, 10), "none")
    # warped to 10 x 10 (the whole width kept: white in columns 0..2), crop 8: columns 1..8
    assert x.shape == (1, 3, 8, 8)
    assert float(x[0, 0, 4, 0]) == 1.0 and float(x[0, 0, 4, 7]) == 0.0
    y = preprocess([img], 8, 10, "none")  # shorter side to 10: 20 x 10, crop columns 6..13
    assert float(y.max()) == 0.0

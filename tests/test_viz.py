"""Overlays, colour maps, grids and raw-map files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from camlens.errors import InputError
from camlens.viz import PRESETS, colorize, denormalize, grid, overlay, save_raw


def test_denormalize_inverts_the_imagenet_preset() -> None:
    rgb = torch.rand(3, 5, 7)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in PRESETS["imagenet"])
    back = denormalize((rgb - mean) / std)
    assert back.shape == (5, 7, 3)
    assert np.allclose(back, rgb.permute(1, 2, 0).numpy(), atol=1e-6)


def test_overlay_blends_jet_over_the_image() -> None:
    img = torch.zeros(3, 4, 6)  # black, preset none
    heat = torch.ones(4, 6)  # max -> dark red in JET (0.5, 0, 0)
    out = overlay(img, heat, alpha=0.5, preset="none")
    assert isinstance(out, Image.Image) and out.size == (6, 4)
    expected = np.round(0.5 * colorize(heat)[0, 0] * 255)
    assert np.array_equal(np.asarray(out)[0, 0], expected.astype(np.uint8))
    assert np.asarray(overlay(img, heat, alpha=0.0, preset="none")).max() == 0


def test_overlay_grayscale_and_non_square_and_low_res_maps() -> None:
    gray = torch.rand(1, 30, 50)
    out = overlay(gray, torch.rand(3, 5), colormap="viridis", preset="none")
    assert out.size == (50, 30) and out.mode == "RGB"
    # A 1-channel image with the ImageNet preset uses the first channel's statistics.
    assert overlay(torch.zeros(1, 8, 8), torch.rand(8, 8)).size == (8, 8)


def test_bad_overlay_arguments() -> None:
    with pytest.raises(InputError, match="colormap"):
        overlay(torch.rand(3, 4, 4), torch.rand(4, 4), colormap="nope")
    with pytest.raises(InputError, match="alpha"):
        overlay(torch.rand(3, 4, 4), torch.rand(4, 4), alpha=2)
    with pytest.raises(InputError, match="C = 1 or 3"):
        overlay(torch.rand(4, 4, 4), torch.rand(4, 4))
    with pytest.raises(InputError, match="preset"):
        overlay(torch.rand(3, 4, 4), torch.rand(4, 4), preset="cifar")


def test_grid_and_raw_files(tmp_path) -> None:
    images = torch.rand(2, 3, 16, 16)
    maps = {"gradcam": torch.rand(2, 16, 16), "cam": torch.rand(2, 16, 16)}
    path = grid(images, maps, tmp_path / "g.png", [["a", "b"], ["c", "d"]], preset="none")
    with Image.open(path) as img:
        assert img.size[0] > img.size[1]  # 3 columns, 2 rows
    path = grid(images, maps, tmp_path / "h.png", preset="none", heatmaps=True)
    assert path.is_file()
    raw = save_raw({"gradcam": torch.rand(2, 4, 4)}, tmp_path / "raw.npz")
    with np.load(raw) as data:
        assert data["gradcam"].shape == (2, 4, 4)


def test_batched_overlays_equal_overlay_image_by_image() -> None:
    from camlens.viz import overlays

    torch.manual_seed(0)
    x = torch.randn(3, 3, 40, 50)
    heat = torch.rand(3, 10, 12)
    heat[0, 0, 0], heat[1, 0, 0] = 1.0, 0.0  # the colormap's ends
    batch = overlays(x, heat, "jet", 0.4, "imagenet")
    assert batch.shape == (3, 40, 50, 3) and batch.dtype == torch.uint8
    for i in range(3):
        assert np.array_equal(np.asarray(overlay(x[i], heat[i], "jet", 0.4, "imagenet")), batch[i])
    grey = torch.rand(2, 1, 20, 20)
    one = overlays(grey, heat[:2, :5, :5], "viridis", 0.5, "none")[1]
    want = overlay(grey[1], heat[1, :5, :5], "viridis", 0.5, "none")
    assert np.array_equal(np.asarray(want), one)


def test_overlays_index_colormaps_of_any_size_as_matplotlib_does() -> None:
    """tab10 has 10 entries: floor(x * 10) picks the colour, not a 256-entry resampling."""
    from camlens.viz import overlays

    heat = torch.tensor([i / 10 + 1e-3 for i in range(10)] + [1.0])[None, None]  # just past
    x = torch.zeros(1, 3, 1, heat.shape[-1])  # each of tab10's boundaries, and its end
    got = overlays(x, heat, "tab10", 1.0, "none")[0, 0].numpy()
    want = (colorize(heat[0], "tab10")[0] * 255).round().astype(np.uint8)
    assert np.array_equal(got, want)


def test_grid_leaves_the_matplotlib_backend_alone(tmp_path) -> None:
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.rcParams["backend"] = "module://matplotlib_inline.backend_inline"  # a notebook's
    try:
        grid(torch.rand(1, 3, 8, 8), {"m": torch.rand(1, 8, 8)}, tmp_path / "g.png", preset="none")
        assert matplotlib.rcParams["backend"] == "module://matplotlib_inline.backend_inline"
        assert (tmp_path / "g.png").exists()
    finally:
        matplotlib.rcParams["backend"] = before

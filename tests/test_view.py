"""How an Explanation shows itself: ``_repr_html_`` / ``html()`` and ``show()``."""

from __future__ import annotations

import base64
import io
import re

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

import camlens
from camlens import targets as T
from camlens.errors import InputError
from camlens.explanation import Explanation
from camlens.view import auto_preset, png_base64
from camlens.viz import colorize, overlays
from tests.conftest import GapNet

matplotlib.use("Agg")

PNG = re.compile(r'<img [^>]*alt="(\w+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _pngs(page: str) -> list[tuple[str, np.ndarray]]:
    """Every picture of an HTML table, decoded: (alt text, (H, W, 3) uint8 array)."""
    return [
        (alt, np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")))
        for alt, data in PNG.findall(page)
    ]


def _hand(images: torch.Tensor | None = None) -> Explanation:
    """A hand-made explanation of two 4 x 6 images with known maps."""
    maps = torch.zeros(2, 4, 6)
    maps[0, 1, 2] = 1.0
    maps[1] = torch.linspace(0, 1, 24).view(4, 6)
    return Explanation(
        maps=maps,
        raw={"features": maps[:, ::2, ::2]},
        targets=torch.tensor([3, 1]),
        scores=torch.tensor([2.5, -0.125]),
        layers=["features"],
        method="gradcam",
        images=images,
    )


def test_html_holds_image_heatmap_and_overlay_exactly_as_viz_draws_them() -> None:
    images = torch.rand(2, 3, 4, 6)  # in [0, 1]: shown as unnormalised
    ex = _hand(images)
    page = ex._repr_html_()
    pics = _pngs(page)
    assert [alt for alt, _ in pics] == ["image", "heatmap", "overlay"] * 2
    for b in range(2):
        image, heat, over = (p for _, p in pics[3 * b : 3 * b + 3])
        want_img = (images[b].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert np.array_equal(image, want_img)
        want_heat = (colorize(ex.maps[b]) * 255).round().astype(np.uint8)
        assert np.array_equal(heat, want_heat)
        want_over = overlays(images[b : b + 1], ex.maps[b : b + 1], preset="none")[0].numpy()
        assert np.array_equal(over, want_over)
    for text in ("gradcam", "features", "<b>class</b> 3", "<b>score</b> 2.5", "-0.125"):
        assert text in page
    assert "http" not in page  # self-contained: nothing to fetch


def test_html_names_classes_and_undoes_the_given_normalisation() -> None:
    rgb = torch.rand(2, 3, 4, 6)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    normalised = (rgb - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    ex = _hand(normalised)
    assert auto_preset(normalised) == "imagenet"
    page = ex.html(classes=["a", "b", "c", "star"], alpha=0.0)
    assert "star (3)" in page and "b (1)" in page
    (_, image), _, (_, over) = _pngs(page)[:3]
    assert np.abs(image.astype(int) - (rgb[0].permute(1, 2, 0).numpy() * 255).round()).max() <= 1
    assert np.array_equal(over, image)  # alpha 0: the overlay is the image
    # The wrong preset gives another picture: the option is used, not ignored.
    _, wrong = _pngs(ex.html(preset="none"))[0]
    assert not np.array_equal(wrong, image)


def test_html_without_images_shows_heatmaps_and_caps_the_rows() -> None:
    ex = _hand(None)
    page = ex.html(max_items=1)
    assert [alt for alt, _ in _pngs(page)] == ["heatmap"]
    assert "1 of 2 rows shown" in page
    with pytest.raises(InputError, match="max_items"):
        ex.html(max_items=0)


def test_thumbnails_are_downscaled_never_upscaled() -> None:
    big = np.zeros((400, 200, 3), np.uint8)
    small = np.zeros((7, 9, 3), np.uint8)
    decode = lambda uri: Image.open(io.BytesIO(base64.b64decode(uri.split(",")[1])))  # noqa: E731
    assert decode(png_base64(big)).size == (96, 192)
    assert decode(png_base64(small)).size == (9, 7)


def test_explain_keeps_its_images_and_several_targets_get_one_row_each() -> None:
    torch.manual_seed(0)
    model = GapNet().eval()
    images = torch.rand(2, 3, 8, 8)
    ex = camlens.explain(model, images, "gradcam", "features", target=T.top(3))
    assert ex.images is images  # a reference, not a copy
    page = ex.html()
    assert len(_pngs(page)) == 2 * 3 * 3
    for b in range(2):
        for t in range(3):
            assert f"{b}, target {t}" in page
            assert f"<b>class</b> {int(ex.targets[b, t])}<" in page


def test_volumes_show_the_middle_or_the_chosen_slice() -> None:
    maps = torch.zeros(1, 5, 4, 4)
    maps[0, 2, 0, 0] = 1.0  # the middle slice has its maximum at the top left
    maps[0, 4, 3, 3] = 1.0
    images = torch.rand(1, 3, 5, 4, 4)
    ex = Explanation(maps, {}, torch.tensor([0]), torch.tensor([1.0]), ["l"], "gradcam")
    ex.images = images
    (_, image), (_, heat), _ = _pngs(ex.html())
    top = (colorize(torch.tensor(1.0).view(1, 1))[0, 0] * 255).round()
    assert np.array_equal(heat[0, 0], top.astype(np.uint8))
    assert not np.array_equal(heat[3, 3], top.astype(np.uint8))
    want = (images[0, :, 2].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(image, want)
    _, (_, heat4), _ = _pngs(ex.html(depth=4))
    assert np.array_equal(heat4[3, 3], top.astype(np.uint8))
    with pytest.raises(InputError, match="depth=9"):
        ex.html(depth=9)


def test_show_draws_one_row_per_item_with_the_same_pictures() -> None:
    import matplotlib.pyplot as plt

    images = torch.rand(2, 3, 4, 6)
    ex = _hand(images)
    fig = ex.show(classes=["a", "b", "c", "star"])
    try:
        axes = fig.get_axes()
        assert len(axes) == 6
        over = overlays(images[1:2], ex.maps[1:2], preset="none")[0].numpy()
        assert np.array_equal(axes[5].get_images()[0].get_array(), over)
        assert "gradcam" in axes[2].get_title() and "star (3)" in axes[2].get_title()
        assert "score 2.5" in axes[2].get_title() and axes[0].get_title() == "image"
    finally:
        plt.close(fig)

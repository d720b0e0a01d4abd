"""INPUT -> the ordered list of sources, and decoding one source."""

from __future__ import annotations

import numpy as np
import pytest

from camlens.batch.sources import load, resolve
from camlens.demo import shapes
from camlens.errors import InputError


def test_shapes_source_decodes_to_the_benchmark_images_in_8_bits() -> None:
    src = resolve("shapes:7")
    assert src.kind == "shapes" and len(src) == 7 and src.items[3] == "shapes:7/3"
    x, _, _ = shapes(7)
    for i in (0, 6):
        img = np.asarray(load(src.items[i]), dtype=np.float32) / 255
        expected = x[i].permute(1, 2, 0).numpy()
        assert np.abs(img - expected).max() <= 0.5 / 255 + 1e-6


def test_folder_is_recursive_sorted_and_only_images(png_folder) -> None:
    src = resolve(png_folder)
    names = [p.rsplit("/", 1)[1] for p in src.items]
    assert names == ["broken.png", *[f"img{i:03d}.png" for i in range(6)]]
    assert resolve(str(png_folder)).fingerprint() == src.fingerprint()


def test_glob_and_text_list(png_folder, tmp_path) -> None:
    src = resolve(str(png_folder / "**" / "img00[0-2].png"))
    assert src.kind == "glob" and [p[-10:] for p in src.items] == [
        "img000.png",
        "img001.png",
        "img002.png",
    ]
    listing = png_folder / "list.txt"
    listing.write_text("# two images, relative to the list\na/img004.png\n\na/img001.png\n")
    src = resolve(listing)
    assert src.kind == "list"
    assert src.items == (str(png_folder / "a/img004.png"), str(png_folder / "a/img001.png"))
    assert resolve(listing).fingerprint() != resolve(png_folder).fingerprint()


@pytest.mark.parametrize("spec", ["shapes:0", "shapes:x", "no/such/folder", "nothing-*.png"])
def test_bad_input_says_what_works(spec, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"shapes:N|no such|matches no file"):
        resolve(spec)


def test_unreadable_file_is_an_input_error(png_folder) -> None:
    with pytest.raises(InputError, match="not a readable image"):
        load(png_folder / "a" / "broken.png")

"""Helpers for the batch tests: a folder of shapes PNGs with a broken file among them."""

from __future__ import annotations

from pathlib import Path

import pytest

from camlens.batch.sources import load


def write_shapes(folder: Path, n: int) -> list[Path]:
    """The first ``n`` images of shapes:n as PNGs (the same pixels shapes:n decodes to)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i:03d}.png"
        load(f"shapes:{n}/{i}").save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pngs")
    write_shapes(folder / "a", 6)
    (folder / "a" / "broken.png").write_bytes(b"not a png at all")
    (folder / "readme.txt").write_text("not an image, not listed")
    return folder

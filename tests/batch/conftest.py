"""Helpers for the batch tests: a folder of shapes PNGs with a broken file among them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


# float16 storage: a map value v is stored to within 2**-11 |v|; kernels that differ with the
# batch composition or the thread count move float32 maps by a few float32 ulp, which can move
# a float16 value by one ulp. 4 float16 ulp of relative tolerance (and 1e-6 absolute, for values
# near zero) covers that and nothing more.
MAP_RTOL, MAP_ATOL = 2.0**-8, 1e-6
FLOAT_COLUMNS = ("map", "score", "topk_probs")


def assert_same_rows(a, b) -> None:
    """Two batch outputs (pyarrow Tables) hold the same rows: every column but the floating
    ones exactly (index, source, method, layer, rank, target, shapes, top-k classes), maps,
    scores and probabilities within float rounding. For runs whose batches were cut
    differently (other batch sizes, files dropped from a batch, another engine): bit-for-bit
    equality is promised only for the same batch cuts (see README, "Resumable")."""
    assert a.schema.names == b.schema.names
    assert a.num_rows == b.num_rows
    exact = [c for c in a.schema.names if c not in FLOAT_COLUMNS]
    assert a.select(exact).equals(b.select(exact))
    if "map" in a.schema.names:
        for ra, rb, sa, sb in zip(
            a.column("map").to_pylist(),
            b.column("map").to_pylist(),
            a.column("map_shape").to_pylist(),
            b.column("map_shape").to_pylist(),
            strict=True,
        ):
            assert sa == sb
            np.testing.assert_allclose(
                np.frombuffer(ra, "<f2").astype(np.float32),
                np.frombuffer(rb, "<f2").astype(np.float32),
                rtol=MAP_RTOL,
                atol=MAP_ATOL,
            )
    for name in ("score", "topk_probs"):
        if name in a.schema.names:
            x = np.array(a.column(name).to_pylist(), dtype=np.float64)
            y = np.array(b.column(name).to_pylist(), dtype=np.float64)
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)

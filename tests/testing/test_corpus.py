"""Every file of the malformed-files corpus gets a correct result or one clear line, from the
decoder, ``camlens explain``, ``camlens batch``, ``camlens evaluate`` and the app."""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camlens.errors import InputError
from camlens.io import InputWarning, load_image, read_image
from camlens.testing.corpus import Case, build


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, Case]]:
    folder = tmp_path_factory.mktemp("corpus")
    return folder, build(folder)


def _reference(folder: Path, case: Case) -> np.ndarray:
    return np.asarray(Image.open(folder / case.reference).convert("RGB")).astype(np.float64)


def test_the_corpus_has_every_case_the_issue_lists(corpus) -> None:
    _folder, cases = corpus
    names = set(cases)
    assert {f"truncated_{t}0pct.{k}" for t in range(1, 10) for k in ("png", "jpg")} <= names
    for name in (
        "wrong_magic.png",
        "empty.png",
        "huge_header.png",
        "cmyk.jpg",
        "grey16.png",
        "rgb16.png",
        "palette_alpha.png",
        "exif_rotated.jpg",
        "animated.gif",
        "multipage.tif",
        "ok.webp",
        "folder.png",
        "loop_a.png",
    ):
        assert name in names, name


def test_the_decoder_answers_every_file_correctly_or_in_one_line(corpus) -> None:
    folder, cases = corpus
    for name, case in cases.items():
        if case.expect == "error":
            with pytest.raises(InputError) as info:
                read_image(folder / name)
            line = str(info.value)
            assert case.error in line and "\n" not in line and name in line, (name, line)
            continue
        img, note = read_image(folder / name)
        assert img.mode == "RGB", name
        assert (note is not None) == case.note, (name, note)
        got = np.asarray(img).astype(np.float64)
        ref = _reference(folder, case)
        assert got.shape == ref.shape, (name, got.shape, ref.shape)  # EXIF: displayed shape
        assert np.abs(got - ref).mean() <= case.tolerance + 1e-9, name


def test_conversions_are_exact_where_they_can_be(corpus) -> None:
    folder, _ = corpus
    # 16-bit grey: v * 257 comes back as v (a clip to 255 would give a white image)
    grey, _ = read_image(folder / "grey16.png")
    assert np.array_equal(np.asarray(grey), np.asarray(Image.open(folder / "ref_grey.png")))
    # transparency: a fully transparent palette entry is white, not its stored colour
    pal = Image.open(folder / "palette_alpha.png")
    transparent = np.asarray(pal) == 0
    assert transparent.any()
    rgb, _ = read_image(folder / "palette_alpha.png")
    assert (np.asarray(rgb)[transparent] == 255).all()
    # EXIF orientation 6: stored 96 x 120 (w x h), displayed 120 x 96 with the red corner
    assert Image.open(folder / "exif_rotated.jpg").size == (96, 120)
    shown, _ = read_image(folder / "exif_rotated.jpg")
    assert shown.size == (120, 96)
    assert np.asarray(shown)[:10, :18].mean(axis=(0, 1))[0] > 240


def test_load_image_warns_about_the_first_frame_and_caps_pixels(corpus) -> None:
    folder, _ = corpus
    with pytest.warns(InputWarning, match="3 frames; explaining the first"):
        img = load_image(folder / "animated.gif")
    assert "first" in img.info["camlens.note"]
    with pytest.raises(InputError, match="limit is 100"):
        load_image(folder / "ok.png", max_pixels=100)


def test_a_file_that_vanishes_between_listing_and_reading(tmp_path) -> None:
    from camlens.batch.sources import resolve

    path = tmp_path / "gone.png"
    Image.new("RGB", (8, 8)).save(path)
    source = resolve(tmp_path)
    path.unlink()
    with pytest.raises(InputError, match="no such file"):
        load_image(source.items[0])


def test_explain_answers_each_file_in_one_line(corpus, tmp_path, capsys) -> None:
    from camlens.cli import main

    folder, cases = corpus
    names = sorted(cases)
    argv = ["explain", *(str(folder / n) for n in names), "--model", "demo"]
    code = main([*argv, "--out", str(tmp_path / "out"), "--method", "gradcam"])
    err = capsys.readouterr().err
    assert code == 1  # some files failed; the rest were explained
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    bad = [n for n in names if cases[n].expect == "error"]
    noted = [n for n in names if cases[n].note]
    assert len(lines) == len(bad) + len(noted)
    for n in bad:
        assert any(f"{n}:" in line and cases[n].error in line for line in lines), n
    for n in noted:
        assert any(n in line and "camlens: note:" in line for line in lines), n
    written = list((tmp_path / "out").glob("*.png"))
    assert len(written) == len(names) - len(bad)


def test_batch_answers_every_file_with_a_row_or_an_errors_csv_line(corpus, tmp_path) -> None:
    pytest.importorskip("pyarrow")
    import camlens.batch

    folder, cases = corpus
    names = sorted(cases)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{folder / n}\n" for n in names))
    out = tmp_path / "out"
    summary = camlens.batch.run(listing, out, "demo", workers=0, shard_size=16, progress=False)
    bad = {n for n in names if cases[n].expect == "error"}
    assert summary.errors == len(bad)
    with open(out / "errors.csv", newline="") as f:
        errors = {Path(r["source"]).name: r["error"] for r in csv.DictReader(f)}
    assert set(errors) == bad
    for n in bad:
        assert cases[n].error in errors[n] and "\n" not in errors[n], (n, errors[n])
    table = camlens.batch.read(out).table().to_pylist()
    rows = {Path(r["source"]).name: r for r in table}
    assert set(rows) == set(names) - bad
    # lossless variants of the same picture give the same map, bit for bit
    for n in names:
        case = cases[n]
        if case.expect == "ok" and case.tolerance == 0 and case.reference != n:
            assert rows[n]["map"] == rows[case.reference]["map"], n
    assert not list(out.rglob(".*.tmp*"))


def test_evaluate_skips_unreadable_files_in_one_line_each(corpus) -> None:
    from camlens.evaluate import folder_data

    folder, cases = corpus
    lines: list[str] = []
    data = folder_data(folder, 96, None, "none", on_skip=lines.append)
    exts = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
    listed = [n for n in cases if Path(n).suffix in exts and (folder / n).is_file()]
    bad = [n for n in listed if cases[n].expect == "error"]
    skipped = [line for line in lines if line.endswith("(skipped)")]
    assert len(skipped) == len(bad)
    assert data.images.shape[0] == len(listed) - len(bad)
    assert torch.isfinite(data.images).all()
    assert any("note:" in line and "multipage.tif" in line for line in lines)


def test_the_app_answers_every_upload(corpus) -> None:
    from camlens.app.state import AppState, Limits
    from camlens.models import build_model

    folder, cases = corpus
    state = AppState(build_model("demo"), limits=Limits(), examples=0)
    try:
        for name, case in sorted(cases.items()):
            path = folder / name
            if not path.is_file() or not os.access(path, os.R_OK) or path.is_fifo():
                continue  # uploads are bytes: directories, loops and FIFOs cannot be uploaded
            data = path.read_bytes()
            if case.expect == "error":
                with pytest.raises(InputError) as info:
                    state.add_upload(data, name)
                assert "\n" not in str(info.value)
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # the app says notes in its answer, not warnings
                entry = state.add_upload(data, name)
            info = state.image_info(entry)
            assert (info["note"] is not None) == case.note, name
            assert torch.isfinite(entry.x).all()
    finally:
        state.close()

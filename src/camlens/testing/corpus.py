"""A corpus of malformed and unusual image files, generated (never checked in).

``build(folder)`` writes every case below into ``folder`` and returns what each must give:
``expect`` is "ok" (an image, equal to ``reference`` within ``tolerance`` mean absolute error
on the 0..255 scale, with a note when ``note`` is set) or "error" (one :class:`InputError`
line containing ``error``). ``folder/corpus.json`` holds the same table, so that a user can
point ``camlens explain / batch / evaluate`` at the folder and compare.

Cases: a PNG and a JPEG truncated at every tenth of their length, wrong magic bytes, a text
file named ``.jpg``, a JPEG named ``.png``, a zero-byte file, headers claiming 100k x 100k
pixels (PNG, GIF, JPEG), a CMYK JPEG, 16-bit grey and RGB PNGs, a palette PNG with
transparency, an RGBA PNG, an EXIF-rotated JPEG, an animated GIF and WebP and a multi-page TIFF
(first frame, with a note), WebP, BMP, TIFF, 1-bit and grey images, a corrupt PNG chunk, a
directory named like an image, a symlink loop, a dangling symlink and a FIFO (reading it would
hang). A file that vanishes between listing and reading is a race, so the tests make it.

Run ``python -m camlens.testing.corpus FOLDER`` to write it.
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: the size of the corpus' photo-like base image (non-square on purpose)
WIDTH, HEIGHT = 120, 96


@dataclass(frozen=True)
class Case:
    """What one corpus file must give: see the module docstring."""

    name: str
    expect: str  # "ok" or "error"
    error: str = ""  # a substring of the one-line error
    reference: str = ""  # a lossless PNG in the corpus holding the expected RGB pixels
    tolerance: float = 0.0  # mean |loaded - reference| allowed, 0..255 scale
    note: bool = False  # a caveat (first frame) is expected


def base_image() -> np.ndarray:
    """A (HEIGHT, WIDTH, 3) uint8 picture: two shapes images side by side, cropped, with a
    bright marker in the top-left corner so that any rotation or flip shows."""
    from camlens.demo.shapes import draw

    a, _ = draw(11, 0)
    b, _ = draw(12, 3)
    arr = np.concatenate([a, b], axis=2).transpose(1, 2, 0)[:HEIGHT, :WIDTH]
    arr = (arr * 255).round().astype(np.uint8).copy()
    arr[:12, :20] = (255, 0, 0)
    return arr


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_bytes(arr: np.ndarray, bit_depth: int = 8) -> bytes:
    """A minimal PNG writer (grey or RGB, 8 or 16 bits), for what PIL cannot save (16-bit
    RGB)."""
    colour = 0 if arr.ndim == 2 else 2
    h, w = arr.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    rows = arr.astype(dtype).reshape(h, -1)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", w, h, bit_depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def _huge_png(width: int = 100_000, height: int = 100_000) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _huge_gif() -> bytes:
    # header, logical screen 65535 x 65535, one image descriptor of the same size, no data
    screen = b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0)
    descriptor = b"\x2c" + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0)
    return screen + descriptor + b"\x08\x02\x4c\x01\x00\x3b"


def _huge_jpeg(small: bytes) -> bytes:
    """A real JPEG whose frame header (SOF0) claims 65000 x 65000 pixels."""
    data = bytearray(small)
    at = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, at + 5, 65000, 65000)
    return bytes(data)


def _save(img: Image.Image, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, **kwargs)
    return buf.getvalue()


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """Reference compositing: out = a * rgb + (1 - a) * 255, rounded (as PIL does)."""
    a = rgba[..., 3:4].astype(np.float64) / 255
    return (a * rgba[..., :3] + (1 - a) * 255).round().astype(np.uint8)


def build(folder: str | Path) -> dict[str, Case]:
    """Write the corpus into ``folder`` (created); returns {file name: Case}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, Case] = {}
    base = base_image()
    img = Image.fromarray(base)

    def put(name: str, data: bytes, case: Case) -> None:
        (folder / name).write_bytes(data)
        cases[name] = case

    def ref(name: str, arr: np.ndarray) -> str:
        path = f"ref_{name}.png"
        Image.fromarray(arr).convert("RGB").save(folder / path)
        cases[path] = Case(path, "ok", reference=path)
        return path

    r_base = ref("base", base)
    png, jpeg = _save(img, format="PNG"), _save(img, format="JPEG", quality=100, subsampling=0)
    put("ok.png", png, Case("ok.png", "ok", reference=r_base))
    put("ok.jpg", jpeg, Case("ok.jpg", "ok", reference=r_base, tolerance=2))
    put("ok.bmp", _save(img, format="BMP"), Case("ok.bmp", "ok", reference=r_base))
    put("ok.tif", _save(img, format="TIFF"), Case("ok.tif", "ok", reference=r_base))
    webp = _save(img, format="WEBP", lossless=True)
    put("ok.webp", webp, Case("ok.webp", "ok", reference=r_base))
    put("jpeg_named.png", jpeg, Case("jpeg_named.png", "ok", reference=r_base, tolerance=2))
    grey = np.asarray(img.convert("L"))
    r_grey = ref("grey", np.repeat(grey[..., None], 3, axis=2))
    put("grey.png", _save(img.convert("L"), format="PNG"), Case("grey.png", "ok", reference=r_grey))
    one = img.convert("1")
    r_one = ref("one_bit", np.asarray(one.convert("RGB")))
    put("one_bit.png", _save(one, format="PNG"), Case("one_bit.png", "ok", reference=r_one))

    for tenth in range(1, 10):
        for kind, data in (("png", png), ("jpg", jpeg)):
            name = f"truncated_{tenth}0pct.{kind}"
            put(name, data[: len(data) * tenth // 10], Case(name, "error", "not a readable image"))
    put("wrong_magic.png", b"\0" * 8 + png[8:], Case("wrong_magic.png", "error", "magic bytes"))
    put("text.jpg", b"hello, I am not a picture\n", Case("text.jpg", "error", "magic bytes"))
    put("empty.png", b"", Case("empty.png", "error", "empty file"))
    put("huge_header.png", _huge_png(), Case("huge_header.png", "error", "limit"))
    put(
        "header_100mpx.png",
        _huge_png(10_000, 10_000),
        Case("header_100mpx.png", "error", "MAX_PIXELS"),
    )
    put("huge_header.gif", _huge_gif(), Case("huge_header.gif", "error", "limit"))
    put("huge_header.jpg", _huge_jpeg(jpeg), Case("huge_header.jpg", "error", "limit"))
    corrupt = bytearray(png)
    corrupt[png.find(b"IDAT") + 20] ^= 0xFF  # a flipped byte in the compressed data
    put("corrupt_idat.png", bytes(corrupt), Case("corrupt_idat.png", "error", "not a readable"))

    cmyk = _save(img.convert("CMYK"), format="JPEG", quality=100)
    put("cmyk.jpg", cmyk, Case("cmyk.jpg", "ok", reference=r_base, tolerance=2))
    g16 = grey.astype(np.uint16) * 257  # 8-bit values spread onto the 16-bit range
    put("grey16.png", png_bytes(g16, 16), Case("grey16.png", "ok", reference=r_grey))
    put(
        "rgb16.png",
        png_bytes(base.astype(np.uint16) * 257, 16),
        Case("rgb16.png", "ok", "", r_base),
    )

    # palette with a transparent entry (tRNS): index 0 fully transparent, index 1 half
    pal = img.quantize(16, dither=Image.Dither.NONE)
    alpha = [0, 128] + [255] * 14
    pal.info["transparency"] = bytes(alpha)
    idx = np.asarray(pal)
    colours = np.array(pal.getpalette()[: 16 * 3], dtype=np.uint8).reshape(16, 3)
    rgba = np.concatenate([colours[idx], np.array(alpha, dtype=np.uint8)[idx][..., None]], axis=2)
    r_pal = ref("palette_alpha", _over_white(rgba))
    put(
        "palette_alpha.png",
        _save(pal, format="PNG", transparency=bytes(alpha)),
        Case("palette_alpha.png", "ok", reference=r_pal, tolerance=0.5),
    )
    ramp = np.linspace(0, 255, WIDTH).round().astype(np.uint8)
    rgba2 = np.concatenate([base, np.broadcast_to(ramp, (HEIGHT, WIDTH))[..., None]], axis=2)
    r_rgba = ref("rgba", _over_white(rgba2))
    put(
        "rgba.png",
        _save(Image.fromarray(rgba2, "RGBA"), format="PNG"),
        Case("rgba.png", "ok", reference=r_rgba, tolerance=0.5),
    )

    # stored rotated by 90 degrees, EXIF Orientation 6 says "rotate 90 clockwise to display"
    stored = img.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    put(
        "exif_rotated.jpg",
        _save(stored, format="JPEG", quality=100, subsampling=0, exif=exif.tobytes()),
        Case("exif_rotated.jpg", "ok", reference=r_base, tolerance=2),
    )

    frames = [img, img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), img.convert("L").convert("RGB")]
    gif0 = Image.open(io.BytesIO(_save(frames[0], format="GIF"))).convert("RGB")
    r_gif = ref("gif_frame0", np.asarray(gif0))
    put(
        "animated.gif",
        _save(frames[0], format="GIF", save_all=True, append_images=frames[1:], duration=100),
        Case("animated.gif", "ok", reference=r_gif, tolerance=1, note=True),
    )
    put(
        "animated.webp",
        _save(frames[0], format="WEBP", save_all=True, append_images=frames[1:], lossless=True),
        Case("animated.webp", "ok", reference=r_base, tolerance=1, note=True),
    )
    put(
        "multipage.tif",
        _save(frames[0], format="TIFF", save_all=True, append_images=frames[1:]),
        Case("multipage.tif", "ok", reference=r_base, note=True),
    )

    (folder / "folder.png").mkdir(exist_ok=True)
    cases["folder.png"] = Case("folder.png", "error", "directory")
    for a, b in (("loop_a.png", "loop_b.png"), ("loop_b.png", "loop_a.png")):
        if not (folder / a).is_symlink():
            os.symlink(b, folder / a)
        cases[a] = Case(a, "error", "loop")
    if not (folder / "dangling.png").is_symlink():
        os.symlink("nowhere.png", folder / "dangling.png")
    cases["dangling.png"] = Case("dangling.png", "error", "no such file")
    if hasattr(os, "mkfifo") and not (folder / "fifo.png").exists():
        os.mkfifo(folder / "fifo.png")
        cases["fifo.png"] = Case("fifo.png", "error", "not a regular file")
    elif (folder / "fifo.png").exists():
        cases["fifo.png"] = Case("fifo.png", "error", "not a regular file")

    table = {name: asdict(case) for name, case in sorted(cases.items())}
    (folder / "corpus.json").write_text(json.dumps(table, indent=1) + "\n")
    return cases


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m camlens.testing.corpus FOLDER", file=sys.stderr)
        return 2
    cases = build(args[0])
    bad = sum(c.expect == "error" for c in cases.values())
    print(f"wrote {len(cases)} files into {args[0]}: {len(cases) - bad} readable, {bad} not")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a batch job reads: INPUT (a folder, a glob, a text file of paths, or ``shapes:N``) as a
fixed, ordered list of sources, and how one source becomes a PIL image.

The list is sorted (folders, globs) or kept in file order (text files), so that the same INPUT
always gives the same list: shard ``s`` always holds the same images, which is what lets a rerun
resume. ``shapes:N`` names the built-in benchmark's images ``shapes:N/i`` and draws image ``i``
on demand (the same pixels as ``camlens.demo.shapes(N)[0][i]``, quantised to 8 bits like a PNG
written from it), so a job runs offline on a fresh machine.
"""

from __future__ import annotations

import glob
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from camlens.errors import InputError

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
_SHAPES_SEED = 0


@dataclass(frozen=True)
class Source:
    """The ordered sources of a job and where they came from.

    Attributes:
        input: INPUT as given.
        kind: "shapes", "folder", "glob" or "list".
        items: the source names: file paths as strings, or ``shapes:N/i``.
    """

    input: str
    kind: str
    items: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.items)

    def fingerprint(self) -> str:
        """sha256 over the ordered source names: two jobs over the same list agree on it."""
        h = hashlib.sha256()
        for item in self.items:
            h.update(item.encode("utf-8", "surrogateescape") + b"\0")
        return h.hexdigest()


def _shapes_count(spec: str) -> int:
    try:
        n = int(spec.split(":", 1)[1])
    except ValueError:
        n = 0
    if n < 1:
        raise InputError(f"{spec!r}: expected shapes:N with N >= 1 (e.g. shapes:500)")
    return n


def resolve(spec: str | Path) -> Source:
    """INPUT -> :class:`Source`.

    ``shapes:N``: the built-in benchmark's first N images. A folder: every image file under it
    (recursive, by suffix: .png, .jpg, ...), sorted. A pattern with ``*``, ``?`` or ``[``: the
    files it matches (``**`` recurses), sorted. Any other file: a text file with one path per
    line (relative paths are relative to the text file; blank lines and ``#`` comments skipped).
    """
    text = str(spec)
    if text.startswith("shapes:"):
        n = _shapes_count(text)
        return Source(text, "shapes", tuple(f"shapes:{n}/{i}" for i in range(n)))
    path = Path(text)
    if path.is_dir():
        files = sorted(
            str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise InputError(
                f"{path}: no image files in this folder (looked for "
                f"{', '.join(sorted(IMAGE_SUFFIXES))}, recursively)"
            )
        return Source(text, "folder", tuple(files))
    if any(c in text for c in "*?["):
        files = sorted(p for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise InputError(f"{text!r}: the pattern matches no file")
        return Source(text, "glob", tuple(files))
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return Source(text, "list", (text,))
        try:
            lines = path.read_text().splitlines()
        except UnicodeDecodeError:
            raise InputError(
                f"{path}: not a text file of image paths (one per line) nor an image"
            ) from None
        base = path.parent
        items = []
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                p = Path(line)
                items.append(str(p if p.is_absolute() else base / p))
        if not items:
            raise InputError(f"{path}: the list of image paths is empty")
        return Source(text, "list", tuple(items))
    raise InputError(
        f"{text!r}: no such folder or file, and not shapes:N. INPUT is a folder (searched "
        "recursively), a glob such as 'images/**/*.jpg', a text file with one path per line, "
        "or shapes:N for the built-in images"
    )


def _shapes_plan(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The per-image seeds and labels of ``camlens.demo.shapes(n)``, without drawing."""
    master = np.random.default_rng([_SHAPES_SEED, 96, 1])
    seeds = master.integers(0, 2**63 - 1, size=n)
    labels = master.permutation(np.arange(n) % 6)
    return seeds, labels


_PLANS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def load(item: str | Path) -> Image.Image:
    """One source -> RGB PIL image; unreadable files raise :class:`InputError`."""
    item = str(item)
    if item.startswith("shapes:"):
        from camlens.demo.shapes import draw

        count, index = item[len("shapes:") :].split("/")
        n, i = int(count), int(index)
        if n not in _PLANS:
            _PLANS.clear()
            _PLANS[n] = _shapes_plan(n)
        seeds, labels = _PLANS[n]
        img, _mask = draw(int(seeds[i]), int(labels[i]))
        arr = (np.transpose(img, (1, 2, 0)) * 255).round().astype(np.uint8)
        return Image.fromarray(arr)
    from camlens.io import load_image

    return load_image(item)

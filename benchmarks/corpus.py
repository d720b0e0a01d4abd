"""The malformed-files corpus through every entry point: answers, time, memory.

    python benchmarks/corpus.py [--folder /tmp/camlens-corpus]

Generates the corpus (``camlens.testing.corpus``), decodes every file with
``camlens.io.read_image`` (time per file, and the process's peak RSS: no file may blow the
memory up), runs ``camlens batch`` over a list of every file and ``camlens explain`` over all
of them, and prints how each answered: rows or errors.csv lines, overlays or one-line errors,
and whether every answer was the expected one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import resource
import shutil
import sys
import time
from pathlib import Path

from camlens.errors import InputError
from camlens.io import read_image
from camlens.testing.corpus import build


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/camlens-corpus"))
    a = parser.parse_args()
    shutil.rmtree(a.folder, ignore_errors=True)
    cases = build(a.folder / "files")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    wrong, slowest = [], (0.0, "")
    for name, case in sorted(cases.items()):
        start = time.perf_counter()
        try:
            read_image(a.folder / "files" / name)
            got = "ok"
        except InputError as exc:
            got = "error" if case.error in str(exc) else f"wrong error: {exc}"
        took = time.perf_counter() - start
        slowest = max(slowest, (took, name))
        if got != case.expect:
            wrong.append(f"{name}: {got}")
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    bad = sum(c.expect == "error" for c in cases.values())
    print(f"{len(cases)} files: {len(cases) - bad} readable, {bad} refused in one line")
    print(f"decoder: {len(wrong)} unexpected answers; slowest file {slowest[1]} "
          f"{1000 * slowest[0]:.1f} ms; peak RSS {rss0:.0f} -> {rss1:.0f} MiB")  # fmt: skip
    import camlens.batch
    from camlens.cli import main as cli

    listing = a.folder / "list.txt"
    listing.write_text("".join(f"{a.folder / 'files' / n}\n" for n in sorted(cases)))
    start = time.perf_counter()
    summary = camlens.batch.run(listing, a.folder / "out", "demo", workers=0, progress=False)
    rows = len({r["source"] for r in camlens.batch.read(a.folder / "out").table().to_pylist()})
    print(f"batch: {rows} images with rows, {summary.errors} lines in errors.csv "
          f"({time.perf_counter() - start:.1f} s)")  # fmt: skip
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli(["explain", *(str(a.folder / "files" / n) for n in sorted(cases)),
                    "--model", "demo", "--out", str(a.folder / "explain")])  # fmt: skip
    lines = err.getvalue().strip().splitlines()
    overlays = len(list((a.folder / "explain").glob("*.png")))
    print(f"explain: exit {code}, {overlays} overlays, {len(lines)} stderr lines, "
          f"{sum('Traceback' in x for x in lines)} tracebacks")  # fmt: skip
    ok = not wrong and rows == len(cases) - bad and summary.errors == bad
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

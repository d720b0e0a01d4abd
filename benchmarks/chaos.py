"""Chaos for ``camlens batch``: a job killed at random moments and at exact points, restarted.

    python benchmarks/chaos.py [--images 20000] [--kills 10] [--shard-size 500] [--workers 1]
                               [--folder /tmp/camlens-chaos] [--zygote]

A ``shapes:N`` job with the demo model and Grad-CAM runs once uninterrupted (the reference),
then into a second folder: SIGKILLed inside a shard rename (before and after it), during the
manifest update and the errors.csv rewrite, at random moments (the rest of ``--kills``), and
SIGTERMed twice (right after a shard rename, and at a random moment), restarted after each,
then run to the end. Prints each attempt and whether the
final output equals the reference row for row with no temporary file (exit status 1 if not).
``--zygote`` forks the runs from one warm interpreter (no import cost per restart).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from camlens.testing.chaos import POINTS, Zygote, chaos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/camlens-chaos"))
    parser.add_argument("--zygote", action="store_true")
    a = parser.parse_args()
    shutil.rmtree(a.folder, ignore_errors=True)
    args = [
        f"shapes:{a.images}",
        *("--model", "demo", "--methods", "gradcam", "--shard-size", str(a.shard_size)),
        *("--batch-size", str(a.batch_size), "--workers", str(a.workers)),
    ]
    start = time.monotonic()
    points = tuple(p for p in POINTS if p != "manifest-after")

    def log(message: str) -> None:
        print(f"[{time.monotonic() - start:7.1f} s] {message}", flush=True)

    if a.zygote:
        with Zygote() as zygote:
            report = chaos(
                args, a.folder / "out", a.folder / "ref", a.kills, points, True, a.seed, log, zygote
            )
    else:
        report = chaos(args, a.folder / "out", a.folder / "ref", a.kills, points, True, a.seed, log)
    sigterm = [x for x in report.attempts if x.how.startswith("SIGTERM")]
    print(
        f"{report.images} images; {report.killed} SIGKILLs landed of {a.kills}, SIGTERM "
        f"{'landed (rc ' + str(sigterm[0].returncode) + ')' if sigterm else 'not sent'}; "
        f"{len(report.attempts)} runs; reference {report.reference_seconds:.1f} s, "
        f"total {time.monotonic() - start:.1f} s"
    )
    print("output equals the reference:", "yes" if not report.differences else report.differences)
    return 0 if not report.differences else 1


if __name__ == "__main__":
    sys.exit(main())

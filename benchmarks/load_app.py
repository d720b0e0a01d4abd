"""``camlens app`` under load: N concurrent clients on loopback for a bounded time.

    python benchmarks/load_app.py [--clients 16] [--seconds 120] [--cancel 0.2]

Starts ``camlens app --model demo`` in a subprocess on 127.0.0.1 (a free port), then runs
:func:`camlens.testing.load.run_load`: each client uploads an image (three shapes examples
and two larger photo-like JPEGs, 1024 x 768 and 1536 x 1152), asks for gradcam, layercam and
scorecam on its top class, cancels ``--cancel`` of the jobs once they run, else waits and
fetches the maps and one overlay. Prints failed requests, p50 / p95 per request type, the
server's RSS after warm-up, at the half-way mark and at the end (from /proc), and whether every
distinct answer equals a direct camlens.explain. Exit status 1 on any failure or mismatch.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from camlens.testing.load import check_answers, run_load, sample_images


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--cancel", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    if not 1 <= a.clients <= 64 or not 0 < a.seconds <= 900:
        parser.error("--clients must be in 1..64 and --seconds in (0, 900]")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "camlens.cli", "app", "--model", "demo", "--port", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"{base}/api/info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            print("the server did not start", file=sys.stderr)
            return 1
        images = sample_images(a.seed)
        rss: dict[str, float] = {"start": _rss_mib(server.pid)}

        def tick(elapsed: float) -> None:
            if "warm" not in rss and elapsed >= min(20.0, a.seconds / 6):
                rss["warm"] = _rss_mib(server.pid)
            if "half" not in rss and elapsed >= a.seconds / 2:
                rss["half"] = _rss_mib(server.pid)
            rss["end"] = _rss_mib(server.pid)
            rss["peak"] = max(rss.get("peak", 0.0), rss["end"])

        report = run_load(base, images, a.clients, a.seconds, cancel_fraction=a.cancel,
                          seed=a.seed, on_tick=tick)  # fmt: skip
    finally:
        server.terminate()
        server.wait(30)
    mismatches = check_answers(report, images)
    print(f"{a.clients} clients for {report.seconds:.0f} s: {report.jobs_done} jobs done, "
          f"{report.jobs_cancelled} cancelled, {len(report.failures)} failed requests")  # fmt: skip
    for why in report.failures[:5]:
        print("  failure:", why)
    print("| request | count | p50 (ms) | p95 (ms) |\n|---|---:|---:|---:|")
    for kind, row in report.summary().items():
        print(f"| {kind} | {row['count']} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} |")
    growth = 100 * (rss.get("end", 0) - rss.get("half", 1)) / rss.get("half", 1)
    print(
        f"server RSS (MiB): start {rss['start']:.0f}, after warm-up {rss.get('warm', 0):.0f}, "
        f"half-way {rss.get('half', 0):.0f}, end {rss.get('end', 0):.0f}, peak "
        f"{rss.get('peak', 0):.0f}; growth half-way -> end {growth:+.1f} %"
    )
    print(f"answers: {report.answers_seen} fetched, each equal to the first to its question; "
          f"{len(report.answers)} distinct, checked against camlens.explain: "
          f"{len(mismatches)} mismatches")  # fmt: skip
    for m in mismatches[:5]:
        print("  mismatch:", m)
    return 1 if report.failures or mismatches else 0


if __name__ == "__main__":
    sys.exit(main())

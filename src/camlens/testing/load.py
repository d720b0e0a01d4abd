"""Load on ``camlens app``: N concurrent clients on loopback, each uploading images and asking
for several methods (some jobs cancelled midway), for a bounded time.

:func:`run_load` drives a server at ``base`` (127.0.0.1 only) and returns a :class:`LoadReport`:
failed requests (any non-2xx status, transport error, or a job that ends in ``error``),
p50 / p95 latency per request type, and the answers to check. :func:`check_answers` compares
every distinct (image, layer, class, method) answer with a direct :func:`camlens.explain` of
the same image. ``benchmarks/load_app.py`` is the command line (server in a subprocess, RSS
sampled from ``/proc``); ``tests/app/test_load.py`` the reduced version.

Request types: ``upload`` (POST an image: decode + one prediction on the predictor copy, so
it measures whether predictions keep answering while jobs run), ``submit``, ``job`` (from the
submit to ``done``, the latency a user waits), ``poll``, ``raw`` (the .npz), ``render`` (an
overlay PNG), ``cancel`` (from the cancel request to the job's end).
"""

from __future__ import annotations

import io
import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import numpy as np


def sample_images(seed: int = 0, photos: int = 2) -> list[tuple[str, bytes]]:
    """Upload material: three shapes examples (PNG, 96 x 96) and ``photos`` larger photo-like
    JPEGs (1024 x 768 and up: smooth gradients, shapes and noise)."""
    from PIL import Image

    from camlens.batch.sources import load

    out = []
    for i in range(3):
        buf = io.BytesIO()
        load(f"shapes:3/{i}").save(buf, format="PNG")
        out.append((f"shapes{i}.png", buf.getvalue()))
    rng = np.random.default_rng(seed)
    for k in range(photos):
        w, h = 1024 + 512 * k, 768 + 384 * k
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        base = np.stack([xx, yy, 1 - xx * yy], axis=2) * 200
        cy, cx, r = h // 2, w // 3, h // 4
        disk = (np.mgrid[0:h, 0:w][0] - cy) ** 2 + (np.mgrid[0:h, 0:w][1] - cx) ** 2 < r * r
        base[disk] = (230, 40, 40)
        arr = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        out.append((f"photo{k}.jpg", buf.getvalue()))
    return out


@dataclass
class LoadReport:
    """What :func:`run_load` measured."""

    clients: int
    seconds: float
    latencies: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    jobs_done: int = 0
    jobs_cancelled: int = 0
    answers_seen: int = 0  # answers fetched, each compared with the first to its question
    # (upload name, layer, class) -> {method: map}: one answer per distinct question, to check
    answers: dict[tuple[str, str, int], dict[str, np.ndarray]] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per request type: count, p50 and p95 in milliseconds."""
        out = {}
        for kind, values in sorted(self.latencies.items()):
            ordered = sorted(values)
            p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
            out[kind] = {
                "count": len(values),
                "p50_ms": 1000 * statistics.median(ordered),
                "p95_ms": 1000 * p95,
            }
        return out


def run_load(
    base: str,
    images: list[tuple[str, bytes]],
    clients: int = 16,
    seconds: float = 120.0,
    methods: tuple[str, ...] = ("gradcam", "layercam", "scorecam"),
    cancel_fraction: float = 0.2,
    seed: int = 0,
    timeout: float = 120.0,
    on_tick: Any = None,
) -> LoadReport:
    """``clients`` threads, each looping until ``seconds`` have passed: upload an image,
    submit a job with ``methods`` for its top class, then either cancel it once it runs
    (``cancel_fraction`` of the jobs) or wait for it and fetch its maps and one overlay.

    ``base`` must be a loopback URL (``http://127.0.0.1:PORT``). ``on_tick(elapsed)`` is
    called about once a second from the calling thread (the benchmark samples RSS there).
    """
    import httpx

    host = urlparse(base).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"the load test talks to loopback only, not {host!r}")
    report = LoadReport(clients, seconds)
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def note(kind: str, start: float) -> None:
        with lock:
            report.latencies.setdefault(kind, []).append(time.monotonic() - start)

    def fail(why: str) -> None:
        with lock:
            report.failures.append(why)

    def call(c: Any, kind: str, method: str, url: str, **kw: Any) -> Any:
        start = time.monotonic()
        r = c.request(method, url, **kw)
        if r.status_code >= 300:
            raise RuntimeError(f"{kind} {url}: HTTP {r.status_code} {r.text[:120]}")
        if kind:
            note(kind, start)
        return r

    def client(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        with httpx.Client(base_url=base, timeout=timeout) as c:
            while time.monotonic() < end:
                name, data = rng.choice(images)
                try:
                    up = call(c, "upload", "POST", "/api/images", files={"file": (name, data)})
                    image = up.json()["id"]
                    t0 = time.monotonic()
                    job = call(
                        c, "submit", "POST", "/api/jobs", json={"image": image, "methods": methods}
                    ).json()
                    cancel = rng.random() < cancel_fraction
                    info = job
                    while info["status"] in ("queued", "running"):
                        if cancel and info["status"] == "running":
                            t1 = time.monotonic()
                            call(c, "", "POST", f"/api/jobs/{job['id']}/cancel")
                            while info["status"] in ("queued", "running"):
                                time.sleep(0.02)
                                info = call(c, "poll", "GET", f"/api/jobs/{job['id']}").json()
                            note("cancel", t1)
                            break
                        time.sleep(0.05)
                        info = call(c, "poll", "GET", f"/api/jobs/{job['id']}").json()
                    if info["status"] == "cancelled" or (cancel and info["status"] == "done"):
                        with lock:
                            report.jobs_cancelled += info["status"] == "cancelled"
                            report.jobs_done += info["status"] == "done"
                        continue
                    if info["status"] != "done":
                        fail(f"job {job['id']}: {info['status']} {info.get('error')}")
                        continue
                    note("job", t0)
                    bad = [r for r in info["results"] if not r["ok"]]
                    if bad:
                        fail(f"job {job['id']}: {bad[0]['method']}: {bad[0]['error']}")
                        continue
                    raw = call(c, "raw", "GET", f"/api/jobs/{job['id']}/raw.npz")
                    call(c, "render", "GET", f"/api/jobs/{job['id']}/{methods[0]}/overlay.png")
                    key = (name, info["layer"] or "", int(info["target"]))
                    arrays = np.load(io.BytesIO(raw.content))
                    maps = {m: arrays[f"{m}_map"] for m in methods}
                    with lock:
                        report.jobs_done += 1
                        first = report.answers.setdefault(key, maps)
                        report.answers_seen += 1
                    # every answer to the same question equals the first (which is checked
                    # against camlens.explain): no request sees another's activations
                    for m in methods:
                        if not np.array_equal(first[m], maps[m]):
                            fail(f"job {job['id']}: {m} differs from an earlier answer")
                except Exception as exc:  # every failure is counted, with its reason
                    fail(f"{type(exc).__name__}: {str(exc)[:160]}")

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if on_tick is not None:
            on_tick(time.monotonic() - start)
        for t in threads:
            t.join(timeout=1.0 / max(1, len(threads)))
    report.seconds = time.monotonic() - start
    return report


def check_answers(
    report: LoadReport,
    images: list[tuple[str, bytes]],
    model_name: str = "demo",
    batch_size: int = 16,
    atol: float = 1e-5,
) -> list[str]:
    """Each distinct answer against a direct :func:`camlens.explain` of the same upload (the
    app's decoding and preprocessing): the mismatches, empty when all agree."""
    import camlens
    from camlens.app.state import FORMATS
    from camlens.io import read_image
    from camlens.models import build_model

    spec = build_model(model_name)
    model = spec.model.eval()
    data = dict(images)
    bad = []
    for (name, layer, target), maps in sorted(report.answers.items()):
        img, _ = read_image(data[name], formats=FORMATS)
        x = spec.preprocess([img])
        for method, got in maps.items():
            ex = camlens.explain(model, x, method, layer or None, target, batch_size=batch_size)
            diff = float(np.abs(ex.maps[0].numpy() - got).max())
            if diff > atol:
                bad.append(f"{name} {method} class {target}: max |diff| {diff:.2e}")
    return bad

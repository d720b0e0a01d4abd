"""End to end: ``camlens app`` in a subprocess, driven by headless Chromium through Playwright.

Chromium is Debian's ``chromium`` package (Playwright cannot download its own browser here), so
Playwright is pointed at it with ``executable_path``. Without playwright or chromium these tests
skip and say which one is missing; ``.ci/run`` installs chromium so CI always runs them.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import camlens
from camlens.demo import CLASSES, shapes

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="playwright is not installed (pip install -e '.[dev]'): browser tests skipped",
)
pytest.importorskip("fastapi", reason="the app's extra is not installed: browser tests skipped")

CHROMIUM = os.environ.get("CAMLENS_CHROMIUM") or shutil.which("chromium")
if CHROMIUM is None and Path("/usr/bin/chromium").exists():
    CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (apt-get install chromium): browser tests skipped",
)

SHOWN = """(methods) => {
  const titles = [...document.querySelectorAll('.card h3')].map((h) => h.textContent);
  const imgs = [...document.querySelectorAll('img.overlay')];
  return JSON.stringify(titles) === JSON.stringify(methods)
    && document.querySelector('#status-text').dataset.status === 'done'
    && imgs.length === methods.length && imgs.every((i) => i.complete && i.naturalWidth > 0);
}"""


def _shown(page: Any, *methods: str) -> None:
    """Wait until the page shows a finished job of exactly these methods, every overlay loaded."""
    page.wait_for_function(SHOWN, arg=list(methods))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """``camlens app`` on a free port, from this checkout's source; yields its URL."""
    port = _free_port()
    src = str(Path(camlens.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "camlens.cli", "app", "--port", str(port), "--batch-size", "1"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        first = proc.stdout.readline() if proc.stdout else ""
        url = f"http://127.0.0.1:{port}/"
        assert url in first, f"camlens app did not print its URL: {first!r}"
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "api/info", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None, "camlens app exited"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(server)
    yield pg
    context.close()


def _star_png(tmp_path: Path, name: str = "star.png") -> Path:
    images, labels, _ = shapes(8, seed=3)
    i = int((labels == CLASSES.index("star")).nonzero()[0])
    arr = (images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    path = tmp_path / name
    Image.fromarray(arr).save(path)
    return path


def _choose(page: Any, *methods: str) -> None:
    for box in page.locator("#methods input").all():
        box.set_checked(box.get_attribute("value") in methods)


def test_first_screen_already_explains_an_example(page: Any) -> None:
    _shown(page, "gradcam", "gradcampp")
    assert page.locator(".example").count() == 6
    assert page.locator("#layer").input_value() == ""  # automatic
    assert "features" in page.locator("#layer option").first.inner_text()
    assert "pointing" in page.locator(".card .metrics").first.inner_text()
    assert "IoU" in page.locator(".card .metrics").first.inner_text()
    assert page.locator("#classes .class").count() == 5


def test_upload_compare_recolour_switch_class_and_recover(page: Any, tmp_path: Path) -> None:
    jobs: list[dict[str, Any]] = []
    page.on(
        "request",
        lambda r: (
            jobs.append(r.post_data_json)
            if r.method == "POST" and r.url.endswith("/api/jobs")
            else None
        ),
    )
    _shown(page, "gradcam", "gradcampp")
    # Upload an image through the page's file input.
    page.set_input_files("input[type=file]", str(_star_png(tmp_path)))
    page.wait_for_function(
        "() => document.querySelector('#image-name').textContent.includes('star.png')"
    )
    assert page.locator("#classes .class.selected .class-name").inner_text() == "star"
    # Choose two methods (one of them slow) and wait for both overlays as images.
    _choose(page, "layercam", "scorecam")
    _shown(page, "layercam", "scorecam")
    assert all(" ms" in t for t in page.locator(".card .time").all_inner_texts())
    assert jobs[-1]["methods"] == ["layercam", "scorecam"]
    before = page.locator("img.overlay").first.get_attribute("src")
    shot_before = page.locator("img.overlay").first.screenshot()
    # Opacity re-renders the stored maps: new pictures, no new job.
    count = len(jobs)
    page.locator("#opacity").fill("0.9")
    page.wait_for_function(
        "() => [...document.querySelectorAll('img.overlay')].every("
        "(i) => i.src.includes('alpha=0.90') && i.complete && i.naturalWidth > 0)"
    )
    assert page.locator("#opacity-value").inner_text() == "0.90"
    assert page.locator("img.overlay").first.get_attribute("src") != before
    assert page.locator("img.overlay").first.screenshot() != shot_before
    assert len(jobs) == count
    # Switch class: the second one in the list.
    second = page.locator("#classes .class").nth(1)
    name = second.locator(".class-name").inner_text()
    second.click()
    page.wait_for_function(
        "(n) => document.querySelector('#explaining').textContent.startsWith('explaining ' + n)",
        arg=name,
    )
    _shown(page, "layercam", "scorecam")
    assert jobs[-1]["target"] == CLASSES.index(name)
    assert page.locator("#classes .class.selected .class-name").inner_text() == name
    # A text file renamed .png: a visible error, and the page keeps its results.
    bad = tmp_path / "notes.png"
    bad.write_text("not an image at all\n")
    page.set_input_files("input[type=file]", str(bad))
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert "notes.png" in error.inner_text() and "not a readable image" in error.inner_text()
    assert page.locator("img.overlay").count() == 2
    # A good image again: the error goes, new overlays come.
    page.set_input_files("input[type=file]", str(_star_png(tmp_path, "again.png")))
    page.wait_for_function(
        "() => document.querySelector('#image-name').textContent.includes('again.png')"
    )
    _shown(page, "layercam", "scorecam")
    assert error.is_hidden()


def test_drop_an_image_and_download(page: Any, tmp_path: Path) -> None:
    _shown(page, "gradcam", "gradcampp")
    data = base64.b64encode(_star_png(tmp_path).read_bytes()).decode()
    page.evaluate(
        """(b64) => {
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          const dt = new DataTransfer();
          dt.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
          const ev = new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true });
          document.querySelector("#drop").dispatchEvent(ev);
        }""",
        data,
    )
    page.wait_for_function(
        "() => document.querySelector('#image-name').textContent.includes('dropped.png')"
    )
    _shown(page, "gradcam", "gradcampp")
    with page.expect_download() as dl:
        page.locator("#download-npz").click()
    arrays = np.load(dl.value.path())
    assert sorted(arrays.files) == ["gradcam", "gradcam_map", "gradcampp", "gradcampp_map"]
    with page.expect_download() as dl:
        page.locator(".card footer a").first.click()
    assert Image.open(io.BytesIO(Path(dl.value.path()).read_bytes())).size == (96, 96)


def test_a_slow_method_shows_progress_and_cancels(page: Any) -> None:
    _shown(page, "gradcam", "gradcampp")
    _choose(page, "sscam")  # 96 channels x 10 samples, one forward each (--batch-size 1)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.card h3')].map((h) => h.textContent).join() "
        "=== 'sscam'"
    )
    page.locator("#cancel").wait_for(state="visible")
    page.wait_for_function(
        "() => parseFloat(document.querySelector('#progress .bar').style.width) > 0"
    )
    assert "forward passes" in page.locator("#status-text").inner_text()
    page.locator("#cancel").click()
    page.wait_for_function(
        "() => document.querySelector('#status-text').dataset.status === 'cancelled'"
    )
    assert page.locator("img.overlay").count() == 0
    assert page.locator(".card .note").inner_text() == "cancelled"
    # The app keeps working after a cancellation.
    _choose(page, "gradcam")
    _shown(page, "gradcam")


def test_any_class_by_name_or_id(page: Any) -> None:
    _shown(page, "gradcam", "gradcampp")
    page.locator("#class-id").fill("ring")
    page.locator("#class-form button").click()
    page.wait_for_function(
        "() => document.querySelector('#explaining').textContent.startsWith('explaining ring')"
    )
    _shown(page, "gradcam", "gradcampp")
    page.locator("#class-id").fill("1")
    page.locator("#class-form button").click()
    page.wait_for_function(
        "() => document.querySelector('#explaining').textContent.startsWith('explaining square')"
    )
    page.locator("#class-id").fill("hexagon")
    page.locator("#class-form button").click()
    assert "no class" in page.locator("#error").inner_text()

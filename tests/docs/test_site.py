"""The built documentation site (``make docs`` -> site/), opened from the file system in headless
Chromium through Playwright, as a reader would: the home page, a tutorial with its pictures, a
page of formulas rendered by the bundled KaTeX, and the offline search.

The site is built by ``make docs`` (``.ci/run`` builds it, then runs these tests); where site/
has not been built, or playwright or chromium is missing, the tests skip and say why.
``CAMLENS_SITE`` points at another built site; ``CAMLENS_SCREENSHOTS`` at a folder to keep the
screenshots in.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(os.environ.get("CAMLENS_SITE", ROOT / "site"))
CHROMIUM = os.environ.get("CAMLENS_CHROMIUM") or shutil.which("chromium")
if CHROMIUM is None and Path("/usr/bin/chromium").exists():
    CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(
    not (SITE / "index.html").exists(),
    reason=f"the documentation site is not built at {SITE}: run `make docs` first",
)

#: pages of the site that must exist, one per entry of the issue's list.
PAGES = [
    "index.html",
    "tutorials/getting_started.html",
    "choosing.html",
    "tutorials/cnn.html",
    "tutorials/vit.html",
    "tutorials/segmentation.html",
    "tutorials/detection.html",
    "tutorials/embeddings.html",
    "tutorials/volumes.html",
    "tutorials/targets.html",
    "metrics.html",
    "tutorials/datasets.html",
    "app.html",
    "migrating.html",
    "methods.html",
    "reference/cli.html",
    "reference/api.html",
    "benchmarks.html",
    "changelog.html",
]
REMOTE = re.compile(
    r"""<(?:script|link|img|iframe|source)\b[^>]*?(?:src|href)=["']?(?:https?:)?//"""
)


def test_every_page_is_built_and_nothing_is_fetched_from_the_network() -> None:
    missing = [p for p in PAGES if not (SITE / p).exists()]
    assert not missing, f"pages missing from the built site: {missing}"
    for html in SITE.rglob("*.html"):
        text = html.read_text(encoding="utf-8")
        found = REMOTE.search(text)
        assert found is None, f"{html.relative_to(SITE)} loads {found.group(0)!r} from the network"
        assert "fonts.googleapis" not in text and "cdn.jsdelivr" not in text, html
    assert list((SITE / "assets" / "katex" / "fonts").glob("*.woff2")), "KaTeX fonts not shipped"


def test_cli_reference_is_the_parsers_help() -> None:
    from camlens.cli import build_parser

    page = (SITE / "reference" / "cli.html").read_text(encoding="utf-8")
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, subparser in sub.choices.items():
        assert f"camlens {name}" in page
        for action in subparser._actions:
            for flag in action.option_strings:
                assert flag in page, f"camlens {name} {flag} is not in the CLI reference"


# -- in the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
    )
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium): browser tests skipped")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page whose every request is recorded: a file:// site must request only files."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    pg.requests = []
    pg.on("request", lambda r: pg.requests.append(r.url))
    yield pg
    assert all(u.startswith(("file://", "data:", "blob:", "about:")) for u in pg.requests), [
        u for u in pg.requests if not u.startswith(("file://", "data:", "blob:", "about:"))
    ]
    context.close()


def _open(page: Any, path: str) -> None:
    page.goto((SITE / path).as_uri())
    page.wait_for_load_state("load")


def _shot(page: Any, name: str, tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CAMLENS_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    assert path.stat().st_size > 10_000  # a real picture, not a blank page
    return path


IMAGES_LOADED = """() => {
  const imgs = [...document.querySelectorAll('article img')];
  return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);
}"""


def test_home_page(page: Any, tmp_path: Path) -> None:
    _open(page, "index.html")
    assert "camlens" in page.title()
    assert page.locator("article h1").first.inner_text().rstrip("¶") == "camlens"
    page.wait_for_function(IMAGES_LOADED)
    nav = page.locator("nav.md-nav--primary").inner_text()
    for entry in ("Getting started", "Choosing a method", "Model guides", "API", "Changelog"):
        assert entry in nav
    _shot(page, "home", tmp_path)


def test_tutorial_pictures_are_loaded(page: Any, tmp_path: Path) -> None:
    _open(page, "tutorials/getting_started.html")
    page.wait_for_function(IMAGES_LOADED)
    # The Explanation shows itself (its _repr_html_): image, heatmap and overlay per row.
    table = page.locator("table.camlens-explanation").first
    assert table.locator("img").count() == 3 * 4
    assert "gradcam" in table.inner_text() and "features" in table.inner_text()
    sizes = page.evaluate(
        "() => [...document.querySelectorAll('article img')].map((i) => i.naturalWidth)"
    )
    assert len(sizes) >= 13 and min(sizes) > 0
    table.scroll_into_view_if_needed()
    _shot(page, "tutorial", tmp_path)
    _open(page, "tutorials/cnn.html")
    page.wait_for_function(IMAGES_LOADED)
    assert page.locator("article .nb-output img").count() >= 2


def test_formulas_are_rendered(page: Any, tmp_path: Path) -> None:
    _open(page, "metrics.html")
    page.wait_for_function("() => document.querySelectorAll('.arithmatex .katex').length > 0")
    maths = page.locator(".arithmatex")
    rendered = page.locator(".arithmatex .katex")
    assert maths.count() >= 20 and rendered.count() == maths.count()
    assert page.locator(".katex-error").count() == 0
    text = page.locator("article").inner_text()
    for raw in ("\\frac", "\\sum", "\\mathbb", "$", "\\("):
        assert raw not in text, f"raw TeX {raw!r} left on the page"
    assert page.locator(".katex-display").count() >= 4  # the display formulas
    # KaTeX's own fonts are in use (shipped with the site, loaded from the file system).
    assert page.evaluate("() => document.fonts.check('16px KaTeX_Main')")
    page.locator(".katex-display").first.scroll_into_view_if_needed()
    _shot(page, "formulas", tmp_path)
    # Formulas written in docstrings render on the API page too (mkdocstrings + the same KaTeX).
    _open(page, "reference/api.html")
    page.wait_for_function("() => document.querySelectorAll('.arithmatex .katex').length > 0")
    assert page.locator(".arithmatex").count() == page.locator(".arithmatex .katex").count()


def test_search_answers_offline(page: Any, tmp_path: Path) -> None:
    _open(page, "index.html")
    page.wait_for_timeout(1000)  # the search index loads in its worker
    page.keyboard.press("/")  # Material's shortcut to the search box; then type as a reader
    page.keyboard.type("deletion", delay=30)
    results = page.locator(".md-search-result__item")
    results.first.wait_for()
    assert results.count() > 0
    assert "eletion" in page.locator(".md-search-result").inner_text()
    _shot(page, "search", tmp_path)

"""The site's build hooks (tools/docs_hooks.py): tutorials executed and rendered, a failing cell
failing the build, repository pages included with their links fixed, guides added to the
navigation. Fast: no site build (tests/docs/test_site.py checks the built site)."""

from __future__ import annotations

import base64
import importlib.util
import io
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
nbformat = pytest.importorskip("nbformat", reason="the docs extra is not installed")

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location(
    "camlens_docs_hooks", ROOT / "tools" / "docs_hooks.py"
)
hooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hooks)


def _png(color: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (3, 2), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_render_puts_each_output_under_its_code() -> None:
    v4 = nbformat.v4
    code = v4.new_code_cell("print('hi')\nx")
    code.outputs = [
        v4.new_output("stream", name="stdout", text="hi\n"),
        v4.new_output("stream", name="stderr", text="UserWarning: careful\n"),
        v4.new_output("stream", name="stderr", text="50%|#####\r"),  # a progress bar: dropped
        v4.new_output("display_data", data={"image/png": _png((255, 0, 0)), "text/plain": "<F>"}),
        v4.new_output("execute_result", data={"text/html": "<table>x</table>", "text/plain": "t"}),
    ]
    setup = v4.new_code_cell("import os")
    setup.metadata["tags"] = ["camlens-setup"]
    nb = v4.new_notebook(cells=[setup, v4.new_markdown_cell("# Title"), code])
    out = hooks.render(nb, "demo")
    md = out["md"]
    assert "import os" not in md  # the hidden set-up cell
    assert md.index("# Title") < md.index("```python\nprint('hi')\nx\n```")
    assert "hi\nUserWarning: careful" in md and "50%" not in md
    assert "![output of cell 2](demo_files/cell2_3.png)" in md
    assert md.index("UserWarning") < md.index("demo_files") < md.index("<table>x</table>")
    img = Image.open(io.BytesIO(base64.b64decode(out["files"]["demo_files/cell2_3.png"])))
    assert img.size == (3, 2) and img.getpixel((0, 0)) == (255, 0, 0)


def test_a_failing_cell_fails_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hooks, "CACHE", tmp_path / "cache")
    monkeypatch.setenv("CAMLENS_DOCS_FRESH", "1")
    script = tmp_path / "broken.py"
    script.write_text("# %%\nprint('fine')\n\n# %%\nraise ValueError('the tutorial broke')\n")
    with pytest.raises(hooks.PluginError, match=r"broken\.py(.|\n)*the tutorial broke"):
        hooks.execute(script, "tree")
    assert not list(tmp_path.rglob("*.json"))  # nothing cached from a failed run


def test_included_pages_point_repository_links_at_the_site(tmp_path, monkeypatch) -> None:
    (tmp_path / "X.md").write_text(
        "[a](README.md#camlens-evaluate) [b](docs/choosing.md#the-demo-cnn) [c](CHANGELOG.md) "
        "[d](benchmarks/bench.py) [e](https://example.org) ![p](docs/app.png)"
    )
    monkeypatch.setattr(hooks, "ROOT", tmp_path)
    text = hooks.included("X.md")
    assert "[a](metrics.md#camlens-evaluate)" in text
    assert "[b](choosing.md#the-demo-cnn)" in text and "[c](changelog.md)" in text
    assert "d (`benchmarks/bench.py`)" in text and "[e](https://example.org)" in text
    assert "![p](app.png)" in text


def test_guides_join_the_navigation(tmp_path, monkeypatch) -> None:
    (tmp_path / "guides").mkdir()
    (tmp_path / "guides" / "yolo.md").write_text("# YOLO detectors\n\ntext")
    (tmp_path / "guides" / "clip.md").write_text("# CLIP\n")
    monkeypatch.setattr(hooks, "DOCS", tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # on_config prepends src
    nav = [{"Home": "index.md"}, {"Model guides": [{"CNN classifiers": "tutorials/cnn.md"}]}]
    hooks.on_config(SimpleNamespace(nav=nav))
    assert nav[1]["Model guides"] == [
        {"CNN classifiers": "tutorials/cnn.md"},
        {"CLIP": "guides/clip.md"},
        {"YOLO detectors": "guides/yolo.md"},
    ]


def test_sphinx_roles_are_dropped_from_docstrings() -> None:
    html = "see :func:<code>camlens.explain</code> and :class:<code>X</code>; a: b"
    assert hooks.on_page_content(html, None, None, None) == (
        "see <code>camlens.explain</code> and <code>X</code>; a: b"
    )


def test_cli_reference_has_every_subcommand() -> None:
    page = hooks.cli_reference()
    for name in ("demo", "demo train", "explain", "evaluate", "batch", "methods", "app"):
        assert f"`camlens {name}`" in page
    assert "usage: camlens explain" in page

"""MkDocs hooks of the camlens site (``mkdocs.yml``: ``hooks: [tools/docs_hooks.py]``).

At every build:

- the tutorials ``docs/tutorials/*.py`` (jupytext percent scripts) are executed as notebooks
  in a fresh Jupyter kernel, on the checkout's ``src`` (a failing cell fails the build), and
  rendered as Markdown pages with their outputs: text, HTML (an ``Explanation`` shows itself)
  and the pictures, written as PNG files next to the page;
- ``reference/cli.md`` is written from the argument parser (``camlens.cli.build_parser``);
- ``benchmarks.md`` and ``changelog.md`` are the repository's BENCHMARKS.md and CHANGELOG.md,
  their links to repository files pointed at the site's pages;
- every ``docs/guides/*.md`` page is listed under "Model guides" in the navigation;
- Sphinx roles left in docstrings (":func:`x`") are shown as the code they mark.

Executed tutorials are cached in ``.cache/docs/`` under a hash of the script and of every file
of ``src/camlens``: an unchanged tree is not executed twice (``CAMLENS_DOCS_FRESH=1`` ignores the
cache; CI builds from a fresh clone, so it always executes).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.camlens")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SRC = ROOT / "src"
CACHE = ROOT / ".cache" / "docs"
TUTORIALS = "tutorials"
#: run first in every tutorial's kernel and not shown: small, reproducible, quiet pictures.
SETUP = """\
import os, warnings
import matplotlib
matplotlib.rcParams["figure.dpi"] = 90
import torch
torch.set_num_threads(int(os.environ.get("CAMLENS_DOCS_THREADS", "2")))
"""
CACHE_VERSION = "2"


# -- navigation --------------------------------------------------------------------------------


def _title(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem.replace("-", " ").capitalize()


def on_config(config: Any) -> Any:
    """Put the checkout's ``src`` first on the path (for the kernels and mkdocstrings) and add
    ``docs/guides/*.md`` to the "Model guides" section of the navigation."""
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p
    )
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    guides = sorted((DOCS / "guides").glob("*.md"), key=_title)
    for section in config.nav or []:
        if isinstance(section, dict) and "Model guides" in section:
            listed = {next(iter(e.values())) for e in section["Model guides"]}
            for page in guides:
                rel = f"guides/{page.name}"
                if rel not in listed:
                    section["Model guides"].append({_title(page): rel})
    return config


# -- generated pages ---------------------------------------------------------------------------


def cli_reference() -> str:
    """The CLI reference: ``--help`` of ``camlens`` and of every subcommand, as the parser says."""
    from camlens.cli import build_parser

    parser = build_parser()
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "82"  # argparse wraps to the width of the page's code blocks
    out = [
        "# CLI reference",
        "",
        "Generated at build time from `camlens.cli.build_parser()`: each block is exactly what",
        "`camlens ... --help` prints. Every expected failure prints one line",
        "`camlens: error: ...` and exits non-zero; `camlens --debug ...` shows the traceback.",
        "",
    ]

    def walk(p: Any, name: str, depth: int) -> None:
        out.extend([f"{'#' * depth} `{name}`", "", "```text", p.format_help().rstrip(), "```", ""])
        for action in p._actions:
            choices = getattr(action, "choices", None)
            if action.__class__.__name__ == "_SubParsersAction" and isinstance(choices, dict):
                for sub_name, sub in choices.items():
                    walk(sub, f"{name} {sub_name}", min(depth + 1, 4))

    try:
        walk(parser, "camlens", 2)
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    return "\n".join(out)


#: repository files that the included BENCHMARKS.md / CHANGELOG.md link to -> site pages.
LINKS = {"README.md": "index.md", "BENCHMARKS.md": "benchmarks.md", "CHANGELOG.md": "changelog.md"}
ANCHORS = {"README.md#camlens-evaluate": "metrics.md#camlens-evaluate"}  # older links


def included(name: str) -> str:
    """A repository Markdown file as a site page: links to repository files made site links,
    ``docs/X`` made ``X``; a link to any other repository file becomes its plain text."""
    text = (ROOT / name).read_text(encoding="utf-8")

    def fix(m: re.Match[str]) -> str:
        label, target = m.group(1), m.group(2)
        if re.match(r"^[a-z]+://|^#|^mailto:", target):
            return m.group(0)
        if target in ANCHORS:
            return f"[{label}]({ANCHORS[target]})"
        base, _, anchor = target.partition("#")
        if base in LINKS:
            return f"[{label}]({LINKS[base]}{'#' + anchor if anchor else ''})"
        if base.startswith("docs/"):
            return f"[{label}]({base[5:]}{'#' + anchor if anchor else ''})"
        return f"{label} (`{target}`)"

    return re.sub(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)", fix, text).replace("](docs/", "](")


# -- executed tutorials ------------------------------------------------------------------------


def _tree_hash() -> str:
    h = hashlib.sha256(CACHE_VERSION.encode())
    for path in sorted((SRC / "camlens").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(SRC)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def execute(script: Path, tree: str) -> dict[str, Any]:
    """Run one jupytext percent script as a notebook; returns {"md": ..., "files": {name: b64}}.

    Raises PluginError naming the tutorial and the failing cell when a cell fails.
    """
    key = hashlib.sha256((tree + script.read_text(encoding="utf-8")).encode()).hexdigest()
    cached = CACHE / f"{script.stem}-{key[:20]}.json"
    if cached.exists() and not os.environ.get("CAMLENS_DOCS_FRESH"):
        return json.loads(cached.read_text())
    import jupytext
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = jupytext.read(script, fmt="py:percent")
    setup = nbformat.v4.new_code_cell(SETUP)
    setup.metadata["tags"] = ["camlens-setup"]
    nb.cells.insert(0, setup)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="camlens-docs-") as cwd:  # files a tutorial writes
        client = NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": cwd}}
        )
        try:
            client.execute()
        except CellExecutionError as exc:
            raise PluginError(f"tutorial {script.name}: a cell failed:\n{exc}") from None
    seconds = time.perf_counter() - start
    result = render(nb, script.stem)
    result["seconds"] = seconds
    CACHE.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(result))
    return result


def _flush(text: list[str], lines: list[str]) -> None:
    """Append the text outputs collected so far as one text block, and forget them."""
    if text:
        body = "".join(text).rstrip("\n")
        lines.extend(['<div class="nb-output" markdown>', "", "```text", body, "```"])
        lines.extend(["", "</div>", ""])
        text.clear()


def render(nb: Any, stem: str) -> dict[str, Any]:
    """A run notebook as Markdown: markdown cells as they are, code in python fences, each
    output under it (text in a text fence, HTML as it is, pictures as PNG files)."""
    lines: list[str] = []
    files: dict[str, str] = {}
    for i, cell in enumerate(nb.cells):
        if "camlens-setup" in cell.metadata.get("tags", []):
            continue
        if cell.cell_type == "markdown":
            lines += [cell.source, ""]
            continue
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        lines += ["```python", cell.source.rstrip(), "```", ""]
        text: list[str] = []

        for j, out in enumerate(cell.get("outputs", [])):
            if out.output_type == "stream":
                if out.name == "stdout" or "\r" not in out.text:
                    text.append(out.text)  # stdout, and warnings (not progress bars)
                continue
            data = out.get("data", {})
            if "image/png" in data:
                _flush(text, lines)
                name = f"{stem}_files/cell{i}_{j}.png"
                files[name] = data["image/png"]
                lines += ['<div class="nb-output" markdown>', ""]
                lines += [f"![output of cell {i}]({name})", "", "</div>", ""]
            elif "text/html" in data:
                _flush(text, lines)
                lines += ['<div class="nb-output">', data["text/html"], "</div>", ""]
            elif "text/plain" in data:
                text.append(data["text/plain"] + "\n")
        _flush(text, lines)
    return {"md": "\n".join(lines), "files": files}


#: Sphinx roles in docstrings (":func:`x`"), rendered by mkdocstrings as ":func:<code>x</code>".
ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):(?=<code>)")


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    """Drop the Sphinx role prefixes that docstrings carry, keeping the code they mark."""
    return ROLE.sub("", html)


def on_files(files: Files, config: Any) -> Files:
    """Add the generated pages and the executed tutorials (with their pictures) to the site."""
    pages = {
        "reference/cli.md": cli_reference(),
        "benchmarks.md": included("BENCHMARKS.md"),
        "changelog.md": included("CHANGELOG.md"),
    }
    scripts = sorted((DOCS / TUTORIALS).glob("*.py"))
    tree = _tree_hash()
    start = time.perf_counter()
    workers = int(os.environ.get("CAMLENS_DOCS_JOBS", "2"))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(lambda s: execute(s, tree), scripts))
    for script, result in zip(scripts, results, strict=True):
        pages[f"{TUTORIALS}/{script.stem}.md"] = result["md"]
        log.info("tutorial %s: executed in %.1f s", script.name, result.get("seconds", 0.0))
        for name, b64 in result["files"].items():
            files.append(
                File.generated(config, f"{TUTORIALS}/{name}", content=base64.b64decode(b64))
            )
    log.info("tutorials: %d in %.1f s", len(scripts), time.perf_counter() - start)
    for uri, content in pages.items():
        files.append(File.generated(config, uri, content=content))
    return files

"""Mutation testing of camlens, one module at a time, each against its own tests only.

    python benchmarks/mutation/run.py                 # every module below
    python benchmarks/mutation/run.py cams layouts    # some of them
    python benchmarks/mutation/run.py cams --jobs 2 --survivors

For each module this copies ``src/``, ``tests/`` and ``pyproject.toml`` into a scratch folder
(``.mutation/<module>/``, git-ignored), adds a ``[tool.mutmut]`` section that mutates only that
module and selects only its tests, and runs mutmut 3 there (``mutmut run``). The checkout itself
is never mutated. It prints, per module and per file, the counts of killed / survived / no-test /
timeout mutants and the score = (killed + timeout) / (all - skipped), and writes them to
``.mutation/<module>/summary.json``; ``--survivors`` lists every mutant that lived, for triage
(``cd .mutation/<module> && python -m mutmut show NAME`` prints its diff).

One adaptation, in the scratch copy only: mutmut 3 skips decorated functions (its trampolines
cannot wrap an arbitrary decorator), and every CAM method is decorated with ``@register(...)``.
The copy rewrites ``@register(args)\\ndef f(...)`` as ``def f(...)`` followed by
``f = register(args)(f)``, which Python defines to be the same thing, so that the methods
themselves are mutated. Other decorators are left alone (those functions are not mutated).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import libcst as cst

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Target:
    """What to mutate (globs relative to the checkout) and which tests judge it."""

    mutate: tuple[str, ...]
    tests: tuple[str, ...]


MODULES: dict[str, Target] = {
    "cams": Target(("src/camlens/cams/*",), ("tests/cams", "tests/test_peers.py")),
    "layouts": Target(
        ("src/camlens/layouts.py",),
        ("tests/test_layouts.py", "tests/test_layouts_units.py", "tests/test_model_kinds.py"),
    ),
    "targets": Target(
        ("src/camlens/targets.py",),
        (
            "tests/test_targets.py",
            "tests/test_targets_units.py",
            "tests/test_targets_detections.py",
        ),
    ),
    # the engine and the rooms it was split into (capture, gradients, runners, display)
    "engine": Target(
        (
            "src/camlens/engine.py",
            "src/camlens/capture.py",
            "src/camlens/gradients.py",
            "src/camlens/runners.py",
            "src/camlens/display.py",
        ),
        (
            "tests/test_engine.py",
            "tests/test_engine_kinds.py",
            "tests/test_engine_multi.py",
            "tests/test_engine_options.py",
            "tests/test_engine_state.py",
            "tests/test_engine_detectors.py",
            "tests/test_errors.py",
            "tests/test_capture.py",
            "tests/test_gradients.py",
            "tests/test_runners.py",
            "tests/test_runners_precision.py",
            "tests/test_runners_layouts.py",
            "tests/test_display.py",
        ),
    ),
    "metrics": Target(("src/camlens/metrics/*",), ("tests/metrics",)),
}

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped"}
STATUS.update({36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout"})


class _Undecorate(cst.CSTTransformer):
    """``@register(...) def f`` -> ``def f`` then ``f = register(...)(f)`` (module level)."""

    def leave_Module(self, original: cst.Module, updated: cst.Module) -> cst.Module:  # noqa: N802
        body: list[cst.BaseStatement] = []
        for stmt in updated.body:
            if not isinstance(stmt, cst.FunctionDef) or not stmt.decorators:
                body.append(stmt)
                continue
            keep = [d for d in stmt.decorators if not _is_register(d)]
            moved = [d for d in stmt.decorators if _is_register(d)]
            if not moved:
                body.append(stmt)
                continue
            body.append(stmt.with_changes(decorators=keep))
            value: cst.BaseExpression = cst.Name(stmt.name.value)
            for dec in reversed(moved):  # the decorator nearest the def applies first
                value = cst.Call(func=dec.decorator, args=[cst.Arg(value)])
            target = cst.AssignTarget(cst.Name(stmt.name.value))
            body.append(cst.SimpleStatementLine([cst.Assign(targets=[target], value=value)]))
        return updated.with_changes(body=body)


def _is_register(dec: cst.Decorator) -> bool:
    call = dec.decorator
    return isinstance(call, cst.Call) and _named(call.func, "register")


def _named(node: cst.BaseExpression, name: str) -> bool:
    return isinstance(node, cst.Name) and node.value == name


def undecorate(source: str) -> str:
    """The source with ``@register(...)`` turned into a call after the definition."""
    return cst.parse_module(source).visit(_Undecorate()).code


def _toml_list(items: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def write_judges(target: Target, here: Path) -> Path:
    """``judges.txt``: the module's tests that exist in the checkout, one per line.

    mutmut's setting names this file (pytest reads arguments from ``@FILE``), not the tests:
    mutmut resets every result when its test-selection setting changes, whereas a test file
    added to ``judges.txt`` later only makes mutmut map its new tests (``--rerun``).
    """
    judges = here / "judges.txt"
    judges.write_text("".join(f"{t}\n" for t in target.tests if (ROOT / t).exists()))
    return judges


def prepare(name: str, target: Target, workdir: Path) -> Path:
    """A fresh scratch copy for ``name`` with its mutmut configuration."""
    here = workdir / name
    if here.exists():
        shutil.rmtree(here)
    here.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache")
    shutil.copytree(ROOT / "src", here / "src", ignore=ignore)
    shutil.copytree(ROOT / "tests", here / "tests", ignore=ignore)
    for pattern in target.mutate:
        for path in here.glob(pattern):
            if path.suffix == ".py":
                path.write_text(undecorate(path.read_text()))
    judges = write_judges(target, here)
    config = (ROOT / "pyproject.toml").read_text()
    config += (
        "\n[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        f"only_mutate = {_toml_list(target.mutate)}\n"
        f"pytest_add_cli_args_test_selection = {_toml_list(['@' + str(judges.resolve())])}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "--no-header", "-x", '
        '"-o", "addopts="]\n'
        # fork each mutant's worker from mutmut's process, which has torch and the tests loaded:
        # ~5x faster here than a fork server that starts pytest for each mutant; torch on CPU
        # forks safely with OMP_NUM_THREADS=1 (set below)
        'process_isolation = "fork"\n'
        "use_git_change_detection = false\n"
    )
    (here / "pyproject.toml").write_text(config)
    return here


def summarise(here: Path) -> dict[str, dict[str, int]]:
    """Counts per status, per mutated file, from mutmut's ``.meta`` files."""
    per_file: dict[str, dict[str, int]] = {}
    for meta in sorted((here / "mutants").rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        counts: dict[str, int] = {}
        for code in codes.values():
            status = STATUS.get(code, "other") if code is not None else "not checked"
            counts[status] = counts.get(status, 0) + 1
        if codes:
            per_file[str(meta.relative_to(here / "mutants"))[: -len(".meta")]] = counts
    return per_file


def score(counts: dict[str, int]) -> float:
    """(killed + timeout) / (all - skipped), in percent (mutmut's definition)."""
    tested = sum(counts.values()) - counts.get("skipped", 0)
    return 100.0 * (counts.get("killed", 0) + counts.get("timeout", 0)) / max(tested, 1)


def survivors(here: Path, env: dict[str, str]) -> list[str]:
    """``name: status`` of every mutant that was not killed."""
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results"],
        cwd=here,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def refresh_tests(here: Path) -> None:
    """Replace the scratch copy's tests by the checkout's (after triage added tests)."""
    shutil.rmtree(here / "tests")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache")
    shutil.copytree(ROOT / "tests", here / "tests", ignore=ignore)
    if (here / "mutants" / "tests").exists():
        shutil.rmtree(here / "mutants" / "tests")
        shutil.copytree(ROOT / "tests", here / "mutants" / "tests", ignore=ignore)


def refresh_sources(target: Target, here: Path) -> bool:
    """Bring the scratch copy's sources up to the checkout's, touching only files that changed.

    A mutated file that changed is rewritten in ``src/``: mutmut then makes new mutants for the
    functions whose code changed and keeps the verdicts of the others. mutmut copies the files
    it does not mutate into ``mutants/`` once, so a changed one is copied there too. Returns
    whether a mutated file changed.
    """
    changed = False
    mutated = {path.relative_to(ROOT) for pattern in target.mutate for path in ROOT.glob(pattern)}
    for path in sorted((ROOT / "src").rglob("*.py")):
        rel = path.relative_to(ROOT)
        text = path.read_text()
        if rel in mutated:
            text = undecorate(text)
        places = [here / rel] if rel in mutated else [here / rel, here / "mutants" / rel]
        for place in places:
            if not place.exists() or place.read_text() != text:
                place.parent.mkdir(parents=True, exist_ok=True)
                place.write_text(text)
                changed |= rel in mutated
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"some of {', '.join(MODULES)}")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".mutation")
    parser.add_argument("--survivors", action="store_true", help="list the surviving mutants")
    parser.add_argument(
        "--min-score", type=float, default=0.0, help="exit 1 when a module scores below this"
    )
    parser.add_argument(
        "--rerun",
        action="store_true",
        help="keep the scratch copy and its results, take the checkout's tests and changed "
        "sources again and re-run only the mutants that were not killed (after triage added "
        "tests)",
    )
    parser.add_argument(
        "--mutants",
        default="*",
        help="with --rerun: only the survivors whose names match this glob "
        "(e.g. 'camlens.capture.*'), to re-check one file's survivors",
    )
    args = parser.parse_args(argv)
    names = args.modules or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose from {list(MODULES)}")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MUTANT_UNDER_TEST")}
    env.setdefault("OMP_NUM_THREADS", "1")
    report: dict[str, dict] = {}
    for name in names:
        base = [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.jobs)]
        cmd = list(base)
        here = args.workdir / name
        if args.rerun and (here / "mutants").exists():
            if refresh_sources(MODULES[name], here):
                # mutmut maps tests to functions only for new tests: new functions would be
                # "no tests" until the mapping is made again from scratch (the verdicts stay)
                (here / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
            refresh_tests(here)
            config = here / "pyproject.toml"
            config.write_text(config.read_text().replace('"forkserver"', '"fork"'))
            write_judges(MODULES[name], here)  # test files added since are judges too
            # first the mutants not checked yet, then (below) the survivors with the new tests
            with (here / "mutmut.log").open("a") as out:
                subprocess.run(cmd, cwd=here, env=env, stdout=out, stderr=out, check=False)
            names_left = [line.split(":")[0] for line in survivors(here, env)]
            chosen = [n for n in names_left if fnmatch.fnmatchcase(n, args.mutants)]
            if not chosen:  # naming none would make mutmut run every mutant again
                print(f"{name}: no surviving mutant matches {args.mutants!r}")
                continue
            cmd += chosen
        else:
            here = prepare(name, MODULES[name], args.workdir)
        start = time.perf_counter()
        log = here / "mutmut.log"
        with log.open("w") as out:
            proc = subprocess.run(cmd, cwd=here, env=env, stdout=out, stderr=out, check=False)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            print(f"{name}: mutmut failed (exit {proc.returncode}), see {log}")
            print(log.read_text()[-3000:])
            return 2
        files = summarise(here)
        total: dict[str, int] = {}
        for counts in files.values():
            for status, n in counts.items():
                total[status] = total.get(status, 0) + n
        mode = "rerun" if args.rerun and len(cmd) > len(base) else "full"  # named: only they ran
        report[name] = {"mode": mode, "seconds": round(seconds, 1), "total": total, "files": files}
        report[name]["score"] = round(score(total), 1)
        (here / "summary.json").write_text(json.dumps(report[name], indent=2))
        print(f"\n== {name}: score {score(total):.1f} %  {total}  ({seconds:.0f} s)")
        for path, counts in files.items():
            print(f"   {path:45s} {score(counts):5.1f} %  {counts}")
        if args.survivors:
            for line in survivors(here, env):
                print("   ", line)
    low = [n for n, r in report.items() if r["score"] < args.min_score]
    if low:
        print(f"below {args.min_score} %: {', '.join(low)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

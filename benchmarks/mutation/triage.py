"""The surviving mutants of one ``make mutation`` module, each with its change and its verdict.

    python benchmarks/mutation/triage.py cams                # a Markdown table on stdout
    python benchmarks/mutation/triage.py cams --check        # exit 1 if one has no verdict
    python benchmarks/mutation/triage.py cams --workdir DIR  # a scratch copy made elsewhere

Reads mutmut's results in ``<workdir>/<module>/`` (left by ``benchmarks/mutation/run.py``): every
mutant that was not killed, the line it changes (``-`` the original, ``+`` the mutant), and a
verdict from ``verdicts.toml`` next to this file:

- ``[[equivalent]]`` rules: a kind of change that no test can observe, with the one-line reason
  (a device argument dropped while the tests run on CPU, ``zip(strict=...)`` on lists built with
  equal lengths, ...). A rule matches on the mutant's name (``mutant``, a glob), the original line
  (``removed``, a regular expression), the mutant's line (``added``; ``added_not``: must not
  match), and ``differ_only_in``: the two lines are equal once every match of this expression
  is deleted from both (``ignore_case``: and compared in lower case). Every field given must
  match.
- ``[mutants]``: one verdict for one mutant by name, where a kind rule would be too broad.

A survivor that no rule or name covers is printed as **untriaged**: a test gap to close or a
verdict to write. Verdicts by name go stale when the code above the mutant changes (mutmut
numbers the mutants of a function in order), which ``--check`` reveals as untriaged lines.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
VERDICTS = Path(__file__).with_name("verdicts.toml")

# runs inside the scratch copy: every non-killed mutant with its status and its diff, as JSON
_DIFFS = """
import json, sys
from mutmut.__main__ import SourceFileMutationData, status_by_exit_code
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.utils.file_utils import walk_mutatable_files
out = []
for path in walk_mutatable_files():
    m = SourceFileMutationData(path=path)
    m.load()
    for name, code in m.exit_code_by_key.items():
        status = status_by_exit_code[code]
        if status not in ("killed", "timeout", "skipped"):
            out.append([name, status, get_diff_for_mutant(name, path=m.path)])
json.dump(out, sys.stdout)
"""


@dataclass(frozen=True)
class Rule:
    """One kind of equivalent change and why it cannot be observed."""

    why: str
    mutant: str = "*"
    removed: str | None = None
    added: str | None = None
    added_not: str | None = None
    differ_only_in: str | None = None
    ignore_case: bool = False

    def matches(self, name: str, removed: str, added: str) -> bool:
        return (
            fnmatch.fnmatchcase(name, self.mutant)
            and (self.removed is None or re.search(self.removed, removed) is not None)
            and (self.added is None or re.search(self.added, added) is not None)
            and (self.added_not is None or re.search(self.added_not, added) is None)
            and (self.differ_only_in is None or self._same_apart(removed, added))
        )

    def _same_apart(self, removed: str, added: str) -> bool:
        """The two lines are equal once every match of ``differ_only_in`` is deleted."""

        def norm(line: str) -> str:
            line = re.sub(self.differ_only_in or "", "", line)
            line = re.sub(r"\s+", "", line).replace(",,", ",").replace(",)", ")").replace("(,", "(")
            return line.lower() if self.ignore_case else line

        return norm(removed) == norm(added)


def load_verdicts(path: Path = VERDICTS) -> tuple[list[Rule], dict[str, str]]:
    """The kind rules and the verdicts by name of ``verdicts.toml``."""
    data = tomllib.loads(path.read_text())
    rules = [Rule(**entry) for entry in data.get("equivalent", [])]
    return rules, dict(data.get("mutants", {}))


def changed_lines(diff: str) -> tuple[str, str]:
    """The original and the mutated line(s) of a unified diff, each joined by `` / ``."""
    removed = [ln[1:].strip() for ln in diff.splitlines() if ln[:1] == "-" and ln[:3] != "---"]
    added = [ln[1:].strip() for ln in diff.splitlines() if ln[:1] == "+" and ln[:3] != "+++"]
    return " / ".join(removed), " / ".join(added)


def verdict(
    name: str, removed: str, added: str, rules: list[Rule], by_name: dict[str, str | dict]
) -> str | None:
    """``E: why`` (equivalent), the verdict written for this mutant, or None (untriaged).

    A verdict by name is a string, or ``{why = ..., change = ...}`` where ``change`` is the
    mutant's line when the verdict was written: if the mutant now changes another line (its
    function was edited and mutmut renumbered), the verdict is stale and ignored."""
    short = name.removeprefix("camlens.")  # verdicts.toml names mutants without the package
    given = by_name.get(short)
    if isinstance(given, str):
        return given
    line = added or removed
    if given is not None and _squash(given["change"]) in (_squash(line), _squash(_shown(line))):
        return str(given["why"])
    for rule in rules:
        if rule.matches(name, removed, added):
            return f"E: {rule.why}"
    return None


def _squash(line: str) -> str:
    return re.sub(r"\s+", "", line)


def survivors(here: Path) -> list[tuple[str, str, str]]:
    """(name, status, diff) of every mutant of the scratch copy that was not killed."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MUTANT_UNDER_TEST")}
    out = subprocess.run(
        [sys.executable, "-c", _DIFFS], cwd=here, env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"could not read mutmut's results in {here}:\n{out.stderr[-2000:]}")
    return [tuple(row) for row in json.loads(out.stdout)]


def _shown(text: str) -> str:
    """The change as the table shows it (long lines cut; a verdict may quote either form)."""
    text = text if len(text) <= 110 else text[:107] + "..."
    return text.replace("`", "'")


def _cell(text: str) -> str:
    return "`" + _shown(text).replace("|", "\\|") + "`"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", help="a module of benchmarks/mutation/run.py (cams, engine...)")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".mutation")
    parser.add_argument("--check", action="store_true", help="exit 1 if a survivor is untriaged")
    args = parser.parse_args(argv)
    here = args.workdir / args.module
    if not (here / "mutants").exists():
        parser.error(f"no mutation results in {here}: run benchmarks/mutation/run.py first")
    rules, by_name = load_verdicts()
    rows, untriaged = [], 0
    for name, status, diff in survivors(here):
        removed, added = changed_lines(diff)
        why = verdict(name, removed, added, rules, by_name)
        if why is None:
            untriaged += 1
            why = f"**untriaged** ({status})"
        rows.append(f"| `{name.removeprefix('camlens.')}` | {_cell(added or removed)} | {why} |")
    print("| mutant | change | verdict |\n|---|---|---|")
    print("\n".join(rows))
    print(f"\n{len(rows)} survivors, {untriaged} untriaged", file=sys.stderr)
    return 1 if args.check and untriaged else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The tools of `make mutation`: the @register rewrite and the verdict rules of the triage."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).resolve().parents[2] / "benchmarks" / "mutation"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_mutation_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


pytest.importorskip("libcst")
run = _load("run")
triage = _load("triage")


def test_undecorate_moves_register_after_the_definition_and_keeps_other_decorators() -> None:
    source = (
        "@register('a', kind='x')\n@other\ndef f(x):\n    return x\n\n"
        "@other\ndef g(x):\n    return x\n"
    )
    out = run.undecorate(source)
    assert out == (
        "@other\ndef f(x):\n    return x\nf = register('a', kind='x')(f)\n\n"
        "@other\ndef g(x):\n    return x\n"
    )


def test_undecorate_applies_stacked_registers_nearest_first() -> None:
    out = run.undecorate("@register('outer')\n@register('inner')\ndef f():\n    pass\n")
    assert out.endswith("f = register('outer')(register('inner')(f))\n")


RULES, BY_NAME = triage.load_verdicts()


def _why(removed: str, added: str, name: str = "camlens.x.y__mutmut_1") -> str | None:
    return triage.verdict(name, removed, added, RULES, {})


@pytest.mark.parametrize(
    ("removed", "added"),
    [
        ("x = torch.zeros(n, k, device=acts.device)", "x = torch.zeros(n, k, device=None)"),
        ("x = torch.zeros(n, k, device=acts.device)", "x = torch.zeros(n, k, )"),
        ("idx = torch.arange(a, b, device=x.device, dtype=d)", "idx = torch.arange(a, b, dtype=d)"),
        ("for a, b in zip(x, y, strict=True):", "for a, b in zip(x, y, strict=False):"),
        ("for a, b in zip(x, y, strict=True):", "for a, b in zip(x, y, ):"),
        ('e = torch.einsum("bk,bk...->b...", w, a)', 'e = torch.einsum("BK,BK...->B...", w, a)'),
        ('m.fill_(float("-inf"))', 'm.fill_(float("-INF"))'),
        ("y = x.to(device)", "y = x.to(None)"),
    ],
)
def test_equivalent_kinds_are_recognised(removed: str, added: str) -> None:
    assert (_why(removed, added) or "").startswith("E: ")


@pytest.mark.parametrize(
    ("removed", "added"),
    [
        # the whole expression replaced, not only the device dropped: a real change
        ("return torch.zeros(n, device=acts.device)", "return None"),
        ("x = torch.zeros(n, k, device=acts.device)", "x = torch.zeros(n, k + 1, device=None)"),
        ("x = torch.ones(n, device=d)", "x = torch.zeros(n, device=d)"),
        ("for a, b in zip(x, y, strict=True):", "for a, b in zip(y, x, strict=True):"),
        ('e = torch.einsum("bk,bk...->b...", w, a)', 'e = torch.einsum("bk,bk...->b", w, a)'),
        ('raise InputError("the map is empty")', 'raise InputError("THE MAP IS EMPTY")'),
        ('m.fill_(float("-inf"))', 'm.fill_(float("inf"))'),
        ("y = x.to(device)", "y = x.to(device).abs()"),
    ],
)
def test_real_changes_are_left_untriaged(removed: str, added: str) -> None:
    assert _why(removed, added) is None


def test_verdicts_by_name_win_and_say_equivalent_or_gap() -> None:
    assert triage.verdict("camlens.a.b__mutmut_3", "x", "y", RULES, {"a.b__mutmut_3": "E: why"})
    assert BY_NAME, "verdicts.toml names no mutant"
    for name, given in BY_NAME.items():
        assert not name.startswith("camlens."), name
        why = given if isinstance(given, str) else given["why"]
        assert why.startswith(("E: ", "GAP: ")), f"{name}: {why!r}"
        assert isinstance(given, str) or set(given) == {"why", "change"}, name


def test_a_verdict_written_for_another_line_is_stale() -> None:
    by_name = {"a.f__mutmut_3": {"why": "E: sign is +-1", "change": "return proj / sign"}}
    args = ("camlens.a.f__mutmut_3", "return proj * sign")
    assert triage.verdict(*args, "return  proj / sign", RULES, by_name) == "E: sign is +-1"
    assert triage.verdict(*args, "return proj * 2", RULES, by_name) is None


def test_changed_lines_of_a_unified_diff() -> None:
    diff = "--- a.py\n+++ a.py\n@@ -1,3 +1,3 @@\n x = 1\n-    y = x + 1\n+    y = x - 1\n z = 2\n"
    assert triage.changed_lines(diff) == ("y = x + 1", "y = x - 1")

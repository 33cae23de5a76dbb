"""SYMGRAD_DEBUG prints the IR after each pass (1) and the generated source too (2)."""

from __future__ import annotations

import pytest

import symgrad as sg


def _build():
    a = sg.Value(0.5, label="a")
    return a, (a * a * 1.0).exp()


@pytest.mark.parametrize("level", ["1", "2"])
def test_debug_levels_print_each_pass(level, monkeypatch, capsys):
    monkeypatch.setenv("SYMGRAD_DEBUG", level)
    a, out = _build()
    f = sg.compile(out, wrt=[a], backend="python")
    err = capsys.readouterr().err
    for name in ("before the passes", "after fold", "after simplify", "after cse", "after dce"):
        assert f"# symgrad: {name}" in err
    assert "v1 = mul(v0, 1.0)" in err  # the unoptimised IR, before simplification removed it
    assert str(f.ir) in err  # the last pass prints what was compiled
    assert ("def f_value_and_grad(params, inputs, out, grad):" in err) == (level == "2")


def test_debug_off_prints_nothing(monkeypatch, capsys):
    monkeypatch.delenv("SYMGRAD_DEBUG", raising=False)
    a, out = _build()
    sg.compile(out, wrt=[a], backend="python")
    assert capsys.readouterr().err == ""

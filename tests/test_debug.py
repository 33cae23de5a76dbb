"""SYMGRAD_DEBUG prints the IR after each pass (1) and the generated source too (2); `f.debug`
tells where nan and inf come from (more of it in test_robustness.py)."""

from __future__ import annotations

import math

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


def test_f_debug_calls_a_nan_from_finite_numbers_a_birth_not_an_inf_turned_nan():
    # where(a > 0, log(a), b) at a = 0: log gives -inf (discarded by where), then the gradient's
    # log'(a) = 0 / a gives nan from 0.0 and 0.0, both finite: no inf is turned into nan there
    a, b = sg.Value(0.0, label="a"), sg.Value(2.0, label="b")
    f = sg.compile(sg.where(a > 0, a.log(), b), wrt=[a, b], backend="python")
    value, grad = f()
    assert value == 2.0 and math.isnan(grad[0])
    lines = f.debug().split("value and gradient: ")[1].splitlines()
    assert lines[0].startswith("instruction 1 `v1 = log(a)` gives -inf from a = 0.0")
    assert "gives nan from" in lines[1] and "div(" in lines[1] and "a = 0.0" in lines[1]
    assert "inf into nan" not in f.debug()
    assert lines[-1].strip() == "results not finite: d/d(a) = nan"


def test_f_debug_never_calls_an_unread_inf_argument_finite():
    # x0 is a parameter the outputs do not read: its inf reaches no result, but "all values
    # finite" would be false
    x0, x1 = sg.Value(math.inf, label="x0"), sg.Value(0.0, label="x1")
    f = sg.compile([abs(x1), x1], wrt=[x0, x1], backend="python")
    report = f.debug()
    assert "all values finite" not in report
    assert "params: not finite: [0] x0 = inf" in report
    assert "non-finite arguments not read: x0 = inf" in report
    assert "every result is finite" in report

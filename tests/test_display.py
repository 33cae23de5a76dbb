"""Notebook and terminal manners: reprs, the progress of slow compiles, drawings without `dot`.

Oracles: the printed IR (`str(f.ir)`, tested elsewhere) for the reprs, the stages a compile goes
through for its progress lines, and graphviz's own rendering where `dot` is installed.
"""

from __future__ import annotations

import html
import logging
import shutil
from itertools import count

import pytest

import symgrad as sg
from symgrad import pipeline
from symgrad.engine import Value

_names = count()


def _neuron() -> tuple[list[Value], list[Value], Value]:
    x = [Value(2.0, label="x1"), Value(0.0, label="x2")]
    w = [Value(-3.0, label="w1"), Value(1.0, label="w2"), Value(6.88, label="b")]
    o = (x[0] * w[0] + x[1] * w[1] + w[2]).tanh()
    o.label = "o"
    return w, x, o


# ---- reprs ---------------------------------------------------------------------------------------


def test_repr_of_the_ir_is_the_printed_ir() -> None:
    w, x, o = _neuron()
    f = sg.compile(o, wrt=w, inputs=x, backend="python", name="neuron")
    assert repr(f.ir) == str(f.ir)
    assert repr(f.ir).startswith("neuron_value_and_grad(w1, w2, b, x1, x2):\n  ")
    assert "<pre>" in f.ir._repr_html_() and "neuron_value_and_grad" in f.ir._repr_html_()
    # an instruction shows its line, never a nested dataclass dump
    r = repr(f.ir.body[0])
    assert r.startswith("Instr(v") and "mul(" in r and "origin" not in r


def test_repr_of_a_compiled_function_is_one_summary_line() -> None:
    w, x, o = _neuron()
    f = sg.compile(o, wrt=w, inputs=x, backend="python", name="neuron")
    r = repr(f)
    assert "\n" not in r
    assert r.startswith("<Compiled neuron: 1 output (o), 3 params (w1, w2, b), 2 inputs (x1, x2),")
    assert f"{len(f.ir.body)} instructions" in r and "backend python, lowering lines" in r
    many = [Value(float(i), label=f"p{i}") for i in range(30)]
    g = sg.compile(sum(many), wrt=many, backend="python")
    assert "30 params (p0, p1, p2, p3, ...)" in repr(g) and "0 inputs" in repr(g)
    h = sg.hessian(o, wrt=w, inputs=x, backend="python")
    assert repr(h).startswith("<Hessian f: 1 output (o), 3 params")


def test_html_repr_has_the_summary_and_folds_the_ir_and_source() -> None:
    w, x, o = _neuron()
    o.label = "<o>"
    f = sg.compile(o, wrt=w, inputs=x, backend="python", name="neuron")
    page = f._repr_html_()
    assert "<table>" in page and "parameters (wrt)" in page and "3 params (w1, w2, b)" in page
    assert page.count("<details>") == 2 and "neuron_value_and_grad" in page
    assert "<o>" not in page  # user text is escaped (and sanitised in names anyway)
    assert str(f.ir) in page and "lines not shown" not in page  # small: the whole IR


def test_html_repr_of_a_big_model_shows_the_ends_of_the_ir_and_source() -> None:
    xs = [Value(0.0, label=f"x{i}") for i in range(300)]
    ws = [Value(0.5, label=f"w{i}") for i in range(300)]
    f = sg.compile(sum((x * w).tanh() for x, w in zip(xs, ws, strict=True)), wrt=ws, inputs=xs,
                   backend="python")
    ir_lines, src_lines = str(f.ir).splitlines(), f.source.splitlines()
    assert len(ir_lines) > 1000 and len(src_lines) > 1000
    page = f._repr_html_()
    assert len(page) < 60_000  # not the whole IR and source
    for lines, attr in ((ir_lines, "ir"), (src_lines, "source")):
        left = len(lines) - 400
        assert f"... {left:,} lines not shown here: print(f.{attr}) shows all" in page
        assert f"({len(lines):,} lines: the first 300 and the last 100)" in page
        shown = page.split(f"print(f.{attr})")[0].rsplit("<pre>", 1)[1]
        assert shown.startswith(html.escape("\n".join(lines[:300])))
    assert html.escape("\n".join(ir_lines[-100:])) in page


# ---- progress of slow compiles -------------------------------------------------------------------


def _slow_compile() -> sg.Compiled:
    w, x, o = _neuron()
    # numba: a JIT of a fresh module takes long enough for a timer set to 0 s to fire
    return sg.compile(o, wrt=w, inputs=x, name=f"progress{next(_names)}")


def test_a_slow_compile_says_what_it_is_doing(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(pipeline, "PROGRESS_AFTER", 0.0)
    monkeypatch.delenv("SYMGRAD_PROGRESS", raising=False)
    f = _slow_compile()
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("symgrad:")]
    assert lines, err
    assert lines[-1].startswith(f"symgrad: compiled {f.name} (")
    assert any("Numba is compiling the generated code" in ln for ln in lines), lines
    assert all(ln.startswith((f"symgrad: compiling {f.name}: ", f"symgrad: compiled {f.name}"))
               for ln in lines)


def test_a_quick_compile_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert pipeline.PROGRESS_AFTER == 2.0
    w, x, o = _neuron()
    sg.compile(o, wrt=w, inputs=x, backend="python")
    assert "symgrad:" not in capsys.readouterr().err


def test_progress_can_be_turned_off(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(pipeline, "PROGRESS_AFTER", 0.0)
    monkeypatch.setenv("SYMGRAD_PROGRESS", "0")
    _slow_compile()
    assert "symgrad:" not in capsys.readouterr().err


def test_a_failed_slow_compile_says_so(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import time

    monkeypatch.setattr(pipeline, "PROGRESS_AFTER", 0.0)
    monkeypatch.delenv("SYMGRAD_PROGRESS", raising=False)

    def slow_then_fail(*args: object, **kw: object) -> None:
        time.sleep(0.2)  # the timer shows the stage meanwhile
        raise RuntimeError("boom")

    monkeypatch.setattr(sg.compiled, "value_and_grad", slow_then_fail)
    w, x, o = _neuron()
    with pytest.raises(RuntimeError, match="boom"):
        sg.compile(o, wrt=w, inputs=x, backend="python", name="doomed")
    err = capsys.readouterr().err
    assert "symgrad: compiling doomed: differentiating" in err
    assert "symgrad: compiling doomed failed" in err


def test_every_stage_goes_to_the_logger(caplog: pytest.LogCaptureFixture) -> None:
    w, x, o = _neuron()
    with caplog.at_level(logging.DEBUG, logger="symgrad"):
        sg.compile(o, wrt=w, inputs=x, backend="python", name="logged")
    stages = [r.getMessage() for r in caplog.records if r.name == "symgrad"]
    assert stages[0] == "compiling logged: tracing the graph"
    assert any("differentiating" in s for s in stages)
    assert any("optimising" in s for s in stages)
    assert any("lowering" in s and "to lines" in s for s in stages)


# ---- drawings without dot ------------------------------------------------------------------------


def test_drawings_without_dot_show_a_message_and_the_source(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    w, x, o = _neuron()
    f = sg.compile(o, wrt=w, inputs=x, backend="python")
    monkeypatch.setenv("PATH", "")  # no `dot` anywhere
    for drawing in (sg.draw_dot(o), sg.draw_ir(f)):
        bundle = drawing._repr_mimebundle_()
        assert set(bundle) == {"text/plain", "text/html"}
        assert "`dot` program was not found" in bundle["text/plain"]
        assert "apt-get install graphviz" in bundle["text/plain"]
        assert drawing.source in bundle["text/plain"]
        assert "<details>" in bundle["text/html"]


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")
def test_drawings_with_dot_render_as_svg() -> None:
    _, _, o = _neuron()
    bundle = sg.draw_dot(o)._repr_mimebundle_()
    assert list(bundle) == ["image/svg+xml"] and "<svg" in bundle["image/svg+xml"]


def test_drawings_pickle() -> None:
    import pickle

    _, _, o = _neuron()
    d = sg.draw_dot(o)
    e = pickle.loads(pickle.dumps(d))
    assert type(e) is type(d) and e.source == d.source

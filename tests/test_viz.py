"""Drawings: the dot source is read as text; rendering is checked where graphviz's `dot` exists.

Oracles: the numbers we put in (formatted by hand), the graph's own structure (one op node per
non-leaf), dot itself parsing hostile labels, and the rendered SVG's text.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import graphviz
import pytest

from symgrad.engine import Value
from symgrad.viz import draw_dot, render

HAS_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="graphviz's `dot` program is not installed")

HOSTILE = [
    'say "hi"',
    "{braces}",
    "a|b",
    "<port>",
    "<b>html</b>",
    "back\\slash",
    "ends with backslash\\",
    "two\nlines",
    "crlf\r\nline",
    'all {of|"them"}\\<x>\n',
    "tab\tand nul\x00",
    "] ; digraph { evil",
]


def _lecture() -> tuple[Value, Value, Value, Value]:
    a, b, c = Value(2.0, label="a"), Value(-3.0, label="b"), Value(10.0, label="c")
    d = a * b + c
    d.label = "d"
    d.backward()
    return a, b, c, d


def _records(source: str) -> list[str]:
    return re.findall(r'label="(\{.*?\})" shape=record', source)


def test_source_shows_labels_data_and_grads() -> None:
    *_, d = _lecture()
    src = draw_dot(d).source
    records = _records(src)
    assert "{ a | data 2.0000 | grad -3.0000 }" in records
    assert "{ b | data -3.0000 | grad 2.0000 }" in records
    assert "{ c | data 10.0000 | grad 1.0000 }" in records
    assert "{ d | data 4.0000 | grad 1.0000 }" in records
    assert "{ data -6.0000 | grad 1.0000 }" in records  # a*b has no label: no label cell
    assert "rankdir=LR" in src


def test_one_op_node_per_op_with_operand_edges() -> None:
    x = Value(3.0, label="x")
    y = (x * x + x).tanh()
    src = draw_dot(y).source
    # nodes: x, x*x, x*x + x, tanh: three ops, four records
    assert len(_records(src)) == 4
    ops = re.findall(r'^\s*(op\d+) \[label="?([^"\]]*)"?\]$', src, flags=re.M)
    assert sorted(label for _, label in ops) == ["*", "+", "tanh"]
    for name, _ in ops:
        assert len(re.findall(rf"^\s*{name} -> v\d+$", src, flags=re.M)) == 1  # op -> its value
    mul = next(name for name, label in ops if label == "*")
    # x * x: both operands are drawn, in order
    assert len(re.findall(rf"^\s*v0 -> {mul}$", src, flags=re.M)) == 2


def test_source_is_deterministic() -> None:
    def build() -> Value:
        a, b = Value(1.5, label="a"), Value(-0.5, label="b")
        h = a * b
        return (h + h * a).tanh() + b.relu()

    one, two = build(), build()
    assert draw_dot(one).source == draw_dot(two).source
    assert "0x" not in draw_dot(one).source  # no id() in node names


def test_several_roots_share_nodes() -> None:
    x = Value(1.0, label="x")
    y1, y2 = x * 2.0, x + 1.0
    src = draw_dot([y1, y2], rankdir="TB").source
    assert src.count("{ x | data 1.0000") == 1
    assert "rankdir=TB" in src


def test_bad_root_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="Value"):
        draw_dot(3.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"root\[1\]"):
        draw_dot([Value(1.0), "x"])  # type: ignore[list-item]


@pytest.mark.parametrize("label", HOSTILE)
def test_hostile_labels_are_escaped(label: str) -> None:
    v = (Value(1.0, label=label) * 2.0).tanh()
    v.label = label
    src = draw_dot(v).source
    # every label line of the source is one complete quoted string: no raw newline or quote
    # leaks out of it, and the record's specials are backslash-escaped
    for line in src.splitlines():
        if "label=" in line:
            quoted = r'"(?:[^"\\\n]|\\.)*"'
            assert re.fullmatch(rf"\s*\w+ \[label=(?:{quoted}|\w+)( shape=record)?\]", line), line
    for ch in "{}|<>":
        if ch in label:
            assert "\\" + ch in src


@needs_dot
@pytest.mark.parametrize("label", HOSTILE)
def test_hostile_labels_render_verbatim(label: str, tmp_path: Path) -> None:
    v = (Value(1.0, label=label) * 2.0).tanh()
    v.label = label
    dot = draw_dot(v)
    check = subprocess.run(
        ["dot", "-Tcanon"], input=dot.source, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0 and check.stderr == "", check.stderr  # no syntax warnings
    out = render(dot, tmp_path / "hostile", format="svg")
    svg = out.read_text(encoding="utf-8")
    # the label comes back as text, line by line (dot splits lines into <text> elements)
    texts = [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]
    visible = label.replace("\r\n", "\n").replace("\t", "\\x09").replace("\x00", "\\x00")
    for line in visible.split("\n"):
        if line.strip():
            assert sum(line.strip() in t for t in texts) == 2, (line, texts)  # leaf and output


@needs_dot
def test_source_is_valid_dot() -> None:
    *_, d = _lecture()
    result = subprocess.run(
        ["dot", "-Tcanon"], input=draw_dot(d).source, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@needs_dot
def test_render_writes_svg(tmp_path: Path) -> None:
    *_, d = _lecture()
    out = render(draw_dot(d), tmp_path / "d")
    assert out == tmp_path / "d.svg"
    svg = html.unescape(out.read_text(encoding="utf-8"))  # dot writes "-" as &#45;
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "data 4.0000" in svg and "grad -3.0000" in svg
    # a path already ending in the format is kept as is
    assert render(draw_dot(d), tmp_path / "e.svg") == tmp_path / "e.svg"


def test_render_falls_back_to_dot_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)

    def no_dot(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("render must not call dot when it is missing")

    monkeypatch.setattr(graphviz.Digraph, "pipe", no_dot)
    *_, d = _lecture()
    dot = draw_dot(d)
    with pytest.warns(RuntimeWarning, match=r"`dot` program was not found") as record:
        out = render(dot, tmp_path / "drawings" / "d", format="png")
    assert out == tmp_path / "drawings" / "d.dot"
    assert out.read_text(encoding="utf-8") == dot.source
    message = str(record[0].message)
    assert "graphviz" in message and str(out) in message


def test_render_falls_back_when_dot_cannot_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: "/nonexistent/dot")

    def broken(*args: object, **kwargs: object) -> bytes:
        raise graphviz.ExecutableNotFound(("dot",))

    monkeypatch.setattr(graphviz.Digraph, "pipe", broken)
    *_, d = _lecture()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = render(draw_dot(d), tmp_path / "d.svg")
    assert out == tmp_path / "d.dot" and out.exists()
    assert any(issubclass(w.category, RuntimeWarning) for w in caught)


def test_draw_ir_mirrors_the_printed_ir() -> None:
    import symgrad as sg

    x, w = sg.Value(2.0, label="x"), sg.Value(-3.0, label='w"}')
    o = (x * w + 1.0).tanh()
    o.label = "o"
    f = sg.compile(o, wrt=[w], inputs=[x], backend="python")
    dot = sg.draw_ir(f)
    src = dot.source
    text = str(f.ir)
    # every instruction of the printed IR is a node "name = op", derivative lines shaded
    for ins in f.ir.body:
        line = next(ln for ln in text.splitlines() if f"= {ins.op}(" in ln)
        name = line.split("=")[0].strip()
        assert f"{name} = {ins.op}" in src
    assert src.count("fillcolor=lightgrey") == sum(i.origin is not None for i in f.ir.body)
    assert "return 0" in src and "return 1" in src
    assert 'w"}' not in src  # labels reach the drawing only as sanitised names
    assert sg.draw_ir(f.ir).source == src
    with pytest.raises(TypeError, match="draw_ir"):
        sg.draw_ir("not a function")
    if shutil.which("dot"):
        assert dot.pipe(format="svg").startswith(b"<?xml")

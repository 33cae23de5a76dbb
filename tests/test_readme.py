"""README stays true: its Python blocks run, its claims hold, its Quick start is two lines."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_quick_start_holds_exactly_two_commands():
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    lines = [ln for ln in block.splitlines() if ln.strip()]
    assert lines == [
        "pip install -e '.[dev]' && python examples/lecture.py",
        "pip install -e '.[dev]' && pytest",
    ]


def test_python_blocks_run_and_print_what_they_say(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the drawing block writes d.svg, training saves a module
    monkeypatch.syspath_prepend(str(tmp_path))  # as a script's directory is: it imports it
    ns: dict = {}
    try:
        for block in _blocks("python"):
            if block.lstrip().startswith("def "):
                continue  # generated source shown for reading, checked below
            exec(compile(block, "<README>", "exec"), ns)
    finally:
        sys.modules.pop("loss_grad", None)
    assert ns["value"] == pytest.approx(0.7071067811865477, rel=1e-15)
    np.testing.assert_allclose(ns["grad"], [1.0, 0.0, 0.5], atol=1e-15)
    assert ns["hess"].shape == (3, 3)
    assert ns["tangent_out"] == pytest.approx(1.0, rel=1e-12)
    out = capsys.readouterr().out
    assert "tanh(b + w1*x1 + w2*x2)" in out
    # training: the loss falls, the trained values are in the model
    assert ns["losses"][-1] < 0.05 * ns["losses"][0]
    assert [p.data for p in ns["model"].parameters()] == ns["theta"].tolist()
    # saved and loaded: the pickle and the standalone module give the compiled loss's bits
    want = ns["loss"].batch_forward(ns["theta"], ns["data"])
    assert np.array_equal(ns["row_losses"], want) and "True\n" in out
    assert np.array_equal(ns["loaded"].current_params(), ns["theta"])
    assert "loss_grad.py" in str(ns["loss_grad"].__file__)
    # dask: the blocks' values are f.batch's bits, their mean gradient f.batch's to rounding;
    # fit streamed the blocks and trained on from theta
    local_values, local_grad = ns["loss"].batch(ns["theta"], ns["data"], reduce="mean")
    assert np.array_equal(ns["d_values"], local_values)
    np.testing.assert_allclose(ns["d_grad"], local_grad, rtol=1e-12, atol=1e-15)
    assert ns["d_losses"].shape == (2,) and not np.array_equal(ns["d_theta"], ns["theta"])
    # sympy in: sympy's own value at the point
    sp = ns["sp"]
    point = {ns["k"]: 0.5, ns["c"]: 0.1, ns["t"]: 1.0, ns["target"]: 0.3}
    assert ns["g_value"] == pytest.approx(float((ns["residual"] ** 2).subs(point)), rel=1e-14)
    assert ns["g_grad"][0] == pytest.approx(
        float(sp.diff(ns["residual"] ** 2, ns["k"]).subs(point)), rel=1e-14)
    # limitations: the frozen branch and the safe where print what the comments say
    assert "-15.0 5.0\n" in out and "(0.0, array([0.]))\n" in out


def test_shown_summary_line_is_what_repr_prints():
    import symgrad as sg
    from tests.cases import lecture_neuron

    o, wrt, inputs = lecture_neuron()
    f = sg.compile(o, wrt=wrt, inputs=inputs, name="neuron")
    shown = re.search(r"\n(<Compiled neuron: .*?)\n", README).group(1)
    assert shown.rsplit("compiled in", 1)[0] == repr(f).rsplit("compiled in", 1)[0]


def test_shown_ir_and_source_are_what_the_code_prints():
    import symgrad as sg
    from tests.cases import lecture_neuron

    o, wrt, inputs = lecture_neuron()
    f = sg.compile(o, wrt=wrt, inputs=inputs, name="neuron", backend="python")
    assert "```\n" + str(f.ir) + "\n```" in README
    kernel = f.source.split("\n\n\n")[1] + "\n"
    assert "```python\n" + kernel + "```" in README


def test_passes_list_the_rules_table():
    from symgrad.passes import NOT_SIMPLIFIED, SIMPLIFY_RULES

    paragraph = README.split("**Passes.**", 1)[1].split("\n\n", 1)[0].replace("\n", " ")
    used, left_out = paragraph.split("NOT_SIMPLIFIED", 1)
    assert re.findall(r"`([^`]* -> [^`]*)`", used) == [str(r) for r in SIMPLIFY_RULES]
    assert re.findall(r"`([^`]* -> [^`]*)`", left_out) == [str(r) for r in NOT_SIMPLIFIED]


def test_testing_your_model_runs_and_shows_the_failure_check_gives():
    import symgrad as sg

    section = README.split("## Testing your model", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    ns: dict = {}
    exec(compile(code, "<README: Testing your model>", "exec"), ns)
    ns["test_neuron"]()  # passes as shown
    o, wrt, inputs = ns["make_neuron"]("sigmoid")
    x1, x2, w1, w2, b = ns["sp"].symbols("x1 x2 w1 w2 b")
    with pytest.raises(sg.ModelMismatch) as info:
        sg.check(o, wrt=wrt, inputs=inputs, expected=ns["sp"].tanh(x1 * w1 + x2 * w2 + b))
    (shown,) = re.findall(r"```text\n(.*?)```", section, flags=re.S)
    # pytest's E lines: the exception's name, then its message line by line
    lines = [line[len("E       "):] for line in shown.splitlines()]
    message = "\n".join([lines[0].split(": ", 1)[1], *lines[1:]])
    assert lines[0].startswith("symgrad.ModelMismatch: ")
    assert str(info.value) == message


def test_check_times_table_lists_the_models_the_benchmark_measures():
    section = README.split("## Testing your model", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| MLP(")]
    assert {row.split(" | ")[0][2:] for row in rows} >= {
        "MLP(2,[8,8,1])", "MLP(16,[64,64,1])"}


def _module_rows() -> list[list[str]]:
    """The Modules table's rows in order, each the list of module names it names."""
    section = README.split("## Modules", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cell = line.split("|")[1] if line.startswith("| `symgrad.") else ""
        names = re.findall(r"`(?:symgrad\.)?(\w+)`", cell)
        if names:
            rows.append(names)
    return rows


def _imported_modules(path: Path, package: str) -> set[str]:
    """The symgrad modules a file imports at run time, wherever the import statement is (lazy
    imports too; ``if TYPE_CHECKING:`` blocks are not run, so they do not count)."""
    import ast

    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and ast.unparse(node.test) == "TYPE_CHECKING" for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and not (node.module or "").startswith("symgrad"):
                continue
            if node.level == 1 and package == "executors":
                continue  # within the executors package
            base = (node.module or "").removeprefix("symgrad").lstrip(".")
            found |= {base.split(".")[0]} if base else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("symgrad.")}
    return found


def test_modules_table_lists_every_module_and_imports_point_up_it():
    rank = {name: i for i, row in enumerate(_module_rows()) for name in row}
    # the README's one stated exception: dask support, imported when a dask array arrives
    allowed_down = {("compiled", "distributed"), ("training", "distributed")}
    pkg = ROOT / "symgrad"
    down = []
    for path in sorted(pkg.rglob("*.py")):
        module = "executors" if path.parent.name == "executors" else path.stem
        if module in ("__init__", "_version", "_libm_ports"):
            continue  # the package, its version and vecmath's ports (named in vecmath's row)
        assert module in rank, f"{module} is missing from the README's Modules table"
        for dep in _imported_modules(path, module) & rank.keys():
            if rank[dep] > rank[module] and (module, dep) not in allowed_down:
                down.append(f"{module} imports {dep}")
    assert not down, down

"""`sg.compile` and the `Compiled` object: the notebook's numbers, batches, training, validation,
the generated source, repr and stats.

Oracles: the numbers the notebook states, a Python loop of single calls (for the batch forms),
the interpreted engine's training loop (for compiled training), and hand-written expectations
for the error messages and the source.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import linecache
import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import symgrad as sg
from symgrad.ir import names
from symgrad.nn import MLP

BACKENDS = ["python", "numba", "lines", "tape"]


def neuron(*, all_wrt: bool = False) -> tuple[sg.Value, dict[str, sg.Value]]:
    """The notebook's neuron o = tanh(x1*w1 + x2*w2 + b) and its leaves by label."""
    v = {
        "x1": sg.Value(2.0, label="x1"), "x2": sg.Value(0.0, label="x2"),
        "w1": sg.Value(-3.0, label="w1"), "w2": sg.Value(1.0, label="w2"),
        "b": sg.Value(6.8813735870195432, label="b"),
    }
    n = v["x1"] * v["w1"] + v["x2"] * v["w2"] + v["b"]
    n.label = "n"
    o = n.tanh()
    o.label = "o"
    return o, v


# ---- the notebook's numbers ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_notebook_expression(backend: str) -> None:
    a, b, c = sg.Value(2.0, label="a"), sg.Value(-3.0, label="b"), sg.Value(10.0, label="c")
    d = a * b + c
    f = sg.compile(d, wrt=[a, b, c], backend=backend, name="nb")
    value, grad = f()
    assert value == 4.0
    assert grad.tolist() == [-3.0, 2.0, 1.0]  # dd/da = b, dd/db = a, dd/dc = 1, exactly


@pytest.mark.parametrize("backend", BACKENDS)
def test_notebook_neuron(backend: str) -> None:
    o, v = neuron()
    wrt, inputs = [v["w1"], v["w2"], v["b"]], [v["x1"], v["x2"]]
    f = sg.compile(o, wrt=wrt, inputs=inputs, backend=backend, name="nb")
    value, grad = f()
    # b makes n = atanh(1/sqrt(2)), so o = 0.7071... and do/dn = 1 - o^2 = 0.5
    assert value == pytest.approx(1 / math.sqrt(2), rel=1e-15)
    assert grad == pytest.approx([1.0, 0.0, 0.5], abs=1e-12)  # x1/2, x2/2, 1/2
    # the inputs as the parameters: do/dx1 = w1/2, do/dx2 = w2/2
    g = sg.compile(o, wrt=inputs, inputs=wrt, backend=backend, name="nb")
    value, grad = g()
    assert value == pytest.approx(1 / math.sqrt(2), rel=1e-15)
    assert grad == pytest.approx([-1.5, 0.5], abs=1e-12)
    # and everything at once, in the notebook's order
    h = sg.compile(o, wrt=[v[k] for k in ("x1", "x2", "w1", "w2", "b")], backend=backend, name="nb")
    assert h()[1] == pytest.approx([-1.5, 0.5, 1.0, 0.0, 0.5], abs=1e-12)


# ---- batches equal a loop of calls ---------------------------------------------------------------


def _model() -> tuple[list[sg.Value], list[sg.Value], list[sg.Value]]:
    """Three parameters, two inputs, two outputs over a mix of ops (relu, exp, tanh, div)."""
    a, b, c = (sg.Value(x, label=k) for x, k in ((0.7, "a"), (-0.4, "b"), (1.3, "c")))
    x, y = sg.Value(0.5, label="x"), sg.Value(-1.0, label="y")
    h = (a * x + b * y).tanh()
    o1 = (h * c + (a * y).relu()) ** 2 / (1.0 + (b * x).exp())
    o2 = (c * h - y).sigmoid() * a
    return [a, b, c], [x, y], [o1, o2]


@pytest.fixture(scope="module", params=BACKENDS)
def compiled_pair(request: pytest.FixtureRequest) -> tuple[sg.Compiled, sg.Compiled]:
    """(one-output, two-output) compiled functions of `_model`, per backend, shared."""
    wrt, inputs, outs = _model()
    one = sg.compile(outs[0], wrt=wrt, inputs=inputs, backend=request.param, name="pair")
    two = sg.compile(outs, wrt=wrt, inputs=inputs, backend=request.param, name="pair")
    return one, two


P = np.array([0.3, -1.1, 0.8])
X = np.random.default_rng(0).normal(size=(9, 2)) * 2  # relu on both sides of its kink


def _loop(f: sg.Compiled, params: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = [f(params, row) for row in X]
    return np.array([v for v, _ in rows]), np.array([g for _, g in rows])


@pytest.mark.parametrize("reduce", ["sum", "mean", "none"])
@pytest.mark.parametrize("which", [0, 1], ids=["one-output", "two-outputs"])
def test_batch_equals_a_loop_of_calls(
    compiled_pair: tuple[sg.Compiled, sg.Compiled], which: int, reduce: str
) -> None:
    f = compiled_pair[which]
    values, grads = _loop(f, P, X)
    bv, bg = f.batch(P, X, reduce=reduce)
    assert bv.shape == values.shape and np.array_equal(bv, values)  # the same kernel, row by row
    if reduce == "none":
        assert bg.shape == grads.shape and np.array_equal(bg, grads)
    else:
        want = grads.sum(axis=0) / (len(X) if reduce == "mean" else 1)
        assert bg.shape == want.shape
        np.testing.assert_allclose(bg, want, rtol=1e-12, atol=1e-15)  # summed in another order


@pytest.mark.slow
@pytest.mark.parametrize("reduce", ["sum", "none"])
def test_large_batch_runs_in_parallel_and_equals_a_loop(reduce: str) -> None:
    # enough rows for the multi-threaded loops (the line executor's THREAD_WORK)
    wrt, inputs, outs = _model()
    f = sg.compile(outs[0], wrt=wrt, inputs=inputs, name="big_batch")
    big = np.random.default_rng(1).normal(size=(2500, 2))
    values, grads = _loop(f, P, big)
    bv, bg = f.batch(P, big, reduce=reduce)
    np.testing.assert_array_equal(bv, values)
    if reduce == "none":
        np.testing.assert_array_equal(bg, grads)
    else:
        np.testing.assert_allclose(bg, grads.sum(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(f.batch_forward(P, big), values)


@pytest.mark.parametrize("which", [0, 1], ids=["one-output", "two-outputs"])
def test_forward_and_batch_forward_equal_the_value(
    compiled_pair: tuple[sg.Compiled, sg.Compiled], which: int
) -> None:
    f = compiled_pair[which]
    values, _ = _loop(f, P, X)
    fwd = np.array([f.forward(P, row) for row in X])
    np.testing.assert_array_equal(fwd, values)
    np.testing.assert_array_equal(f.batch_forward(P, X), values)
    if which == 0:
        assert isinstance(f.forward(P, X[0]), float)
    else:
        assert f.forward(P, X[0]).shape == (2,)


def test_backends_agree(compiled_pair: tuple[sg.Compiled, sg.Compiled]) -> None:
    wrt, inputs, outs = _model()
    ref = sg.compile(outs, wrt=wrt, inputs=inputs, backend="python")
    rv, rg = ref.batch(P, X, reduce="none")
    v, g = compiled_pair[1].batch(P, X, reduce="none")
    np.testing.assert_allclose(v, rv, rtol=1e-12)
    np.testing.assert_allclose(g, rg, rtol=1e-12, atol=1e-300)


def test_defaults_are_the_leaves_current_data() -> None:
    wrt, inputs, outs = _model()
    f = sg.compile(outs[0], wrt=wrt, inputs=inputs, backend="python")
    here = f([v.data for v in wrt], [v.data for v in inputs])
    assert f()[0] == here[0] and np.array_equal(f()[1], here[1])
    assert f.forward() == here[0]
    # later changes to .data are seen: the defaults are read at call time
    wrt[0].data, inputs[1].data = 2.0, 0.25
    moved = f([2.0, wrt[1].data, wrt[2].data], [inputs[0].data, 0.25])
    assert f()[0] == moved[0] and np.array_equal(f()[1], moved[1])
    assert f()[0] != here[0]
    np.testing.assert_array_equal(f.batch(None, [[inputs[0].data, 0.25]])[1], moved[1])


# ---- compiled training equals the interpreted loop -----------------------------------------------

XS = [[2.0, 3.0, -1.0], [3.0, -1.0, 0.5], [0.5, 1.0, 1.0], [1.0, 1.0, -1.0]]
YS = [1.0, -1.0, -1.0, 1.0]


@pytest.fixture
def seeded() -> Iterator[None]:
    state = random.getstate()
    random.seed(1337)
    yield
    random.setstate(state)


def _interpreted_training(steps: int) -> tuple[list[float], float]:
    random.seed(1337)
    model = MLP(3, [4, 4, 1])
    for _ in range(steps):
        ypred = [model(x) for x in XS]
        loss = sum((yout - ygt) ** 2 for ygt, yout in zip(YS, ypred, strict=True))
        model.zero_grad()
        loss.backward()
        for p in model.parameters():
            p.data -= 0.1 * p.grad
    return [p.data for p in model.parameters()], loss.data


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_training_equals_interpreted_training(seeded: None, backend: str) -> None:
    random.seed(1337)
    model = MLP(3, [4, 4, 1])
    x = [sg.Value(0.0, label=f"x{i}") for i in range(3)]
    y = sg.Value(0.0, label="y")
    loss = (model(x) - y) ** 2  # one example's loss: x and y are inputs
    f = sg.compile(loss, wrt=model.parameters(), inputs=[*x, y], backend=backend, name="train")
    data = np.array([[*xi, yi] for xi, yi in zip(XS, YS, strict=True)])
    params = f.current_params()
    assert len(params) == 41
    for _ in range(100):
        values, grad = f.batch(params, data, reduce="sum")
        params -= 0.1 * grad
    want, last_loss = _interpreted_training(100)
    np.testing.assert_allclose(params, want, rtol=1e-8, atol=1e-8)
    # the last step's losses were computed at the same parameters
    assert values.sum() == pytest.approx(last_loss, rel=1e-8)
    assert last_loss < 0.05  # it did learn


# ---- validation: clear errors naming the argument ------------------------------------------------


BAD_CALLS: list[tuple[str, Callable[[sg.Compiled], Any], type[Exception], str]] = [
    ("params too short", lambda f: f([1.0, 2.0], [0.0, 0.0]), ValueError, r"params.*3"),
    ("params too long", lambda f: f([1.0] * 4, [0.0, 0.0]), ValueError, r"params.*3"),
    ("params 2-D", lambda f: f([[1.0, 2.0, 3.0]], [0.0, 0.0]), ValueError, r"params.*1-D"),
    ("params strings", lambda f: f(["a", "b", "c"], [0.0, 0.0]), TypeError, r"params"),
    ("params one string", lambda f: f("abc", [0.0, 0.0]), TypeError, r"params"),
    ("params mixed", lambda f: f([1.0, "x", 2.0], [0.0, 0.0]), TypeError, r"params"),
    ("params None inside", lambda f: f([1.0, None, 2.0], [0.0, 0.0]), TypeError, r"params"),
    ("params Values", lambda f: f([sg.Value(1.0)] * 3, [0.0, 0.0]), TypeError, r"params"),
    ("inputs too short", lambda f: f(P, [0.0]), ValueError, r"inputs.*2"),
    ("inputs 2-D", lambda f: f(P, [[0.0, 0.0]]), ValueError, r"inputs"),
    ("forward params", lambda f: f.forward([1.0], [0.0, 0.0]), ValueError, r"params"),
    ("X 1-D", lambda f: f.batch(P, [0.0, 0.0]), ValueError, r"X.*2-D"),
    ("X 3-D", lambda f: f.batch(P, np.zeros((2, 2, 2))), ValueError, r"X.*2-D"),
    ("X wrong width", lambda f: f.batch(P, np.zeros((4, 3))), ValueError, r"X.*column"),
    ("X empty", lambda f: f.batch(P, np.zeros((0, 2))), ValueError, r"X.*empty"),
    ("X strings", lambda f: f.batch(P, [["a", "b"]]), TypeError, r"X"),
    ("batch params", lambda f: f.batch([1.0], X), ValueError, r"params"),
    ("bad reduce", lambda f: f.batch(P, X, reduce="max"), ValueError, r"reduce.*'max'"),
    ("reduce None", lambda f: f.batch(P, X, reduce=None), ValueError, r"reduce"),
    ("batch_forward X", lambda f: f.batch_forward(P, np.zeros(3)), ValueError, r"X"),
    ("params bool array", lambda f: f(np.ones(3, bool), [0.0, 0.0]), TypeError,
     r"params.*booleans"),
    ("params bools in a list", lambda f: f([1.0, True, 2.0], [0.0, 0.0]), TypeError,
     r"params.*booleans"),
    ("inputs bool array", lambda f: f(P, np.zeros(2, bool)), TypeError, r"inputs.*booleans"),
    ("X bool array", lambda f: f.batch(P, np.zeros((3, 2), bool)), TypeError, r"X.*booleans"),
    ("X bool in a row", lambda f: f.batch_forward(P, [[0.5, False]]), TypeError, r"X.*booleans"),
    ("params dict", lambda f: f({"a": 1.0, "b": 2.0, "c": 3.0}, [0.0, 0.0]), TypeError,
     r"params.*dict"),
    ("inputs set", lambda f: f(P, {0.5, 1.5}), TypeError, r"inputs.*set.*no order"),
]


@pytest.mark.parametrize(("case", "call", "exc", "match"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_arguments_name_the_argument(
    compiled_pair: tuple[sg.Compiled, sg.Compiled], case: str,
    call: Callable[[sg.Compiled], Any], exc: type[Exception], match: str,
) -> None:
    with pytest.raises(exc, match=match):
        call(compiled_pair[0])


def _leaves() -> tuple[sg.Value, sg.Value, sg.Value]:
    a, b = sg.Value(1.0, label="a"), sg.Value(2.0, label="b")
    return a, b, (a * b).tanh()


BAD_COMPILES: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    ("bad backend", lambda: sg.compile(_leaves()[2], backend="cuda"),
     ValueError, r"backend.*'cuda'"),
    ("leaf twice in wrt", lambda: (lambda a, b, o: sg.compile(o, wrt=[a, b, a]))(*_leaves()),
     ValueError, r"wrt\[2\].*'a'.*already.*wrt\[0\]"),
    ("leaf in wrt and inputs",
     lambda: (lambda a, b, o: sg.compile(o, wrt=[a], inputs=[b, a]))(*_leaves()),
     ValueError, r"inputs\[1\].*'a'.*wrt\[0\]"),
    ("leaf twice in inputs",
     lambda: (lambda a, b, o: sg.compile(o, wrt=[], inputs=[b, b]))(*_leaves()),
     ValueError, r"inputs\[1\].*'b'"),
    ("non-leaf in wrt", lambda: (lambda a, b, o: sg.compile(o, wrt=[a, o]))(*_leaves()),
     ValueError, r"wrt\[1\].*not a leaf"),
    ("non-leaf in inputs",
     lambda: (lambda a, b, o: sg.compile(o, wrt=[a], inputs=[a * b]))(*_leaves()),
     ValueError, r"inputs\[0\].*not a leaf"),
    ("float in wrt", lambda: (lambda a, b, o: sg.compile(o, wrt=[a, 2.0]))(*_leaves()),
     TypeError, r"wrt\[1\]"),
    ("string as wrt", lambda: sg.compile(_leaves()[2], wrt="a"), TypeError, r"wrt"),
    ("dict as wrt", lambda: (lambda a, b, o: sg.compile(o, wrt={"a": a, "b": b}))(*_leaves()),
     TypeError, r"wrt.*dict.*values"),
    ("dict as inputs",
     lambda: (lambda a, b, o: sg.compile(o, wrt=[a], inputs={"b": b}))(*_leaves()),
     TypeError, r"inputs.*dict"),
    ("set as wrt", lambda: (lambda a, b, o: sg.compile(o, wrt={a, b}))(*_leaves()),
     TypeError, r"wrt.*set.*no order"),
    ("dict as check's wrt", lambda: (lambda a, b, o: sg.check(o, wrt={"a": a}))(*_leaves()),
     TypeError, r"wrt.*dict"),
    ("output not a Value", lambda: sg.compile(3.0), TypeError, r"outputs"),
    ("outputs with a float", lambda: sg.compile([_leaves()[2], 1.0]), TypeError, r"outputs\[1\]"),
]


@pytest.mark.parametrize(
    ("case", "make", "exc", "match"), BAD_COMPILES, ids=[c[0] for c in BAD_COMPILES]
)
def test_bad_compile_arguments_name_the_argument(
    case: str, make: Callable[[], Any], exc: type[Exception], match: str
) -> None:
    with pytest.raises(exc, match=match):
        make()


# ---- the generated source ------------------------------------------------------------------------


def _kernel_defs(source: str, func_names: set[str]) -> ast.FunctionDef:
    """The generated function that assigns the IR's instruction names."""
    tree = ast.parse(source)
    best, overlap = None, -1
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            assigned = {t.id for s in node.body if isinstance(s, ast.Assign)
                        for t in s.targets if isinstance(t, ast.Name)}
            if len(assigned & func_names) > overlap:
                best, overlap = node, len(assigned & func_names)
    assert best is not None
    return best


def test_source_has_one_line_per_instruction() -> None:
    o, v = neuron()
    f = sg.compile(o, wrt=[v["w1"], v["w2"], v["b"]], inputs=[v["x1"], v["x2"]], backend="python")
    nm = names(f.ir)
    inst_names = {nm[ins.out] for ins in f.ir.body}
    kernel = _kernel_defs(f.source, inst_names)
    assigns = [
        s for s in kernel.body if isinstance(s, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id in inst_names for t in s.targets)
    ]
    assert len(assigns) == len(f.ir.body)
    assert sorted(t.id for s in assigns for t in s.targets) == sorted(inst_names)
    assert all(s.lineno == s.end_lineno for s in assigns)
    # in the IR's order
    order = [s.targets[0].id for s in assigns]  # type: ignore[attr-defined]
    assert order == [nm[ins.out] for ins in f.ir.body]


HOSTILE = [
    'x"); import builtins; builtins.SYMGRAD_PWNED = 1 #\n',
    "\nraise SystemExit('pwned')\n#",
    "y'''\nbuiltins.SYMGRAD_PWNED = 2\n'''",
    "__import__('builtins').SYMGRAD_PWNED",
]


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_hostile_labels_never_reach_the_source_as_code(backend: str) -> None:
    leaves = [sg.Value(0.5 + i, label=lab) for i, lab in enumerate(HOSTILE)]
    out = leaves[0] * leaves[1] + leaves[2].tanh() - leaves[3]
    out.label = HOSTILE[1]
    f = sg.compile(out, wrt=leaves[:2], inputs=leaves[2:], backend=backend, name=HOSTILE[0])
    value, grad = f()
    f.forward()
    f.batch(None, [[1.0, 2.0], [3.0, 4.0]])
    f.batch(None, [[1.0, 2.0]], reduce="none")
    f.batch_forward(None, [[1.0, 2.0]])
    assert not hasattr(builtins, "SYMGRAD_PWNED")
    assert value == pytest.approx(out.data) and grad.tolist() == pytest.approx([1.5, 0.5])
    src = f.source
    tree = ast.parse(src)
    for node in ast.walk(tree):
        assert not isinstance(node, (ast.Raise, ast.ImportFrom)), ast.dump(node)
        if isinstance(node, ast.Import):
            assert [a.name for a in node.names] in (["numpy"], ["math"]), ast.dump(node)
        if isinstance(node, ast.Constant):
            assert not isinstance(node.value, str), node.value  # no string literals at all
        if isinstance(node, ast.Name):
            assert node.id != "builtins" and node.id != "__import__"
    assert "'" not in src and '"' not in src
    # labels survive only as identifiers, and comments carry only IR text (identifiers, calls)
    for line in src.splitlines():
        comment = line.split("#", 1)[1] if "#" in line else ""
        assert not any(c in comment for c in ";'\"\\`"), line


def _generated_functions(f: sg.Compiled) -> list[Callable[..., Any]]:
    """Plain-Python functions the compiled object holds whose code comes from generated source."""
    found: list[Callable[..., Any]] = []
    seen: set[int] = set()
    stack: list[Any] = [f]
    depth = {id(f): 0}
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        code = getattr(obj, "__code__", None)
        if code is not None and code.co_filename.startswith("<symgrad"):
            found.append(obj)
            continue
        if depth[id(obj)] >= 4:
            continue
        children: list[Any] = []
        if isinstance(obj, dict):
            children = list(obj.values())
        elif isinstance(obj, (list, tuple)):
            children = list(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type) and not inspect.ismodule(obj):
            children = list(vars(obj).values())
        for c in children:
            depth.setdefault(id(c), depth[id(obj)] + 1)
            stack.append(c)
    return found


def test_linecache_and_inspect_show_the_generated_source() -> None:
    o, v = neuron()
    f = sg.compile(o, wrt=[v["w1"], v["w2"], v["b"]], inputs=[v["x1"], v["x2"]], backend="python")
    f()
    fns = _generated_functions(f)
    assert fns, "no generated function found on the Compiled object"
    for fn in fns:
        filename = fn.__code__.co_filename
        lines = linecache.getlines(filename)
        assert lines, filename
        assert "".join(lines) == f.source
        src = inspect.getsource(fn)
        assert src.startswith(f"def {fn.__name__}(")


def test_generated_source_runs_as_plain_python() -> None:
    # what the python backend runs is f.source itself: exec it and call the kernel by hand
    o, v = neuron()
    f = sg.compile(o, wrt=[v["w1"], v["w2"], v["b"]], inputs=[v["x1"], v["x2"]], backend="python")
    ns: dict[str, Any] = {"prange": range}
    exec(compile(f.source, "<test>", "exec"), ns)
    # the backend binds np to the op table's rules after the import (numpy's tanh may differ
    # from libm's in the last bit); with real numpy the numbers agree to an ulp
    real = ns[f"{f.name}_value_and_grad"]
    out, grad = np.zeros(1), np.zeros((1, 3))
    real(f.current_params(), f.current_inputs(), out, grad)
    np.testing.assert_allclose(out, f()[0], rtol=4e-16)
    ns["np"] = sg.jit.IEEE_NUMPY
    kernel = ns[f"{f.name}_value_and_grad"]
    out, grad = np.zeros(1), np.zeros((1, 3))
    kernel(f.current_params(), f.current_inputs(), out, grad)
    value, want = f()
    assert out[0] == value and np.array_equal(grad[0], want)


# ---- repr and stats ------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", [sg.compile, sg.jvp, sg.hvp, sg.hessian, sg.check])
def test_the_retired_vector_backend_says_why(entry) -> None:
    a = sg.Value(0.5, label="a")
    with pytest.raises(ValueError, match=r"retired.*exact and faster"):
        entry(a * a, wrt=[a], backend="vector")


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_repr_mentions_the_counts(backend: str) -> None:
    wrt, inputs, outs = _model()
    f = sg.compile(outs, wrt=wrt, inputs=inputs, backend=backend, name="for_repr")
    r = repr(f)
    for part in ("3 param", "2 input", "2 output", f"{len(f.ir.body)} instruction", backend):
        assert part in r, (part, r)
    assert "\n" not in r


def test_stats_count_nodes_and_time_every_stage() -> None:
    wrt, inputs, outs = _model()
    f = sg.compile(outs[0], wrt=wrt, inputs=inputs, backend="python")
    nodes, seconds = f.stats["nodes"], f.stats["seconds"]
    # h: mul, mul, add, tanh; o1: mul, mul, relu, add, pow, mul, exp, add, div
    assert nodes["trace"] == len(f.traced_ir.body) == 13
    assert nodes["autodiff"] > nodes["trace"]
    for p in ("fold", "simplify", "cse", "dce"):
        assert 0 < nodes[p] <= nodes["autodiff"], p
    assert nodes["final"] == len(f.ir.body) <= nodes["dce"]
    for stage in ("trace", "autodiff", "passes", "codegen", "jit", "total"):
        assert isinstance(seconds[stage], float) and seconds[stage] >= 0.0, stage
    assert seconds["total"] >= seconds["trace"] + seconds["autodiff"] + seconds["passes"]
    g = sg.compile(outs[0], wrt=wrt, inputs=inputs, backend="python", optimize=False)
    assert g.stats["nodes"]["final"] == g.stats["nodes"]["autodiff"] == len(g.ir.body)
    assert "fold" not in g.stats["nodes"]


def test_ir_attributes() -> None:
    o, v = neuron()
    f = sg.compile(o, wrt=[v["w1"], v["w2"], v["b"]], inputs=[v["x1"], v["x2"]], backend="python")
    assert str(f.ir).startswith("f_value_and_grad(w1, w2, b, x1, x2):")
    assert str(f.traced_ir).startswith("f(w1, w2, b, x1, x2):")
    assert f.wrt_names == ["w1", "w2", "b"] and f.input_names == ["x1", "x2"]
    named = sg.compile(o, wrt=[v["w1"]], backend="python", name="my neuron!")
    assert named.name.isidentifier() and "my_neuron" in named.name


# ---- compiling the same graph again --------------------------------------------------------------


def test_compiling_the_same_graph_twice_after_a_batch(tmp_path: Any) -> None:
    from symgrad import cache

    cache.set_cache_dir(tmp_path)  # the cache on, whatever SYMGRAD_CACHE says
    try:
        _compile_twice()
    finally:
        cache.set_cache_dir(None)


def _compile_twice() -> None:
    def build() -> tuple[sg.Value, sg.Value, sg.Value]:
        a, x = sg.Value(2.0, label="a"), sg.Value(1.0, label="x")
        return (a * x).tanh(), a, x

    o, a, x = build()
    f = sg.compile(o, wrt=[a], inputs=[x], name="twice")
    f.batch(None, [[1.0], [2.0]])
    o2, a2, x2 = build()  # e.g. a notebook cell run again
    g = sg.compile(o2, wrt=[a2], inputs=[x2], name="twice")
    assert g() == (math.tanh(2.0), pytest.approx([1 - math.tanh(2.0) ** 2]))
    rows = [[1.0], [2.0]]
    np.testing.assert_array_equal(g.batch(None, rows)[0], f.batch(None, rows)[0])


# ---- the plain-Python backend and the op table's numbers -----------------------------------------


@pytest.mark.parametrize("x", [6.625, 7.125, 9.0, 18.992486878233002])
def test_python_backend_matches_engine_on_saturating_tanh(x: float) -> None:
    _tanh_gradient_matches_engine("python", x)


@pytest.mark.parametrize("x", [6.625, 7.125, 9.0, 18.992486878233002])
def test_numba_backend_matches_engine_on_saturating_tanh(x: float) -> None:
    _tanh_gradient_matches_engine("numba", x)


def _tanh_gradient_matches_engine(backend: str, x: float) -> None:
    v = sg.Value(x, label="x")
    o = v.tanh()
    value, grad = sg.compile(o, wrt=[v], backend=backend, name="nb")()
    o.backward()
    assert value == pytest.approx(o.data, rel=1e-12, abs=0.0)
    assert grad[0] == pytest.approx(v.grad, rel=1e-12, abs=0.0)

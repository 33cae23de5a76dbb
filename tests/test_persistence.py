"""Persistence: pickle and deepcopy of compiled objects, and `f.save` (a standalone module).

Oracles: the compiled object's own results in the process that compiled it, compared bit for
bit with the object loaded in a fresh process (whose JIT statistics show the persistent cache
was used) and with the saved module imported in a fresh process where symgrad, sympy and mpmath
cannot be imported; the IR's printed text and its evaluation for pickled IR.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import os
import pickle
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings

import symgrad as sg
from symgrad import export
from symgrad.autodiff import value_and_grad
from symgrad.ir import evaluate
from symgrad.nn import MLP, vector_to_parameters
from symgrad.ops import OPS
from tests.strategies import programs, to_ir, to_values

ROOT = Path(__file__).resolve().parents[1]


def _every_op(xs: list[sg.Value], ws: list[sg.Value]) -> sg.Value:
    """A sum with a term for each op of the op table (pow at several exponents), kept inside
    each op's domain."""
    a = xs[0] * ws[0] + ws[1]
    b = xs[1] * ws[2] - 0.25
    pos = a * a + 0.5
    terms = []
    for name in sorted(OPS):
        op = OPS[name]
        if op.params:
            terms += [pos ** 2.0, pos ** 0.5, pos ** -1.0, a ** 3.0, pos ** 1.5]
        elif op.arity == 1:
            terms.append(op(pos if op.domain[0] >= 0.0 else a))
        elif op.arity == 2:
            terms.append(op(a, b))
        else:
            terms.append(op(a - b, pos, a))
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


def _model(width: int = 6, n_out: int = 1) -> tuple[Any, list[sg.Value], list[sg.Value]]:
    """An MLP's squared error plus every op: (outputs, wrt, inputs)."""
    random.seed(1)
    m = MLP(3, [width, width, 1])
    xs = [sg.Value(0.1 * (i + 1), label=f"x{i}") for i in range(3)]
    y = sg.Value(0.3, label="y")
    ws = m.parameters()
    loss = (m(xs) - y) ** 2 + 0.01 * _every_op(xs, ws)
    outs = loss if n_out == 1 else [loss, m(xs) * xs[2]]
    return outs, ws, [*xs, y]


def _bits(a: Any) -> np.ndarray:
    return np.atleast_1d(np.asarray(a, dtype=np.float64)).view(np.int64)


def _assert_same(got: dict[str, list[Any]], want: dict[str, list[Any]]) -> None:
    assert got.keys() == want.keys()
    for k, results in want.items():
        assert len(got[k]) == len(results), k
        for i, (g, w) in enumerate(zip(got[k], results, strict=True)):
            assert np.shape(g) == np.shape(w), (k, i)
            assert np.array_equal(_bits(g), _bits(w)), f"{k}[{i}] differs"


# ---- pickled IR ----------------------------------------------------------------------------------


@settings(max_examples=30)
@given(programs(n_outputs=2))
def test_ir_pickles_to_the_same_program(case) -> None:
    func = value_and_grad(to_ir(case.program), case.program.n_inputs)
    back = pickle.loads(pickle.dumps(func))
    assert back == func and str(back) == str(func)
    for a, b in zip(back.body, func.body, strict=True):
        assert (a.origin is None) == (b.origin is None) and a.note == b.note
    args = list(case.inputs)
    assert [_bits(v) for v in evaluate(back, args)] == [_bits(v) for v in evaluate(func, args)]


# ---- pickle and deepcopy in a fresh process ------------------------------------------------------

# run by the test and by a fresh process on the same objects: every entry point
BATTERY = textwrap.dedent('''
    import numpy as np
    import symgrad as sg

    def battery(objs, P, X):
        res = {}
        for name, f in objs.items():
            if isinstance(f, sg.Compiled):
                res[name] = [*f(P, X[0]), *f(), f.forward(P, X[1]), f.batch_forward(P, X)]
                for reduce in ("sum", "mean", "none"):
                    res[name] += [*f.batch(P, X, reduce), *f.batch(None, X[:3], reduce)]
            elif isinstance(f, sg.higher.Hessian):
                res[name] = [*f(P, X[0]), *f.batch(P, X), *f.batch(P, X, "none")]
            else:
                res[name] = [*f(P, -P, X[0]), *f(None, P)]
        return res
''')

CHILD = BATTERY + textwrap.dedent('''
    import pickle, sys
    from symgrad import jit
    from symgrad.executors.interpreter import _Interpreter

    with open(sys.argv[1], "rb") as fh:
        blob, P, X = pickle.load(fh)
    objs = pickle.loads(blob)
    res = battery(objs, P, X)
    interp = _Interpreter.get().ns
    missed = {n: sum(d.stats.cache_misses.values()) for n, d in interp.items()
              if hasattr(d, "stats") and hasattr(d, "py_func")}
    info = {n: (f.stats["cache"], f.lowering, [v.label for v in f.wrt],
                f.current_params(), f.current_inputs()) for n, f in objs.items()}
    with open(sys.argv[2], "wb") as fh:
        pickle.dump((res, info, dict(jit.CACHE_EVENTS), missed), fh)
''')


def _run_child(tmp_path: Path, script: str, *args: str, isolated: bool = False) -> None:
    path = tmp_path / "child.py"
    path.write_text(script)
    env = {**os.environ}
    cmd = [sys.executable, str(path), *args]
    if isolated:
        cmd.insert(1, "-I")  # no PYTHONPATH, no user site, not the script's directory
    else:
        env["PYTHONPATH"] = str(ROOT)  # this checkout's symgrad
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600,
                         check=False, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]


def _objects() -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    outs, wrt, inputs = _model()
    several = _model(n_out=2)  # the same values (the same seed), two outputs
    objs = {
        "lines": sg.compile(outs, wrt=wrt, inputs=inputs, name="lines"),
        "tape": sg.compile(outs, wrt=wrt, inputs=inputs, backend="tape", name="tape"),
        "python": sg.compile(outs, wrt=wrt, inputs=inputs, backend="python", name="python"),
        "several": sg.compile(several[0], wrt=several[1], inputs=several[2], name="several"),
        "jvp": sg.jvp(outs, wrt=wrt, inputs=inputs, name="jvp"),
        "hvp": sg.hvp(outs, wrt=wrt, inputs=inputs, name="hvp"),
        "hessian": sg.hessian(outs, wrt=wrt, inputs=inputs, name="hessian"),
    }
    rng = np.random.default_rng(7)
    P = np.array([v.data for v in wrt]) + rng.normal(0, 0.1, len(wrt))
    X = rng.uniform(-1, 1, (700, len(inputs)))  # big enough for batches on threads
    return objs, P, X


@pytest.mark.slow
def test_pickled_objects_give_the_same_bits_in_a_fresh_process(tmp_path: Path) -> None:
    objs, P, X = _objects()
    objs["tape"].wait()
    ns: dict[str, Any] = {}
    exec(BATTERY, ns)
    want = ns["battery"](objs, P, X)
    with open(tmp_path / "in.pkl", "wb") as fh:
        pickle.dump((pickle.dumps(objs), P, X), fh)
    _run_child(tmp_path, CHILD, str(tmp_path / "in.pkl"), str(tmp_path / "out.pkl"))
    with open(tmp_path / "out.pkl", "rb") as fh:
        got, info, events, missed = pickle.load(fh)
    _assert_same(got, want)
    for name, f in objs.items():
        cache, lowering, labels, params, inputs = info[name]
        assert lowering == f.lowering and labels == f.wrt_names
        assert np.array_equal(params, f.current_params())
        assert np.array_equal(inputs, f.current_inputs())
        if lowering == "lines" and f.backend != "python":
            assert cache.get("hits", 0) >= 1 and not cache.get("misses"), (name, cache)
    # nothing was JIT-compiled in the fresh process: kernels and interpreter came from the cache
    assert not events.get("misses") and not events.get("uncached"), events
    assert missed and not any(missed.values()), missed


def test_unpickled_defaults_are_the_values_when_pickled() -> None:
    outs, wrt, inputs = _model()
    f = sg.compile(outs, wrt=wrt, inputs=inputs, backend="python")
    blob = pickle.dumps(f)
    want = f()
    for v in wrt:
        v.data += 1.0  # after pickling: the loaded object keeps the pickled values
    g = pickle.loads(blob)
    value, grad = g()
    assert value == want[0] and np.array_equal(_bits(grad), _bits(want[1]))
    assert g.wrt_names == f.wrt_names and g.input_names == f.input_names
    assert not set(map(id, g.wrt)) & set(map(id, wrt))  # fresh leaves, in no graph
    assert all(not v._prev for v in (*g.wrt, *g.inputs))
    assert repr(g).split(" compiled in")[0] == repr(f).split(" compiled in")[0]
    assert str(g.ir) == str(f.ir) and g.source == f.source
    assert g.stats["seconds"]["load"] >= 0.0 and "total" in g.stats["seconds"]


def test_deepcopy_shares_the_code_not_the_leaves() -> None:
    outs, wrt, inputs = _model()
    f = sg.compile(outs, wrt=wrt, inputs=inputs, backend="python")
    g = copy.deepcopy(f)
    assert g.executor is f.executor and g.ir is f.ir  # immutable: shared
    assert not set(map(id, g.wrt)) & set(map(id, f.wrt))
    assert g.stats == f.stats and g.stats is not f.stats
    want = f()
    g.wrt[0].data += 1.0  # the copy's defaults move; the original's do not
    assert f()[0] == want[0] and g()[0] != want[0]
    assert g(f.current_params())[0] == want[0]
    h = copy.copy(f)
    assert h.wrt is f.wrt and h()[0] == want[0]
    # containers of compiled objects deep-copy too (each object once)
    pair = copy.deepcopy([f, f])
    assert pair[0] is pair[1] and pair[0] is not f


def test_deepcopy_of_a_model_with_its_function_keeps_them_linked() -> None:
    random.seed(3)
    model = MLP(2, [3, 1])
    x = [sg.Value(0.3, label="x0"), sg.Value(-0.2, label="x1")]
    f = sg.compile(model(x), wrt=model.parameters(), inputs=x, backend="python")
    want = f()
    for order in ("model first", "f first"):
        if order == "model first":
            m2, f2, x2 = copy.deepcopy((model, f, x))
        else:
            f2, m2, x2 = copy.deepcopy((f, model, x))
        assert all(a is b for a, b in zip(f2.wrt, m2.parameters(), strict=True)), order
        assert all(a is b for a, b in zip(f2.inputs, x2, strict=True)), order
        assert not set(map(id, f2.wrt)) & set(map(id, f.wrt))
        vector_to_parameters(np.zeros(len(f2.wrt)), m2)  # the copied model moves, f2 follows
        x2[0].data = 1.0
        assert f2()[0] == f2(np.zeros(len(f2.wrt)), [1.0, -0.2])[0] != want[0]
        assert f()[0] == want[0]  # the original is untouched


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_pickle_protocol_works(protocol: int) -> None:
    outs, wrt, inputs = _model()
    X = np.random.default_rng(1).uniform(-1, 1, (50, len(inputs)))
    objs = [sg.compile(outs, wrt=wrt, inputs=inputs, backend=b, name=f"p{protocol}_{b}")
            for b in ("python", "tape")]
    objs += [t(outs, wrt=wrt, inputs=inputs, backend="python")
             for t in (sg.jvp, sg.hvp, sg.hessian)]
    for f in objs:
        g = pickle.loads(pickle.dumps(f, protocol=protocol))
        assert type(g) is type(f) and str(g.ir) == str(f.ir)
        if isinstance(f, sg.Compiled):
            for a, b in zip(g.batch(None, X), f.batch(None, X), strict=True):
                assert np.array_equal(_bits(a), _bits(b)), f.backend


def test_a_pickle_of_another_format_is_refused() -> None:
    from symgrad.compiled import _restore

    with pytest.raises(ValueError, match="format"):
        _restore(sg.Compiled, {"format": 999})


# ---- f.save: a standalone module -----------------------------------------------------------------

# a fresh process where symgrad (and sympy, mpmath) cannot be imported runs the saved module
STANDALONE = textwrap.dedent('''
    import importlib.abc, pickle, sys

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("symgrad", "sympy", "mpmath", "tests"):
                raise ImportError(f"{name} may not be imported here")
            return None

    sys.meta_path.insert(0, Refuse())
    sys.path.insert(0, sys.argv[1])
    with open(sys.argv[2], "rb") as fh:
        name, P, X = pickle.load(fh)
    m = __import__(name)
    res = [*m.value_and_grad(P, X[0]), *m.value_and_grad(None, X[1]), m.forward(P, X[2]),
           m.forward(None, X[0]), m.batch_forward(P, X), m.batch_forward(P, X[:5])]
    for reduce in ("sum", "mean", "none"):
        res += [*m.batch(P, X, reduce), *m.batch(None, X[:40], reduce)]
    loaded = sorted(k.split(".")[0] for k in sys.modules)
    info = (m.WRT, m.INPUTS, m.PARAMS, getattr(m, "PORTS", None), loaded)
    with open(sys.argv[3], "wb") as fh:
        pickle.dump((res, info), fh)
''')


def _saved_results(f: sg.Compiled, P: np.ndarray, X: np.ndarray) -> list[Any]:
    res = [*f(P, X[0]), *f(None, X[1]), f.forward(P, X[2]), f.forward(None, X[0]),
           f.batch_forward(P, X), f.batch_forward(P, X[:5])]
    for reduce in ("sum", "mean", "none"):
        res += [*f.batch(P, X, reduce), *f.batch(None, X[:40], reduce)]
    return res


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numba", "tape"])
def test_saved_module_gives_the_same_bits_without_symgrad(tmp_path: Path, backend: str) -> None:
    outs, wrt, inputs = _model(n_out=2 if backend == "numba" else 1)
    f = sg.compile(outs, wrt=wrt, inputs=inputs, backend=backend, name="model")
    f.wait()
    assert f.lowering == ("lines" if backend == "numba" else "tape")
    rng = np.random.default_rng(3)
    P = f.current_params() + rng.normal(0, 0.1, f.n_params)
    X = rng.uniform(-1, 1, (700, f.n_inputs))  # on threads in both
    module = tmp_path / "saved" / "model_grad.py"
    module.parent.mkdir()
    assert f.save(module) == module
    with open(tmp_path / "in.pkl", "wb") as fh:
        pickle.dump(("model_grad", P, X), fh)
    _run_child(tmp_path, STANDALONE, str(module.parent), str(tmp_path / "in.pkl"),
               str(tmp_path / "out.pkl"), isolated=True)
    with open(tmp_path / "out.pkl", "rb") as fh:
        got, (wrt_names, input_names, params, ports, loaded) = pickle.load(fh)
    _assert_same({"saved": got}, {"saved": _saved_results(f, P, X)})
    _, want_wrt, want_inputs = f._names()
    assert wrt_names == want_wrt and input_names == want_inputs
    assert np.array_equal(_bits(params), _bits(f.current_params()))
    assert not {"symgrad", "sympy", "mpmath"} & set(loaded)
    if backend == "tape":
        assert set(ports) == {"exp", "log", "sigmoid", "tanh"}  # the plans' ported ops


def test_saved_module_imports_numpy_and_numba_only(tmp_path: Path) -> None:
    outs, wrt, inputs = _model()
    for backend in ("python", "tape"):
        f = sg.compile(outs, wrt=wrt, inputs=inputs, backend=backend, name="m")
        text = f.save(tmp_path / f"m_{backend}.py").read_text()
        tree = ast.parse(text)
        roots = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0
                roots.add((node.module or "").split(".")[0])
        third_party = roots - set(sys.stdlib_module_names)
        assert third_party == {"numpy", "numba", "llvmlite"}, third_party
        doc = ast.get_docstring(tree) or ""
        assert all(word in doc for word in ("value_and_grad", "batch_forward", "WRT", "PARAMS"))
        assert str(tmp_path) not in text and str(ROOT) not in text  # no machine paths
        assert "import mpmath" not in text and "import symgrad" not in text
        top = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
        assert {"value_and_grad", "forward", "batch", "batch_forward"} <= {n.name for n in top}


def test_save_refuses_bad_arguments(tmp_path: Path) -> None:
    a = sg.Value(0.5, label="a")
    f = sg.compile(a * a, wrt=[a], backend="python")
    with pytest.raises(ValueError, match=r"\.py"):
        f.save(tmp_path / "model.txt")
    with pytest.raises(ValueError, match="params"):
        f.save(tmp_path / "model.py", params=[1.0, 2.0])
    path = f.save(tmp_path / "model.py", params=[3.0])
    assert "PARAMS = np.array([3.0]" in path.read_text()


@pytest.mark.parametrize(("name", "why"), [
    ("my-model.py", r"not a Python identifier.*e\.g\. 'my_model\.py'"),
    ("2nd.py", r"not a Python identifier.*e\.g\. '_2nd\.py'"),
    ("class.py", r"a Python keyword: `import class` is a syntax error"),
    ("base64.py", r"standard library module: the file would hide"),
    ("random.py", r"standard library module"),
    ("numpy.py", r"a module the saved file needs"),
    ("llvmlite.py", r"a module the saved file needs"),
])
def test_save_refuses_file_names_that_import_cannot_take(tmp_path: Path, name: str,
                                                         why: str) -> None:
    a = sg.Value(0.5, label="a")
    f = sg.compile(a * a, wrt=[a], backend="python")
    with pytest.raises(ValueError, match=rf"save: '{re.escape(name)}': the module name .*{why}"):
        f.save(tmp_path / name)
    assert not (tmp_path / name).exists()
    doc = ast.get_docstring(ast.parse(f.save(tmp_path / "my_model.py").read_text())) or ""
    assert "import my_model as model" in doc


def test_saved_functions_check_arguments_and_default_as_f_does(tmp_path: Path) -> None:
    outs, wrt, inputs = _model()
    f = sg.compile(outs, wrt=wrt, inputs=inputs, backend="python", name="m")
    m = _import(f.save(tmp_path / "checked.py"))
    assert np.array_equal(m.INPUT_VALUES, f.current_inputs())
    for got, want in ((m.value_and_grad(), f()), (m.value_and_grad(None, None), f(None, None)),
                      ((m.forward(),), (f.forward(),))):
        for g, w in zip(got, want, strict=True):
            assert np.array_equal(_bits(g), _bits(w))
    P, x = f.current_params(), f.current_inputs()
    X = np.tile(x, (3, 1))
    bad_args = [
        ("params", lambda F, v: F(v, x)), ("inputs", lambda F, v: F(P, v)),
    ]
    for what, call in bad_args:
        for bad, match in ((np.ones(len(P if what == "params" else x), bool), "booleans"),
                           ([True] * len(P if what == "params" else x), "booleans"),
                           ("1.5", "expected numbers, got str"),
                           ({0: 1.0}, "got a dict"), ({1.0}, "got a set"),
                           (np.array(["a"] * len(P if what == "params" else x)),
                            "expected real numbers, got an array of dtype <U1")):
            for fn in (f, m.value_and_grad):
                with pytest.raises(TypeError, match=rf"{what}: .*{match}"):
                    call(fn, bad)
    for bad, match in ((X.astype(bool), "booleans"), (X.astype(str), "dtype <U"),
                       ({1.0: X}, "got a dict")):
        for fn in (f.batch, m.batch, f.batch_forward, m.batch_forward):
            with pytest.raises(TypeError, match=rf"X: .*{match}"):
                fn(P, bad)
    for fn in (f.forward, m.forward):
        with pytest.raises(ValueError, match="params"):
            fn(P[:-1], x)


def _import(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"saved_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@settings(max_examples=6, deadline=None)
@given(case=programs(n_outputs=2, max_ops=6))
def test_saved_line_kernels_match_on_random_programs(tmp_path_factory, case) -> None:
    leaves, outs, _ = to_values(case.program, case.inputs)
    f = sg.compile(outs, wrt=leaves, name="rnd")  # no inputs: X has no columns
    m = _import(f.save(tmp_path_factory.mktemp("rnd") / "rnd.py"))
    P, X = np.array(case.inputs), np.zeros((40, 0))
    pairs = [(m.value_and_grad(P), f(P)), (m.batch(P, X), f.batch(P, X)),
             (m.batch(P, X, "none"), f.batch(P, X, "none")),
             ((m.forward(P), m.batch_forward(P, X)), (f.forward(P), f.batch_forward(P, X)))]
    for got, want in pairs:
        for g, w in zip(got, want, strict=True):
            assert np.array_equal(_bits(g), _bits(w))


# ---- one namespace -------------------------------------------------------------------------------


def test_private_names_two_files_define_are_kept_apart() -> None:
    parts = [export._Part("a.py: first", "import math\n_X = 1\n\ndef f():\n    return _X\n",
                          embedded=True),
             export._Part("b.py: second", "import math\n_X = 2\n\ndef g():\n    return _X\n",
                          embedded=True)]
    kept = export._keep_apart(parts)
    assert kept[1].renamed == {"_X": "_X_b"} and "return _X_b" in kept[1].text
    ns: dict[str, Any] = {}
    exec("\n".join(p.text for p in kept), ns)
    assert ns["f"]() == 1 and ns["g"]() == 2
    with pytest.raises(RuntimeError, match="defined both"):
        export._keep_apart([export._Part("a", "X = 1\n"), export._Part("b", "X = 2\n")])
    with pytest.raises(RuntimeError, match="defined both"):
        export._keep_apart([export._Part("a", "import math as m\n"),
                            export._Part("b", "import numpy as m\n", embedded=True)])


def test_saved_verification_uses_the_op_tables_rules() -> None:
    # the saved module checks its ports against vecmath.REFERENCES; symgrad against the op
    # table: the two must give the same bits on the samples
    from symgrad import vecmath

    for name in ("tanh", "exp", "log", "sigmoid"):
        xs = np.concatenate([vecmath.sample(fn) for fn in ("tanh", "exp", "log")]).tolist()
        a = np.array([vecmath.REFERENCES[name](x) for x in xs])
        b = np.array([OPS[name].impl(x) for x in xs])
        assert vecmath.mismatches(a, b).size == 0, name


# ---- f.source runs by itself ---------------------------------------------------------------------


def test_generated_line_source_runs_with_numpy_alone() -> None:
    a, b = sg.Value(0.75, label="a"), sg.Value(-1.5, label="b")
    x = sg.Value(2.0, label="x")
    out = (a * x) ** 2.0 + (b * x) ** -1.0 + (a * a + x) ** 0.5
    f = sg.compile(out, wrt=[a, b], inputs=[x], backend="python")
    ns: dict[str, Any] = {}
    exec(compile(f.source, "<f.source>", "exec"), ns)  # nothing else bound
    X = np.linspace(0.1, 2.0, 70).reshape(-1, 1)
    want_values, want_grad = f.batch(None, X)
    for loop, extra in (("sum", ()), ("sum_chunks", (np.zeros(1, np.int64),))):
        values, acc = np.zeros((70, 1)), np.zeros((1, 2))
        bufs = np.zeros((sg.layout.n_chunks(70), 1, 2))
        ns[f"f_value_and_grad_{loop}"](*extra, f.current_params(), X, values,
                                      acc if loop == "sum" else bufs)
        if loop == "sum_chunks":
            acc = bufs.sum(axis=0)
        np.testing.assert_allclose(values[:, 0], want_values, rtol=1e-15)
        np.testing.assert_allclose(acc[0], want_grad, rtol=1e-14)


def test_tape_source_runs_by_itself() -> None:
    a, x = sg.Value(0.5, label="a"), sg.Value(1.0, label="x")
    f = sg.compile((a * x).tanh() ** 2, wrt=[a], inputs=[x], backend="tape")
    ns: dict[str, Any] = {}
    exec(compile(f.source, "<f.source>", "exec"), ns)  # the listing, then the interpreter
    assert callable(ns["run_sums"]) and callable(ns["run_elementwise"])

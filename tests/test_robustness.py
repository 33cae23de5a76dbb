"""Robustness: non-finite numbers, nan hunting, threads, processes sharing a cache, memory.

Oracles: the interpreted engine (Value.backward) and the IR evaluator; IEEE rules by hand.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import symgrad as sg
from tests.strategies import programs, same_float, to_values


def _engine_grads(outs, leaves):
    vals, rows = [], []
    for o in outs:
        for v in sg.engine.topological_order(outs):
            v.grad = 0.0
        o.backward()
        vals.append(o.data)
        rows.append([leaf.grad for leaf in leaves])
    return vals, rows


@settings(max_examples=60)
@given(programs(n_inputs=(1, 3), max_ops=10, safe=False, n_outputs=2))
def test_fuzz_unrestricted_programs_python_backend_matches_engine(case):
    """nan, inf, -0.0, huge and tiny magnitudes: compiled == interpreted, or both non-finite alike.

    Gradients compare with the engine up to the sign of zero (the engine starts accumulators at
    +0.0) and an ulp of np.tanh vs math.tanh; nan and inf must appear in the same places.
    """
    leaves, outs, _ = to_values(case.program, case.inputs)
    f = sg.compile(outs, wrt=leaves, backend="python")
    value, jac = f()
    want_v, want_j = _engine_grads(outs, leaves)
    for got, want in zip([*value, *np.ravel(jac)], [*want_v, *np.ravel(want_j)], strict=True):
        if math.isfinite(want) and math.isfinite(got):
            assert got == pytest.approx(want, rel=1e-9, abs=1e-300), str(case)
        elif "tanh" not in case.program.ops_used() and "sigmoid" not in case.program.ops_used():
            assert same_float(got, want), str(case)


@settings(max_examples=25)
@given(programs(n_inputs=(1, 2), max_ops=6, safe=False))
def test_fuzz_every_pass_keeps_nan_and_inf(case):
    """Optimised and unoptimised compiled code give the same bits, nan and inf included."""
    leaves, outs, _ = to_values(case.program, case.inputs)
    a = sg.compile(outs, wrt=leaves, backend="python", optimize=True)
    b = sg.compile(outs, wrt=leaves, backend="python", optimize=False)
    va, ga = a()
    vb, gb = b()
    assert same_float(va, vb), str(case)
    for x, y in zip(ga, gb, strict=True):
        assert same_float(x, y) or x == y == 0.0, str(case)


@pytest.mark.parametrize(
    ("build", "value"),
    [
        (lambda x: (x * 0.0 - 1.0).log(), math.nan),  # log of a negative is nan
        (lambda x: (x * 0.0).log(), -math.inf),  # log(0) is -inf
        (lambda x: x / (x * 0.0), math.inf),  # 1/0 is inf (IEEE), not ZeroDivisionError
        (lambda x: (x * 0.0) / (x * 0.0), math.nan),  # 0/0 is nan
        (lambda x: (x * 1000.0).exp(), math.inf),  # overflow is inf
        (lambda x: (x * 0.0) ** -1, math.inf),  # 0 ** -1 is inf
        (lambda x: (x - 3.0) ** 0.5, math.nan),  # negative ** fractional is nan
        (lambda x: (x * 0.0).relu(), 0.0),  # relu(0) = 0 ...
    ],
)
@pytest.mark.parametrize("backend", ["python", "numba", "tape"])
def test_ieee_conventions_hold_in_every_backend(build, value, backend):
    x = sg.Value(1.0, label="x")
    out = build(x)
    assert same_float(out.data, value)  # the engine
    f = sg.compile(out, wrt=[x], backend=backend)
    got, _ = f()
    assert same_float(got, value), backend


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_relu_derivative_at_zero_is_zero(backend):
    x = sg.Value(0.0, label="x")
    out = x.relu()
    out.backward()
    assert x.grad == 0.0
    _, g = sg.compile(out, wrt=[x], backend=backend)()
    assert g[0] == 0.0


def test_debug_names_the_first_nonfinite_instruction():
    a, b = sg.Value(2.0, label="a"), sg.Value(3.0, label="b")
    out = (a - b).log() * b + a.exp()
    f = sg.compile(out, wrt=[a, b], backend="python")
    report = f.debug()
    assert "log(" in report and "nan" in report and "-1.0" in report
    assert "all values finite" in f.debug([5.0, 3.0])


def _sections(report):
    """The report's sections by title: "params", "inputs", "forward", "value and gradient"."""
    out, title = {}, None
    for line in report.splitlines():
        if line.startswith("  "):
            line = line[2:]
        else:
            title, _, line = line.partition(": ")
        out[title] = out.get(title, "") + line + "\n"
    return out


def test_debug_names_a_nan_param_and_never_calls_its_result_finite():
    w, x = sg.Value(1.0, label="w"), sg.Value(1.5, label="x")
    f = sg.compile(x * w, wrt=[w], inputs=[x], backend="python")
    value, grad = f([math.nan], [1.5])
    assert math.isnan(value) and not math.isnan(grad[0])  # d/dw = x, still finite
    s = _sections(f.debug([math.nan], [1.5]))
    assert s["params"].strip() == "not finite: [0] w = nan"
    assert "inputs" not in s
    assert "all values finite" not in s["forward"]
    assert "w = nan" in s["forward"] and "results not finite: value = nan" in s["forward"]
    assert "d/d(w)" not in s["value and gradient"]  # the gradient x is finite


def test_debug_names_an_inf_input_and_the_instruction_that_turns_it_into_nan():
    w, x = sg.Value(1.0, label="w"), sg.Value(1.5, label="x")
    f = sg.compile((x * w).sin(), wrt=[w], inputs=[x], backend="python")
    assert math.isnan(f([1.0], [math.inf])[0])
    s = _sections(f.debug([1.0], [math.inf]))
    assert s["inputs"].strip() == "not finite: [0] x = inf"
    assert "turns inf into nan" in s["forward"] and "sin(" in s["forward"]
    assert "d/d(w) = nan" in s["value and gradient"]


def test_debug_reports_an_overflow_then_inf_times_zero():
    a, b = sg.Value(2.0, label="a"), sg.Value(0.0, label="b")
    f = sg.compile(a.exp() * b, wrt=[a], inputs=[b], backend="python")
    s = _sections(f.debug([1000.0], [0.0]))
    assert "params" not in s and "inputs" not in s  # both finite: the trouble is inside
    fwd = s["forward"].splitlines()
    assert fwd[0].startswith("instruction 0 `v0 = exp(a)` gives inf from a = 1000.0")
    assert "turns inf into nan" in fwd[1] and "mul(" in fwd[1] and "b = 0.0" in fwd[1]
    assert fwd[2] == "results not finite: value = nan"


def test_debug_says_when_a_non_finite_value_does_not_reach_the_result():
    a = sg.Value(2.0, label="a")
    f = sg.compile((a.exp() * -1.0).exp(), wrt=[a], backend="python")  # exp(-inf) = 0
    s = _sections(f.debug([1000.0]))
    assert "gives inf" in s["forward"] and "every result is finite" in s["forward"]


@settings(max_examples=40)
@given(programs(n_inputs=(1, 3), max_ops=8, safe=False, n_outputs=2))
def test_debug_never_says_all_finite_about_a_non_finite_number(case):
    """Oracle: the interpreted engine. A section says "all values finite" only if its results
    (the engine's values, and for the gradient its gradients) and every leaf are finite, and
    every non-finite leaf is named."""
    leaves, outs, _ = to_values(case.program, case.inputs)
    f = sg.compile(outs, wrt=leaves, backend="python")
    s = _sections(f.debug())
    values, jac = _engine_grads(outs, leaves)
    leaves_ok = all(math.isfinite(v.data) for v in leaves)
    for v in leaves:
        assert math.isfinite(v.data) or f"{v.label} = {v.data!r}" in s.get("params", ""), case
    if "all values finite" in s["forward"]:
        assert leaves_ok and all(math.isfinite(v) for v in values), case
    if "all values finite" in s["value and gradient"]:
        assert all(math.isfinite(g) for row in jac for g in row), case
        assert leaves_ok and all(math.isfinite(v) for v in values), case
    if not all(math.isfinite(v) for v in values):
        assert "results not finite: value" in s["forward"], case


def test_threads_compile_and_call_at_once():
    """Eight threads compile different graphs and call them; every result equals the engine's."""
    errors: list[BaseException] = []
    results: dict[int, tuple] = {}

    def job(k: int) -> None:
        try:
            a, b = sg.Value(0.1 * k + 0.3, label="a"), sg.Value(1.0 - 0.05 * k, label="b")
            out = (a * b + k).tanh() * a.exp() - (b * b + 1.0).log() * k
            f = sg.compile(out, wrt=[a, b], backend="numba" if k % 2 else "python")
            X = np.zeros((50, 0))
            vals, g = f.batch(None, X)
            results[k] = (f(), vals, g, out, a, b)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=job, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k, ((value, grad), vals, g, out, a, b) in results.items():
        out.backward()
        assert value == pytest.approx(out.data, rel=1e-12), k
        np.testing.assert_allclose(grad, [a.grad, b.grad], rtol=1e-12)
        np.testing.assert_allclose(vals, out.data, rtol=1e-12)
        np.testing.assert_allclose(g, 50 * grad, rtol=1e-12)


def test_one_compiled_function_called_from_many_threads():
    a, b = sg.Value(0.5, label="a"), sg.Value(-0.25, label="b")
    x = sg.Value(0.0, label="x")
    out = (a * x + b).sigmoid()
    f = sg.compile(out, wrt=[a, b], inputs=[x])
    X = np.linspace(-2, 2, 400).reshape(-1, 1)
    want = f.batch(None, X, reduce="none")
    errors = []

    def job() -> None:
        for _ in range(20):
            got = f.batch(None, X, reduce="none")
            if not (np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])):
                errors.append("mismatch")

    threads = [threading.Thread(target=job) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


SHARED = textwrap.dedent(
    """
    import json, sys
    import symgrad as sg
    from symgrad.nn import MLP
    import random
    random.seed(4)
    m = MLP(2, [5, 1])
    x = [sg.Value(0.0, label="x0"), sg.Value(0.0, label="x1")]
    f = sg.compile(m(x), wrt=m.parameters(), inputs=x, name="shared")
    v, g = f([p.data for p in m.parameters()], [0.3, -0.7])
    print(json.dumps([v, list(g)]))
    """
)


@pytest.mark.slow
def test_processes_sharing_the_cache_directory(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SHARED)
    env = {**os.environ, "SYMGRAD_CACHE_DIR": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(4)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outs.append(out.strip().splitlines()[-1])
    assert len(set(outs)) == 1
    # and a later process still reads a sound cache
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                         timeout=300, check=True)
    assert res.stdout.strip().splitlines()[-1] == outs[0]
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]
    assert not leftovers


MEMORY = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    import symgrad as sg
    from symgrad.nn import MLP
    import random
    random.seed(0)
    m = MLP(2, [12, 12, 1])  # 205 parameters
    x = [sg.Value(0.0, label="x0"), sg.Value(0.0, label="x1")]
    f = sg.compile(m(x), wrt=m.parameters(), inputs=x, backend=sys.argv[1])
    X = np.random.default_rng(0).normal(size=(1_000_000, 2))
    f.batch(None, X[:10])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    values, grad = f.batch(None, X, reduce="sum")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert grad.shape == (205,) and values.shape == (1_000_000,)
    print((after - before) * 1024)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numba", "tape"])
def test_batch_of_a_million_rows_uses_memory_proportional_to_parameters(tmp_path, backend):
    script = tmp_path / "mem.py"
    script.write_text(MEMORY)
    res = subprocess.run([sys.executable, str(script), backend], capture_output=True, text=True,
                         timeout=600, check=False)
    assert res.returncode == 0, res.stderr
    grew = int(res.stdout.strip().splitlines()[-1])
    rows_times_params = 1_000_000 * 205 * 8  # 1.6 GB: what reduce="none" would need
    # the values (8 MB) and per-chunk accumulators are allowed; (N, P) is not
    assert grew < 100 * 2**20, f"peak memory grew by {grew / 2**20:.0f} MiB"
    assert grew < rows_times_params / 10


@st.composite
def _labels(draw):
    return draw(st.text(min_size=0, max_size=12))


@settings(max_examples=40)
@given(st.lists(_labels(), min_size=1, max_size=4))
def test_any_labels_give_valid_source_and_never_run(labels):
    """Labels are data: quotes, newlines, keywords, unicode, code -> valid identifiers only."""
    leaves = [sg.Value(0.5 + i, label=lab) for i, lab in enumerate(labels)]
    out = leaves[0]
    for v in leaves[1:]:
        out = out * v + 1.0
    out = out.tanh()
    out.label = labels[-1]
    f = sg.compile(out, wrt=leaves, backend="python")
    compile(f.source, "<check>", "exec")  # valid Python
    for lab in labels:
        # a label with characters that mean something in code never appears as written (one of
        # letters, digits and _ only, like 0000, may stand inside a sanitised name: v_0000, and
        # so may it with spaces around it: "v_000 = ...")
        core = lab.strip()
        if len(core) > 3 and not all(ch.isascii() and (ch.isalnum() or ch == "_") for ch in core):
            assert lab not in f.source
    value, grad = f()
    out.backward()
    assert value == pytest.approx(out.data, rel=1e-12)
    np.testing.assert_allclose(grad, [v.grad for v in leaves], rtol=1e-12)


def test_label_with_code_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = f"x\"); open({str(marker)!r}, 'w'); (\"\nimport os; os.system('touch {marker}')  # \\"
    a = sg.Value(1.0, label=evil)
    b = sg.Value(2.0, label="__import__('os').system('true')")
    out = (a * b).exp()
    out.label = "'''\n" + evil
    for backend in ("python", "numba", "tape"):
        f = sg.compile(out, wrt=[a, b], backend=backend, name=evil)
        f()
        f.batch(None, np.zeros((3, 0)))
        assert "os.system" not in f.source and "open(" not in f.source
    assert not marker.exists()


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_batch_forward_on_a_fresh_function_does_not_deadlock(backend):
    """The batch loop builds its kernel first, under the same (reentrant) lock."""
    w, x = sg.Value(0.3, label="w"), sg.Value(0.0, label="x")
    f = sg.compile((w * x).tanh(), wrt=[w], inputs=[x], backend=backend)
    result = {}
    t = threading.Thread(target=lambda: result.update(v=f.batch_forward(None, np.ones((3, 1)))),
                         daemon=True)
    t.start()
    t.join(timeout=120)
    assert not t.is_alive(), "batch_forward hung"
    np.testing.assert_allclose(result["v"], np.tanh(0.3), rtol=1e-15)

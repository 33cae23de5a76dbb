"""Edge cases a careful user hit: each test pins a defect that was found and fixed.

Oracles: the interpreted engine, plain arithmetic by hand, and the files on disk.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import symgrad as sg
from symgrad import Value


def _product():
    a, b, x = Value(2.0, label="a"), Value(3.0, label="b"), Value(1.0, label="x")
    return a, b, x, a * b * x


@pytest.mark.parametrize("backend", ["numba", "python", "tape"])
def test_read_only_arrays_are_accepted(backend):
    a, b, x, out = _product()
    f = sg.compile(out, wrt=[a, b], inputs=[x], backend=backend)
    p = np.frombuffer(np.array([1.0, 2.0]).tobytes())  # read-only
    assert not p.flags.writeable
    X = np.ones((5, 1))
    X.setflags(write=False)
    value, grad = f(p, np.frombuffer(np.array([3.0]).tobytes()))
    assert value == 6.0 and grad.tolist() == [6.0, 3.0]
    values, g = f.batch(p, X)
    assert values.tolist() == [2.0] * 5 and g.tolist() == [10.0, 5.0]
    H = sg.hessian(out, wrt=[a, b], inputs=[x], backend=backend)
    assert H(p, X[0])[2].tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_check_treats_leaves_outside_wrt_and_inputs_as_numbers():
    a, b = Value(1.5, label="a"), Value(-0.7, label="b")
    assert sg.check(a * Value(2.0) + b, wrt=[a, b]).compared > 0
    c = Value(3.0, label="c")
    assert sg.check(a * c + b, wrt=[a, b]).compared > 0
    assert sg.check((a * c + b).tanh(), wrt=[a, b], order=2).compared > 0


def test_check_accepts_any_label_even_its_own_placeholder_name():
    p, a = Value(0.4, label="_zoo"), Value(1.5, label="a")
    assert sg.check((p * a).tanh() + p.sin(), wrt=[p, a]).compared > 0


def test_check_that_compares_nothing_raises():
    a, b = Value(1.0, label="a"), Value(-0.7, label="b")
    with pytest.raises(ValueError, match="nothing was compared"):
        sg.check(b ** (1 / 3) + a, wrt=[a, b])  # a negative base: nan at every point


def test_to_sympy_keeps_an_exponent_the_number_it_is():
    import sympy

    a = Value(2.0, label="a")
    e = sg.to_sympy(a ** 0.7071067811865476)
    assert e.exp == sympy.Float(0.7071067811865476) and e.exp.is_Float
    assert sg.to_sympy(a**3).exp == 3


def test_draw_ir_keeps_labels_apart_from_its_own_node_ids():
    a, b = Value(2.0, label="return0"), Value(3.0, label="ret_0")
    f = sg.compile(a * b, wrt=[a, b], backend="python")
    src = sg.draw_ir(f).source
    # the argument boxes and the result marker are three different nodes, no cycle
    assert src.count("[label=return0 shape=box]") == 1
    assert src.count("[label=ret_0 shape=box]") == 1
    assert 'ret_0 [label="return 0"' in src
    edges = [ln.strip() for ln in src.splitlines() if "->" in ln]
    assert "n_v0 -> ret_0" in edges
    assert not [e for e in edges if e.startswith("ret_")]  # a result marker has no out-edges


def test_oversized_numbers_and_empty_outputs_are_value_errors():
    with pytest.raises(ValueError, match="too large for a float"):
        Value(10**400)
    with pytest.raises(ValueError, match="too large for a float"):
        Value(2.0) ** 10**400
    with pytest.raises(ValueError, match="empty"):
        sg.compile([], wrt=[Value(1.0)])


def test_oversized_operands_of_ops_are_value_errors_naming_them():
    x = Value(1.0, label="x")
    big = 10**400
    cases = [
        (lambda: x < big, r"lt \(<\): operand 1"), (lambda: big >= x, r"le \(<=\): operand 1"),
        (lambda: x + big, r"add \(\+\): operand 1"), (lambda: big * x, r"mul \(\*\): operand 0"),
        (lambda: sg.maximum(x, big), r"maximum \(max\): operand 1"),
        (lambda: sg.minimum(big, 1.0), r"minimum \(min\): operand 0"),
        (lambda: sg.where(x > 0, big, x), r"where \(where\): operand 1"),
        (lambda: sg.ops.POW(x, p=big), r"pow: parameter p"),
    ]
    for make, name in cases:
        with pytest.raises(ValueError, match=rf"^{name}, 1000.*, is too large for a float "
                                             r"\(float64 holds up to ~1\.8e308\)$"):
            make()


BYTECODE = textwrap.dedent(
    """
    import sys
    import symgrad as sg
    a = sg.Value(0.5, label="a")
    f = sg.compile((a * a).exp(), wrt=[a], name="pyc_case")
    print(f()[0])
    """
)


@pytest.mark.slow
def test_cached_module_bytecode_is_never_trusted(tmp_path):
    """A damaged or swapped .pyc beside a cached module is ignored: the checked source runs."""
    script = tmp_path / "job.py"
    script.write_text(BYTECODE)
    env = {**os.environ, "SYMGRAD_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    first = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                           env=env, timeout=300, check=True)
    (py,) = (tmp_path / "cache").glob("pyc_case_*.py")
    pyc_dir = tmp_path / "cache" / "__pycache__"
    pyc_dir.mkdir(exist_ok=True)
    marker = tmp_path / "ran"
    evil = compile(f"open({str(marker)!r}, 'w')\n", str(py), "exec")
    import importlib.util
    import marshal

    st = py.stat()
    header = importlib.util.MAGIC_NUMBER + b"\0\0\0\0"
    header += int(st.st_mtime).to_bytes(4, "little")
    header += (st.st_size & 0xFFFFFFFF).to_bytes(4, "little")
    for tag in (sys.implementation.cache_tag,):
        (pyc_dir / f"{py.stem}.{tag}.pyc").write_bytes(header + marshal.dumps(evil))
    second = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            env=env, timeout=300, check=True)
    assert not marker.exists(), "a .pyc in the cache directory was executed"
    assert second.stdout == first.stdout
    assert float(first.stdout) == pytest.approx(np.exp(0.25), rel=1e-15)

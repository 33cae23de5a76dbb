"""`x ** p` with a literal exponent: one definition (C's pow, Python's ``x ** p``) everywhere.

Oracle: the interpreted engine (``Value(x) ** p`` and ``backward()``), whose rule is Python's
``x ** p``. Numba would turn a literal ``x ** 2.0`` into ``x * x``, ``x ** 0.5`` into a square
root and ``x ** -1.0`` into ``1 / x``; each rounds differently from pow for about one value in a
thousand, so many values per exponent are compared bit for bit (nan matching any nan), values
through the batch loops and gradients through single calls, on every exact backend.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import symgrad as sg
from tests.strategies import same_float

EXPONENTS = (2.0, 3.0, 0.5, -1.0, 1.5, -2.0, 4.0, 1 / 3, -0.5, 0.25, 2.5, -3.0, 10.0, 0.0, 1.0)
EXACT_BACKENDS = ("numba", "tape", "python")
# values where x * x, sqrt(x) and 1 / x differ from pow (see also tests/test_vecmath.py)
SHORTCUT_MISSES = (-1.3275170599102342, float.fromhex("0x1.378e2d40e24eap+8"),
                   float.fromhex("0x1.6c8ce9b80760dp-19"), float.fromhex("0x1.2d6501298efdbp+7"))


def _engine(x: float, p: float) -> tuple[float, float]:
    v = sg.Value(x)
    out = v**p
    out.backward()
    return out.data, v.grad


@pytest.fixture(scope="module", params=EXACT_BACKENDS)
def compiled(request: pytest.FixtureRequest) -> tuple[sg.Compiled, sg.Compiled]:
    """Every exponent at once: values (x an input, batch loops) and gradients (x a parameter)."""
    x = sg.Value(1.0, label="x")
    outs = [x**p for p in EXPONENTS]
    forward = sg.compile(outs, wrt=[], inputs=[x], backend=request.param)
    grads = sg.compile(outs, wrt=[x], backend=request.param)
    return forward, grads


@functools.cache
def _sample() -> np.ndarray:
    rng = np.random.default_rng(12)
    return np.concatenate([
        rng.uniform(-3.0, 3.0, 4000),
        rng.uniform(-1.0, 1.0, 2000) * 2.0 ** rng.integers(-60, 60, 2000),
        rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, 500).view(np.float64),
        [0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, -5e-324, 1.7976931348623157e308],
        SHORTCUT_MISSES,
    ])


@functools.cache
def _engine_values(bits: bytes) -> np.ndarray:
    # keyed by the bits: as a tuple of floats, (-0.0,) would hit the entry of (0.0,)
    xs = np.frombuffer(bits, np.float64).tolist()
    return np.array([[_engine(x, p)[0] for p in EXPONENTS] for x in xs])


def _assert_values_exact(forward: sg.Compiled, xs: np.ndarray) -> None:
    # batches under 512 rows: the tape's threaded build (seconds to compile) is not needed here
    got = np.concatenate([forward.batch_forward([], xs[i:i + 500, None])
                          for i in range(0, len(xs), 500)])
    want = _engine_values(np.ascontiguousarray(xs, np.float64).tobytes())
    for k, p in enumerate(EXPONENTS):
        bad = [(x, got[i, k]) for i, x in enumerate(xs.tolist())
               if not same_float(got[i, k], want[i, k])]
        assert not bad, (forward.backend, p, [(x.hex(), g) for x, g in bad[:3]])


def test_values_equal_the_engine_on_many_values_per_exponent(compiled) -> None:
    _assert_values_exact(compiled[0], _sample())


def test_gradients_equal_the_engine_on_many_values_per_exponent(compiled) -> None:
    grads = compiled[1]
    for x in _sample()[::7].tolist() + list(SHORTCUT_MISSES):
        _, jac = grads([x])
        for k, p in enumerate(EXPONENTS):
            assert same_float(jac[k, 0], _engine(x, p)[1]), (grads.backend, x.hex(), p)


@example(xs=list(SHORTCUT_MISSES))
@given(xs=st.lists(st.floats(), min_size=1, max_size=40))
def test_property_every_exact_backend_is_the_engine(compiled, xs: list[float]) -> None:
    forward, grads = compiled
    _assert_values_exact(forward, np.array(xs))
    for x in xs:
        value, jac = grads([x])
        for k, p in enumerate(EXPONENTS):
            want_value, want_grad = _engine(x, p)
            assert same_float(value[k], want_value), (grads.backend, x, p)
            assert same_float(jac[k, 0], want_grad), (grads.backend, x, p)


def test_the_sample_contains_values_where_the_shortcuts_differ() -> None:
    # so the tests above would catch a backend that turned pow into x * x, sqrt or 1 / x
    xs = _sample()
    assert any(x * x != x**2.0 for x in xs.tolist() if np.isfinite(x))
    assert any(np.sqrt(x) != x**0.5 for x in xs.tolist() if x > 0)
    assert any(1.0 / x != x**-1.0 for x in xs.tolist() if np.isfinite(x) and x != 0)


def test_constant_folding_uses_the_same_pow() -> None:
    for x in SHORTCUT_MISSES:
        c = sg.Value(x)  # a frozen leaf: x ** p is folded at compile time
        f = sg.compile([c**p for p in EXPONENTS], wrt=[], backend="python")
        assert all(ins.op != "pow" for ins in f.forward_ir.body)
        for k, p in enumerate(EXPONENTS):
            assert same_float(f.forward([], [])[k], _engine(x, p)[0]), (x, p)


def test_generated_source_calls_libm_pow() -> None:
    x = sg.Value(1.5, label="x")
    f = sg.compile(x**2.0, wrt=[x])
    assert "pow_libm(x, 2.0)" in f.source

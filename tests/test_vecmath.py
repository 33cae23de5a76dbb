"""vecmath: the glibc ports against libm (Python's `math`), bit for bit, and the fallback to libm.

The ports reproduce x86-64 glibc (2.28 and later): its FMA build where the CPU has FMA and AVX2,
its plain build elsewhere. Those tests run the port that should match here directly, whatever
the verification decided, so a wrong port fails them; on another libm they are skipped.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from symgrad import _libm_ports, vecmath
from tests.strategies import same_float

ROOT = Path(__file__).resolve().parents[1]
OPS = vecmath.OPS


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    found = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return set(found.group(1).split()) if found else set()


def _port_for_this_libm() -> str | None:
    """The port glibc's load-time choice corresponds to here, or None for another libm."""
    libc, version = platform.libc_ver()
    if libc != "glibc" or platform.machine() != "x86_64":
        return None
    if tuple(int(v) for v in version.split(".")[:2]) < (2, 28):
        return None  # before 2.28, exp and log were other algorithms
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if {"fma", "avx2"} <= _cpu_flags() and "-FMA" not in tunables and "-AVX2" not in tunables:
        return "fma"
    return "nofma"


PORT = _port_for_this_libm()
needs_glibc = pytest.mark.skipif(
    PORT is None, reason="the ports reproduce x86-64 glibc >= 2.28; this libm is another")


def _expm1_ref(x: float) -> float:
    try:
        return math.expm1(x)
    except OverflowError:
        return math.inf


REFERENCES = {**vecmath.REFERENCES, "expm1": _expm1_ref}
# unrestricted doubles (nan, infinities, subnormals) and each op's interesting range
DOMAINS = {
    "tanh": st.floats(-25.0, 25.0),
    "exp": st.floats(-750.0, 750.0),
    "log": st.one_of(st.floats(0.0, allow_infinity=True), st.floats(0.9, 1.1)),
    "sigmoid": st.floats(-750.0, 750.0),
    "expm1": st.floats(-40.0, 710.0),
}


def _check(op: str, fn, x: float) -> None:
    got, want = fn(x), REFERENCES[op](x)
    assert same_float(got, want), f"{op}({x.hex()}) = {got.hex()}, libm gives {want.hex()}"


def _property(op: str):
    @needs_glibc
    @given(x=st.one_of(st.floats(), DOMAINS[op]))
    def test(x):
        _check(op, _libm_ports.VARIANTS[PORT][op], x)

    test.__name__ = f"test_{op}_port_equals_libm"
    return test


test_tanh_port_equals_libm = _property("tanh")
test_exp_port_equals_libm = _property("exp")
test_log_port_equals_libm = _property("log")
test_sigmoid_port_equals_libm = _property("sigmoid")
test_expm1_port_equals_libm = _property("expm1")


@needs_glibc
@pytest.mark.parametrize("op", OPS)
def test_port_matches_libm_on_the_whole_sample(op):
    # the verification's own inputs, through the vectorised loop, whatever the verdict was
    xs = vecmath.sample(op)
    got = np.empty_like(xs)
    _libm_ports.MAPS[PORT][op](xs, got)
    want = np.array([REFERENCES[op](x) for x in xs.tolist()])
    bad = vecmath.mismatches(got, want)
    assert bad.size == 0, [(xs[j].hex(), got[j].hex(), want[j].hex()) for j in bad[:5]]


@needs_glibc
def test_status_picks_the_port_for_this_libm():
    label = {"fma": "exact port (fma)", "nofma": "exact port (no fma)"}[PORT]
    assert vecmath.status() == dict.fromkeys(OPS, label)
    assert vecmath.resolve("tanh") == ("symgrad.vecmath", f"tanh_{PORT}")
    assert vecmath.import_line("log", "log_v") == f"from symgrad.vecmath import log_{PORT} as log_v"


NAN, INF = math.nan, math.inf
SPECIALS = [
    ("tanh", 0.0, 0.0), ("tanh", -0.0, -0.0), ("tanh", INF, 1.0), ("tanh", -INF, -1.0),
    ("tanh", 22.0, 1.0), ("tanh", -30.0, -1.0), ("tanh", 5e-324, 5e-324),
    ("tanh", -(2.0**-56), -(2.0**-56)), ("tanh", NAN, NAN),
    ("exp", 0.0, 1.0), ("exp", -0.0, 1.0), ("exp", 5e-324, 1.0), ("exp", INF, INF),
    ("exp", -INF, 0.0), ("exp", 710.0, INF), ("exp", -746.0, 0.0), ("exp", 1e308, INF),
    ("exp", NAN, NAN),
    ("log", 0.0, -INF), ("log", -0.0, -INF), ("log", 1.0, 0.0), ("log", INF, INF),
    ("log", -1.0, NAN), ("log", -INF, NAN), ("log", -5e-324, NAN), ("log", NAN, NAN),
    ("sigmoid", 0.0, 0.5), ("sigmoid", INF, 1.0), ("sigmoid", -INF, 0.0),
    ("sigmoid", -800.0, 0.0), ("sigmoid", 40.0, 1.0), ("sigmoid", NAN, NAN),
]
EDGES = [(op, x) for op in OPS for x in (5e-324, -5e-324, 2.2250738585072014e-308,
                                          1.7976931348623157e308, -1.7976931348623157e308)]


@pytest.mark.parametrize("variant", ["fma", "nofma", "libm"])
@pytest.mark.parametrize(("op", "x", "want"), SPECIALS)
def test_special_values(variant, op, x, want):
    # IEEE and C99 Annex F values, whichever libm: every variant, scalar and in a loop
    fn = _libm_ports.VARIANTS[variant][op]
    assert same_float(fn(x), want)
    xs = np.array([0.75, x, -0.5, 3.0, x, 1.25, 0.1, 2.0, x])  # x in several vector lanes
    out = np.empty_like(xs)
    _libm_ports.MAPS[variant][op](xs, out)
    assert all(same_float(v, want) for v in out[[1, 4, 8]])


@needs_glibc
@pytest.mark.parametrize(("op", "x"), EDGES)
def test_range_edges(op, x):
    _check(op, _libm_ports.VARIANTS[PORT][op], x)


def _loop(fn):
    """A loop in the shape generated code has, calling `fn` from njit code."""

    @numba.njit
    def run(xs, out):
        for j in range(xs.size):
            out[j] = fn(xs[j])

    return run


@pytest.mark.parametrize("variant", ["fma", "nofma", "libm"])
@pytest.mark.parametrize("op", OPS)
def test_loop_gives_the_bits_of_scalar_calls(variant, op):
    fn = _libm_ports.VARIANTS[variant][op]
    xs = vecmath.sample(op)[::7]
    out = np.empty_like(xs)
    _loop(fn)(xs, out)
    scalar = np.array([fn(x) for x in xs.tolist()])
    assert vecmath.mismatches(out, scalar).size == 0


# FMA instructions in glibc 2.36's __expm1_fma, __ieee754_exp_fma and __ieee754_log_fma; tanh
# calls expm1 on arguments that never take its k = 1 path, whose one fma its port leaves out
GLIBC_FMA_COUNT = {"tanh": 11, "expm1": 12, "exp": 9, "log": 23, "sigmoid": 9}


@pytest.mark.parametrize("variant", ["fma", "nofma"])
@pytest.mark.parametrize("op", sorted(GLIBC_FMA_COUNT))
def test_fused_exactly_where_glibc_fuses(variant, op):
    # recompiled without the disk cache, whose code numba cannot show
    scalar = numba.njit(error_model="numpy")(_libm_ports.SCALARS[variant][op].py_func)
    scalar(0.5)
    llvm = scalar.inspect_llvm(scalar.signatures[0])
    fused = len(re.findall(r"call double @llvm\.fma\.f64", llvm))
    assert fused == (GLIBC_FMA_COUNT[op] if variant == "fma" else 0)
    assert not re.search(r"\b(contract|fast|reassoc|afn)\b", llvm)


@pytest.mark.skipif(not {"fma", "avx2"} <= _cpu_flags(), reason="needs a CPU with FMA and AVX2")
@pytest.mark.parametrize(("variant", "vector_op"), [
    ("fma", r"call <\d+ x double> @llvm\.fma\.v\d+f64"), ("nofma", r"fmul <\d+ x double>")])
@pytest.mark.parametrize("op", OPS)
def test_ports_vectorise_in_a_loop(op, variant, vector_op):
    run = _loop(_libm_ports.VARIANTS[variant][op])
    xs = np.linspace(-3.0, 3.0, 64)
    run(xs, np.empty_like(xs))
    assert re.search(vector_op, run.inspect_llvm(run.signatures[0]))


@pytest.fixture
def fresh_verdicts(monkeypatch):
    monkeypatch.setattr(vecmath, "_verdicts", {})


def test_falls_back_to_libm_when_the_ports_differ(fresh_verdicts, monkeypatch):
    def wrong(x):  # a libm that differs from every port in one input of the sample
        return math.nextafter(math.tanh(x), math.inf) if x == 1.0 else math.tanh(x)

    monkeypatch.setitem(vecmath.REFERENCES, "tanh", wrong)
    verdict = vecmath.status()["tanh"]
    assert re.match(r"libm: fma port differs on \d+ of \d+ inputs, first at "
                    r"x=0x1\.0000000000000p\+0: ", verdict)
    assert "; nofma port differs on " in verdict
    assert vecmath.resolve("tanh") == ("symgrad.vecmath", "tanh_libm")
    assert vecmath.import_line("tanh", "t") == "from symgrad.vecmath import tanh_libm as t"


def test_falls_back_to_libm_when_a_port_cannot_run(fresh_verdicts, monkeypatch):
    def broken(xs, out):
        raise RuntimeError("no such instruction")

    for variant in ("fma", "nofma"):
        monkeypatch.setitem(_libm_ports.MAPS[variant], "log", broken)
    verdict = vecmath.status()["log"]
    assert verdict.startswith("libm: fma port failed to run (RuntimeError: no such instruction)")
    assert vecmath.resolve("log") == ("symgrad.vecmath", "log_libm")


@pytest.mark.parametrize("op", OPS)
def test_libm_functions_are_python_math(op):
    # the fallback: on any platform, the C library called from njit code is what math calls
    xs = vecmath.sample(op)
    got = np.empty_like(xs)
    _libm_ports.MAPS["libm"][op](xs, got)
    want = np.array([vecmath.REFERENCES[op](x) for x in xs.tolist()])
    assert vecmath.mismatches(got, want).size == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="no op 'cosh'"):
        vecmath.resolve("cosh")
    with pytest.raises(ValueError, match="no op"):
        vecmath.sample("sin")
    with pytest.raises(ValueError, match="alias must be an identifier"):
        vecmath.import_line("tanh", "1x")


def test_the_sample_is_fixed():
    a, b = vecmath.sample("log"), vecmath.sample("log")
    assert a.view(np.int64).tolist() == b.view(np.int64).tolist()
    assert np.isnan(a).any() and np.isinf(a).any() and (a == 0.0).any()


@pytest.mark.slow
@pytest.mark.skipif(PORT != "fma", reason="needs glibc with its FMA build selected")
@pytest.mark.parametrize("hwcaps", ["-AVX2,-FMA", "-AVX,-AVX2,-FMA"])
def test_plain_ports_match_glibc_without_fma(hwcaps):
    # glibc's tunables make it pick its AVX or SSE2 builds: the plain ports must then verify
    env = {**os.environ, "GLIBC_TUNABLES": f"glibc.cpu.hwcaps={hwcaps}",
           "PYTHONPATH": str(ROOT)}
    code = "import json; from symgrad import vecmath; print(json.dumps(vecmath.status()))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=600, check=False)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == dict.fromkeys(OPS, "exact port (no fma)")


def _python_pow(x: float, p: float) -> float:
    """Python's x ** p with its exceptions as the IEEE values libm's pow gives."""
    odd = p.is_integer() and int(p) % 2 == 1
    try:
        r = x**p
    except ZeroDivisionError:
        return math.copysign(math.inf, x) if odd else math.inf
    except OverflowError:  # also a negative base to a huge fractional power, through complex
        if x < 0 and not p.is_integer():
            return math.nan
        return -math.inf if odd and x < 0 else math.inf
    return math.nan if isinstance(r, complex) else r


@pytest.fixture(scope="module")
def pow_in_njit():
    @numba.njit
    def constant_exponents(x):  # literal exponents: what LLVM would strength-reduce
        return (vecmath.pow_libm(x, 2.0), vecmath.pow_libm(x, 0.5), vecmath.pow_libm(x, -1.0),
                vecmath.pow_libm(x, 3.0), vecmath.pow_libm(x, 1.5))

    return constant_exponents


EXPONENTS = (2.0, 0.5, -1.0, 3.0, 1.5)


# inputs where x*x, sqrt(x) and 1/x round differently from glibc's pow
@example(x=float.fromhex("0x1.378e2d40e24eap+8"))
@example(x=float.fromhex("0x1.6c8ce9b80760dp-19"))
@example(x=float.fromhex("0x1.2d6501298efdbp+7"))
@given(x=st.floats(allow_nan=False))
def test_pow_libm_is_python_pow(pow_in_njit, x):
    got = pow_in_njit(x)
    for p, value in zip(EXPONENTS, got, strict=True):
        assert same_float(value, _python_pow(x, p)), (x.hex(), p)
        assert same_float(vecmath.pow_libm(x, p), _python_pow(x, p))


def test_pow_examples_are_ones_where_the_shortcuts_differ():
    # so the examples above would catch a pow_libm that LLVM turned into x*x, sqrt or 1/x
    x2, xh, xm1 = (float.fromhex(h) for h in (
        "0x1.378e2d40e24eap+8", "0x1.6c8ce9b80760dp-19", "0x1.2d6501298efdbp+7"))
    assert x2 * x2 != x2**2.0
    assert math.sqrt(xh) != xh**0.5
    assert 1.0 / xm1 != xm1**-1.0



@pytest.mark.slow
def test_benchmark_prints_its_table():
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "vecmath_bench.py"), "--n", "2000",
         "--rounds", "2", "--ops", "tanh,log"],
        capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    assert res.returncode == 0, res.stderr
    assert "| op | n | contender | ns/value | vs libm |" in res.stdout
    assert res.stdout.count("| tanh | 2,000 |") == 4 and res.stdout.count("| log | 2,000 |") == 4

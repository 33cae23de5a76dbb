"""Exact, vectorisable tanh, exp, log and sigmoid for compiled code, checked against libm.
Imports numpy, symgrad._libm_ports (numba) and the op table (`symgrad.ops`, whose rules are the
references the ports are checked against).

The interpreted engine computes these functions with Python's `math` module, that is with the
C library (libm), and compiled code must give the same bits: calling libm from Numba gives them,
one value at a time. This module adds ports of glibc's algorithms, written without branches so
that a loop over an array that calls them vectorises, and decides per process which of them
reproduce the running libm bit for bit:

    tanh_fma, exp_fma, log_fma, sigmoid_fma          glibc's x86-64 FMA builds (FMA and AVX2)
    tanh_nofma, exp_nofma, log_nofma, sigmoid_nofma  glibc's SSE2/AVX builds, no FMA
    tanh_libm, exp_libm, log_libm, sigmoid_libm      a call of the C library itself
    pow_libm                                         C pow(x, p): Python's x ** p

sigmoid is symgrad's `1 / (1 + exp(-x))` on the chosen exp. sin and cos are not ported: glibc's
are IBM's multi-path routines with large tables, which do not fit this form.

Every function can be called from Python and from njit code. Inside njit code the ports are
inlined (by LLVM, at every call site), so a loop such as

    from symgrad.vecmath import tanh_fma as tanh_v

    @numba.njit(cache=True)
    def run(xs, out):
        for j in range(xs.size):
            out[j] = tanh_v(xs[j])

runs several values per instruction. Use them in loops; straight-line code gains nothing from
a scalar port and pays its compile time at each call site, so there call libm (the `*_libm`
functions here, or `math.tanh`).

`pow_libm(x, p)` is for the same reason: Numba turns a literal `x ** 2.0` into `x * x`,
`x ** 0.5` into a square root and `x ** -1.0` into `1 / x`, which round differently from
glibc's pow (Python's `x ** p`) for some x; `pow_libm` keeps the call.

Which one to use: a code generator asks `resolve(op)` or `import_line(op, alias)` and writes
the answer into the generated source, e.g. `from symgrad.vecmath import tanh_fma as tanh_v`.
Numba freezes globals at compile time and caches by source, so the choice must be in the text:
a cached module compiled under another verdict then has other text. The first question about
an op verifies its ports: each is run over a fixed sample (random doubles of every exponent,
dense steps around each threshold of the algorithm, special values, and inputs where the FMA
and plain builds round differently) and compared with `math` bit for bit (nan matching any
nan). The first port that matches everywhere is used; if none does (another libm, or another
build of glibc), the op falls back to libm, never to a port that differs. `status()` says what
was chosen and why.

A cache of generated code that inlines these functions must have `CACHE_TAG` in its key: numba
notices a change to the caller's source file, not to the functions it inlined.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from symgrad import _libm_ports
from symgrad.ops import OPS as OP_TABLE

OPS = ("tanh", "exp", "log", "sigmoid")
_PORTS = ("fma", "nofma")  # tried in this order
_LABELS = {"fma": "exact port (fma)", "nofma": "exact port (no fma)"}

tanh_fma, exp_fma, log_fma, sigmoid_fma = (_libm_ports.VARIANTS["fma"][op] for op in OPS)
tanh_nofma, exp_nofma, log_nofma, sigmoid_nofma = (
    _libm_ports.VARIANTS["nofma"][op] for op in OPS)
tanh_libm, exp_libm, log_libm, sigmoid_libm = (_libm_ports.VARIANTS["libm"][op] for op in OPS)
pow_libm = _libm_ports.pow_libm
# the ports' source: a cache of code that inlines them must include this in its key, since
# numba's own cache notices changes to the caller's file only
CACHE_TAG = hashlib.sha256(Path(_libm_ports.__file__).read_bytes()).hexdigest()[:16]

_lock = threading.Lock()
_verdicts: dict[str, tuple[str, str]] = {}  # op -> (variant, status text)


# what the interpreted engine computes: the op table's rules (libm through `math`)
REFERENCES: dict[str, Callable[[float], float]] = {op: OP_TABLE[op].impl for op in OPS}


def _check_op(op: str) -> None:
    if op not in OPS:
        raise ValueError(f"vecmath has no op {op!r}; expected one of {', '.join(OPS)}")


def resolve(op: str) -> tuple[str, str]:
    """Where generated code imports `op` from.

    Args:
        op: one of `OPS` ("tanh", "exp", "log", "sigmoid").

    Returns:
        (module path, attribute name), e.g. ("symgrad.vecmath", "tanh_fma"): the exact port
        if one verified on this machine, else the libm call ("tanh_libm").
    """
    return __name__, f"{op}_{_verdict(op)[0]}"


def import_line(op: str, alias: str) -> str:
    """The import statement for generated source, e.g. `from symgrad.vecmath import tanh_fma as t`.

    Args:
        op: one of `OPS`.
        alias: the name the generated code calls it by; must be an identifier.
    """
    if not alias.isidentifier():
        raise ValueError(f"import_line: alias must be an identifier, got {alias!r}")
    module, name = resolve(op)
    return f"from {module} import {name} as {alias}"


def status() -> dict[str, str]:
    """What each op uses here: "exact port (fma)", "exact port (no fma)" or "libm: <reason>".

    Verifies the ops not yet verified in this process.
    """
    return {op: _verdict(op)[1] for op in OPS}


def _verdict(op: str) -> tuple[str, str]:
    _check_op(op)
    with _lock:
        if op not in _verdicts:
            _verdicts[op] = _verify(op)
        return _verdicts[op]


def _verify(op: str) -> tuple[str, str]:
    """The first port that matches libm on the whole sample, else libm with the reasons."""
    xs = sample(op)
    want = np.array([REFERENCES[op](x) for x in xs.tolist()], dtype=np.float64)
    reasons = []
    for variant in _PORTS:
        try:
            got = np.empty_like(xs)
            _libm_ports.MAPS[variant][op](xs, got)
        except Exception as exc:  # a port that cannot even compile here is not used
            reasons.append(f"{variant} port failed to run ({type(exc).__name__}: {exc})")
            continue
        bad = mismatches(got, want)
        if bad.size == 0:
            return variant, _LABELS[variant]
        j = bad[0]
        reasons.append(f"{variant} port differs on {bad.size} of {xs.size} inputs, first at "
                       f"x={xs[j].hex()}: {got[j].hex()} vs {want[j].hex()}")
    return "libm", "libm: " + "; ".join(reasons)


def mismatches(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Indices where two float64 arrays differ in their bits, any nan matching any nan."""
    same = (got.view(np.int64) == want.view(np.int64)) | (np.isnan(got) & np.isnan(want))
    return np.flatnonzero(~same)


# ---------------------------------------------------------------------------------------------
# the verification sample

_SPECIALS = (0.0, math.inf, math.nan, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
             1.0, 0.5, 2.0)
# inputs where glibc's FMA and plain builds round differently, found by search: they make
# the verification tell the two ports apart
_SPLITTERS = {
    "tanh": "1.81b7f56619750p-4 1.1ecb3b5e614c6p-5 -1.3981119eedd4ap-3 -1.bb7acf0865ca0p-4 "
            "-1.fd0f9d2262f90p-4 1.2380fbe0d3020p-4 1.b5ab9a2839ecep-1 -1.1833abf4e6aeap-3",
    "exp": "1.58fd65de349bcp+8 -1.65f7dd3a53a04p+7 -1.266b95b8a618cp+7 -1.0deada7189281p+8 "
           "1.149706233208cp+7 -1.e4eb296b80e00p+3 1.00d584a0d5e20p+9 -1.b2e5eb3a07d98p+8",
    "log": "1.4396bbb9c8d16p+2 1.aea7035caf00ap+0 1.a397740bea4bfp+2 1.0089c99cc8f94p-100 "
           "1.e80610a0a07b6p-16 1.ca4286afc14c0p+0 1.f8eb31346db84p-16 1.76341921f4438p-33",
    "sigmoid": "-1.db2b353913afap+7 -1.62105d25f035cp+9 -1.22c9a434368e2p+9 "
               "-1.333dd6a634d7bp+9 -1.57051f6e222b1p+9 -1.b01f229ed9b0ap+8",
}
_LN2 = math.log(2.0)


def _thresholds(op: str) -> list[float]:
    """The places where the algorithm switches path, for `op`, as positive doubles."""
    x = float.fromhex
    if op == "tanh":
        # tanh's own switches, the port's cut-off to 1 (19.5, where glibc's result is 1
        # already), then expm1's (tanh calls it at 2|x|) halved
        expm1 = [x("0x1.62e43p-2"), x("0x1.0a2b2p+0"), x("0x1.3687ap+5")]
        expm1 += [(j + 0.5) * _LN2 for j in range(66)]
        return [2.0**-55, 1.0, 22.0, 19.5] + [t / 2 for t in expm1]
    if op in ("exp", "sigmoid"):
        fixed = [2.0**-54, 512.0, 1024.0, x("0x1.62e42fefa39efp+9"), 708.3964185322641,
                 744.4400719213812, 745.1332191019411]
        return fixed + [(j + 0.5) * _LN2 / 128 for j in range(0, 128 * 1030, 523)]
    # log: near-1 bounds, 1, normal and subnormal limits, the table's subinterval edges
    edges = [float(np.int64(0x3FE6000000000000 + (j << 45)).view(np.float64)) for j in range(128)]
    return [x("0x1.ep-1"), x("0x1.109p+0"), 1.0, 2.2250738585072014e-308,
            1.7976931348623157e308] + edges + [e * 2.0**s for e in edges for s in (-1000, 300)]


def _around(values: list[float], steps: int) -> np.ndarray:
    """Each positive double, its `steps` neighbours on either side, and their negatives."""
    bits = np.array(values, dtype=np.float64).view(np.int64)
    near = (bits[:, None] + np.arange(-steps, steps + 1)[None, :]).ravel()
    near = near[(near > 0) & (near < 0x7FF0000000000000)].view(np.float64)
    return np.concatenate([near, -near])


def sample(op: str) -> np.ndarray:
    """The fixed inputs `op`'s ports are verified on: the same on every run and machine."""
    _check_op(op)
    rng = np.random.default_rng(20_261_201)
    n = 2048
    parts = [
        np.array(_SPECIALS + tuple(-v for v in _SPECIALS)),
        rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, n).view(np.float64),
        rng.uniform(-1.0, 1.0, n) * 2.0 ** rng.integers(-80, 12, n),
        _around(_thresholds(op), 4),
        np.array([float.fromhex(h) for h in _SPLITTERS[op].split()]),
    ]
    if op == "tanh":
        parts.append(rng.uniform(-23.0, 23.0, n))
    elif op in ("exp", "sigmoid"):
        span = rng.uniform(-746.0, 710.0, n)
        parts.append(-span if op == "sigmoid" else span)
    else:
        near1 = 1.0 + rng.uniform(-1.0, 1.0, n) * 2.0 ** rng.integers(-60, -3, n)
        subnormal = rng.integers(1, 1 << 52, 256).view(np.float64)
        parts += [np.abs(parts[1]), near1, subnormal]
    return np.concatenate(parts)

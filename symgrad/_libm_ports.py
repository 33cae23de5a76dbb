"""Numba ports of glibc's double tanh, expm1, exp and log, written so that loops vectorise.
Imports numpy, numba, llvmlite and mpmath (for two tables); nothing from symgrad.

Each function is written once as a template whose fused multiply-adds go through `_fma`, and is
compiled twice: with `_fma` as one rounding (`llvm.fma.f64`, the operations GCC contracted in
glibc's `-mfma -mavx2` builds, read off their machine code) and as a multiply then an add (the
plain SSE2/AVX builds). There is no branch on data: every path is computed and `_sel` picks one,
so LLVM can vectorise a loop that calls them. `symgrad.vecmath` decides which variant matches the
running libm; nothing here should be used without that verdict.
"""

from __future__ import annotations

import math
import types as pytypes
from collections.abc import Callable
from fractions import Fraction

import mpmath
import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic, overload

_F64 = ir.DoubleType()
_I64 = ir.IntType(64)


@intrinsic
def _fused(typingctx, a, b, c):
    """a*b + c with one rounding."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_F64, [_F64] * 3), "llvm.fma.f64")
        return builder.call(fn, args)

    return sig, codegen


@intrinsic
def _unfused(typingctx, a, b, c):
    """a*b + c with two roundings (no fast-math flags, so LLVM may not contract them)."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        return builder.fadd(builder.fmul(args[0], args[1]), args[2])

    return sig, codegen


@intrinsic
def _sel(typingctx, cond, a, b):
    """`a if cond else b` as an LLVM select: no branch, so the caller's loop can vectorise."""
    common = typingctx.unify_pairs(a, b)
    if not isinstance(cond, types.Boolean) or common is None:
        return None
    sig = common(types.boolean, common, common)

    def codegen(context, builder, signature, args):
        return builder.select(*args)

    return sig, codegen


@intrinsic
def _bits(typingctx, x):
    """The IEEE bits of a float64 as an int64."""
    sig = types.int64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], _I64)

    return sig, codegen


@intrinsic
def _float(typingctx, i):
    """The float64 whose IEEE bits are the int64 `i`."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], _F64)

    return sig, codegen


_fma = _unfused  # templates are compiled with this name bound to _fused or _unfused

# ---------------------------------------------------------------------------------------------
# expm1 and tanh: fdlibm's s_expm1.c and s_tanh.c (Sun Microsystems, 1993), as glibc builds
# them. glibc compiles tanh once, without FMA; expm1 has an FMA variant, which tanh calls.

_X = float.fromhex
_EXPM1_LN2_HI = _X("0x1.62e42fee00000p-1")
_EXPM1_LN2_LO = _X("0x1.a39ef35793c76p-33")
_EXPM1_INVLN2 = _X("0x1.71547652b82fep+0")
# R1(z) ~ 1 + Q1 z + ... + Q5 z^5, scaled by 2^i as fdlibm does
_Q1, _Q2, _Q3, _Q4, _Q5 = (_X(h) for h in (
    "-0x1.11111111110f4p-5", "0x1.a01a019fe5585p-10", "-0x1.4ce199eaadbb7p-14",
    "0x1.0cfca86e65239p-18", "-0x1.afdb76e09c32dp-23"))
# fdlibm's thresholds compare the high word; these are the doubles where those tests flip
_EXPM1_REDUCE = _X("0x1.62e43p-2")  # |y| above 0.5 ln2: reduce by k ln2
_EXPM1_ONE_LN2 = _X("0x1.0a2b2p+0")  # |y| below 1.5 ln2: k = +-1 without rounding
_EXPM1_HUGE = _X("0x1.3687ap+5")  # y at or below -56 ln2: -1
_EXPM1_OVERFLOW = _X("0x1.62e42fefa39efp+9")
_EXPM1_TINY = 2.0**-54


def _expm1(y: float) -> float:
    """fdlibm expm1: y = k ln2 + r, expm1(r) from a rational form, scaled back by 2^k."""
    ay = abs(y)
    neg = y < 0.0
    inside = ay < 710.0  # nan and the huge arguments take the constant paths below
    yc = _sel(inside, y, 0.0)
    kf = yc * _EXPM1_INVLN2 + _sel(neg, -0.5, 0.5)  # not contracted in glibc's build either
    k = _sel(ay >= _EXPM1_REDUCE,
             _sel(ay < _EXPM1_ONE_LN2, _sel(neg, -1, 1), int(kf)), 0)
    r, e, f0, fm1 = _expm1_reduced(yc, float(k))
    f1 = _sel(r < -0.25, (e - (r + 0.5)) * -2.0, _fma(r - e, 2.0, 1.0))
    fk = _expm1_scale(r, e, k)
    res = _sel(k == 0, f0, _sel(k == -1, fm1, _sel(k == 1, f1, fk)))
    res = _sel(neg & (ay >= _EXPM1_HUGE), -1.0, res)
    res = _sel(y > _EXPM1_OVERFLOW, math.inf, res)
    res = _sel(ay < _EXPM1_TINY, y, res)
    return _sel(y != y, y + y, res)


def _expm1_reduced(y: float, t: float) -> tuple[float, float, float, float]:
    """fdlibm's expm1 once k (as the float `t`) is chosen: r = y - k ln2, the correction e,
    and the results of the k = 0 and k = -1 paths.

    With k = 0 the reduction gives r = y exactly (and c = 0); with k = +-1 it equals fdlibm's
    y -+ ln2_hi.
    """
    hi = _fma(-t, _EXPM1_LN2_HI, y)
    lo = t * _EXPM1_LN2_LO
    r = hi - lo
    c = (hi - r) - lo
    e = _expm1_poly(r)
    hfx = 0.5 * r
    hxs = r * hfx
    f0 = r - _fma(e, r, -hxs)
    e = _fma(r, e - c, -c) - hxs
    fm1 = _fma(0.5, r - e, -0.5)
    return r, e, f0, fm1


def _expm1_poly(r: float) -> float:
    """fdlibm's correction term E of expm1(r) = r + r^2/2 + E, before the c terms."""
    hfx = 0.5 * r
    hxs = r * hfx
    r1 = _fma(hxs, _Q1, 1.0)
    r2 = _fma(hxs, _Q3, _Q2)
    r3 = _fma(hxs, _Q5, _Q4)
    h2 = hxs * hxs
    h4 = h2 * h2
    rr = _fma(h4, r3, _fma(h2, r2, r1))
    t = _fma(-rr, hfx, 3.0)
    return ((rr - t) / _fma(-r, t, 6.0)) * hxs


def _expm1_scale(r: float, e: float, k: int) -> float:
    """2^k (1 + expm1(r)) - 1 for k outside {-1, 0, 1}, the three ways fdlibm rounds it."""
    p = _float((1023 - k) << 52)  # 2^-k, used only for 2 <= k <= 56
    wide = (k <= -2) | (k > 56)
    y = _sel(wide | (k < 20), _sel(wide, 1.0, 1.0 - p) - (e - r), (r - (e + p)) + 1.0)
    y = _float(_bits(y) + (k << 52))  # add k to the exponent, as SET_HIGH_WORD does
    return _sel(wide, y - 1.0, y)


def _expm1_tanh(y: float) -> float:
    """`_expm1` for the arguments `_tanh` gives it, -2 < y <= 0 and 2 <= y <= 39: the same bits
    from only the paths those take.

    For y <= 0, k is 0, -1, -2 or -3; for y >= 2, 3 <= k <= 56. So there is no k = 1 path and
    no k > 56 one, and nan, the infinities and the huge arguments never come; the tiny ones do
    (|y| < 2^-54) but `_tanh` returns x itself there. fdlibm's k = +-1 branch (0.5 ln2 < |y| <
    1.5 ln2) needs no test of its own: there invln2 y +- 0.5 truncates to +-1, and t = +-1
    below gives that branch's hi and lo.
    """
    ay = abs(y)
    kf = y * _EXPM1_INVLN2 + _sel(y < 0.0, -0.5, 0.5)  # not contracted in glibc's build either
    k = _sel(ay >= _EXPM1_REDUCE, int(kf), 0)
    r, e, f0, fm1 = _expm1_reduced(y, float(k))
    return _sel(k == 0, f0, _sel(k == -1, fm1, _expm1_scale_tanh(r, e, k)))


def _expm1_scale_tanh(r: float, e: float, k: int) -> float:
    """`_expm1_scale` for k in {-3, -2} (fdlibm's k <= -2 path) and 3 <= k <= 56."""
    low = k < 0
    # 2^-k, or 0 on the k <= -2 path, whose 1 - (e - r) is then the k < 20 form with p = 0
    p = _sel(low, 0.0, _float((1023 - k) << 52))
    y = _sel(k < 20, (1.0 - p) - (e - r), (r - (e + p)) + 1.0)
    y = _float(_bits(y) + (k << 52))  # add k to the exponent, as SET_HIGH_WORD does
    return _sel(low, y - 1.0, y)


# From this |x| on glibc's tanh is 1: below 22, t = expm1(2|x|) >= 2^56 makes 2/(t + 2) less
# than half an ulp of 1, so 1 - 2/(t + 2) rounds to 1; from 22 on it returns 1 - tiny, also 1.
# The port computes tanh(min(|x|, this)), the same 1, so expm1 never needs its k > 56 path.
_TANH_ONE = 19.5


def _tanh(x: float) -> float:
    """fdlibm tanh: -t/(t+2) with t = expm1(-2|x|) below 1, 1 - 2/(t+2) with t = expm1(2|x|)."""
    ax = abs(x)
    a = _sel(ax < _TANH_ONE, ax, _TANH_ONE)  # the infinities (then +-1) and nan too
    big = a >= 1.0
    t = _expm1_tanh(a * _sel(big, 2.0, -2.0))
    q = _sel(big, 2.0, -t) / (t + 2.0)  # one division serves both forms
    z = math.copysign(_sel(big, 1.0 - q, q), x)  # glibc's -z for x < 0: z > 0 here
    # below 2^-55 glibc returns x (1 + x), where 1 + x rounds to 1; for nan, x is a nan too
    return _sel(ax >= 2.0**-55, z, x)


# ---------------------------------------------------------------------------------------------
# exp: glibc's e_exp.c (Szabolcs Nagy, Arm Optimized Routines, 2018): x = k ln2/128 + r,
# exp(x) = 2^(k/128) exp(r) with 2^(i/128) from a table and a degree-5 polynomial.

_EXP_INVLN2N = _X("0x1.71547652b82fep+7")
_EXP_NEGLN2HIN = _X("-0x1.62e42fefa0000p-8")
_EXP_NEGLN2LON = _X("-0x1.cf79abc9e3b3ap-47")
_EXP_SHIFT = _X("0x1.8p52")
_EXP_C2, _EXP_C3, _EXP_C4, _EXP_C5 = (_X(h) for h in (
    "0x1.ffffffffffdbdp-2", "0x1.555555555543cp-3", "0x1.55555cf172b91p-5",
    "0x1.1111167a4d017p-7"))


def _mp_double(v: mpmath.mpf) -> float:
    """An mpmath number rounded once to the nearest double."""
    sign, man, exp, _ = v._mpf_
    q = Fraction(man) * Fraction(2) ** exp
    return float(-q if sign else q)


def _exp_table() -> tuple[np.ndarray, np.ndarray]:
    """2^(i/128) = H (1 + T): T rounded to nearest, and H's bits less i << 45 (e_exp_data.c)."""
    with mpmath.workprec(200):
        tail, sbits = [], []
        for i in range(128):
            v = mpmath.power(2, mpmath.mpf(i) / 128)
            h = _mp_double(v)
            tail.append(_mp_double((v - h) / h))
            sbits.append(int(np.float64(h).view(np.int64)) - (i << 45))
    return np.array(tail, dtype=np.float64), np.array(sbits, dtype=np.int64)


_EXP_TAIL, _EXP_SBITS = _exp_table()


def _exp(x: float) -> float:
    """glibc exp, including its careful rounding of results near overflow and underflow."""
    # glibc tests the exponent bits; on |x| the same tests are comparisons that LLVM does not
    # fuse with a subtraction into an overflow intrinsic, which would stop vectorisation
    ax = abs(x)
    inner = (ax >= 2.0**-54) & (ax < 1024.0)
    xc = _sel(inner, x, 0.0)
    kd = _fma(xc, _EXP_INVLN2N, _EXP_SHIFT)
    ki = _bits(kd)
    kd = kd - _EXP_SHIFT
    r = _fma(kd, _EXP_NEGLN2LON, _fma(kd, _EXP_NEGLN2HIN, xc))
    idx = ki & 127
    sbits = _EXP_SBITS[idx] + (ki << 45)
    r2 = r * r
    tmp = _fma(r2 * r2, _fma(r, _EXP_C5, _EXP_C4),
               _fma(_fma(r, _EXP_C3, _EXP_C2), r2, _EXP_TAIL[idx] + r))
    scale = _float(sbits)
    main = _fma(scale, tmp, scale)
    res = _sel(ax < 512.0, main, _exp_special(tmp, sbits, ki))
    edge = _sel(ax < 2.0**-54, 1.0 + x, _sel(x != x, 1.0 + x, _sel(x > 0.0, math.inf, 0.0)))
    return _sel(inner, res, edge)


def _exp_special(tmp: float, sbits: int, ki: int) -> float:
    """512 <= |x| < 1024: scale stepped into range, and subnormal results rounded once."""
    s = _float(sbits - (1009 << 52))
    over = _fma(s, tmp, s) * 2.0**1009
    s = _float(sbits + (1022 << 52))
    st = s * tmp  # glibc's build reuses this product, so the next sum is not fused
    y = s + st
    hi = 1.0 + y
    lo = (s - y) + st
    lo = ((1.0 - hi) + y) + lo
    low = (hi + lo) - 1.0
    low = _sel(low == 0.0, 0.0, low)
    under = _sel(y < 1.0, low, y) * 2.0**-1022
    return _sel((ki & 0x80000000) == 0, over, under)


def _sigmoid(x: float) -> float:
    """symgrad's sigmoid, 1 / (1 + exp(-x)), on this module's exp."""
    return 1.0 / (1.0 + _exp(-x))


# ---------------------------------------------------------------------------------------------
# log: glibc's e_log.c (Szabolcs Nagy, Arm Optimized Routines, 2018): x = 2^k z,
# log(x) = k ln2 + log(c) + log1p(z/c - 1) with c from a 128-entry table, and a separate
# polynomial within 1/16 of 1.

_LOG_LN2HI = _X("0x1.62e42fefa3800p-1")
_LOG_LN2LO = _X("0x1.ef35793c76730p-45")
_A0, _A1, _A2, _A3, _A4 = (_X(h) for h in (
    "-0x1.0000000000001p-1", "0x1.555555551305bp-2", "-0x1.fffffffeb4590p-3",
    "0x1.999b324f10111p-3", "-0x1.55575e506c89fp-3"))
_B0, _B1, _B2, _B3, _B4, _B5, _B6, _B7, _B8, _B9, _B10 = (_X(h) for h in (
    "-0x1p-1", "0x1.5555555555577p-2", "-0x1.ffffffffffdcbp-3", "0x1.999999995dd0cp-3",
    "-0x1.55555556745a7p-3", "0x1.24924a344de30p-3", "-0x1.fffffa4423d65p-4",
    "0x1.c7184282ad6cap-4", "-0x1.999eb43b068ffp-4", "0x1.78182f7afd085p-4",
    "-0x1.5521375d145cdp-4"))
_LOG_OFF = 0x3FE6000000000000
_LOG_NEAR_LO = 0x3FEE000000000000  # 1 - 2^-4
_LOG_NEAR_HI = 0x3FF1090000000000  # 1 + 0x1.09p-4

# 1/c for the 128 subintervals of [0x1.6p-1, 0x1.6p0) (e_log_data.c); log(c) and c's
# two-double split follow from these by their definitions.
_LOG_INVC_HEX = """
1.734f0c3e0de9fp+0 1.713786a2ce91fp+0 1.6f26008fab5a0p+0 1.6d1a61f138c7dp+0 1.6b1490bc5b4d1p+0
1.69147332f0cbap+0 1.6719f18224223p+0 1.6524f99a51ed9p+0 1.63356aa8f24c4p+0 1.614b36b9ddc14p+0
1.5f66452c65c4cp+0 1.5d867b5912c4fp+0 1.5babccb5b90dep+0 1.59d61f2d91a78p+0 1.5805612465687p+0
1.56397cee76bd3p+0 1.54725e2a77f93p+0 1.52aff42064583p+0 1.50f22dbb2bddfp+0 1.4f38f4734ded7p+0
1.4d843cfde2840p+0 1.4bd3ec078a3c8p+0 1.4a27fc3e0258ap+0 1.4880524d48434p+0 1.46dce1b192d0bp+0
1.453d9d3391854p+0 1.43a2744b4845ap+0 1.420b54115f8fbp+0 1.40782da3ef4b1p+0 1.3ee8f5d57fe8fp+0
1.3d5d9a00b4ce9p+0 1.3bd60c010c12bp+0 1.3a5242b75dab8p+0 1.38d22cd9fd002p+0 1.3755bc5847a1cp+0
1.35dce49ad36e2p+0 1.34679984dd440p+0 1.32f5cceffcb24p+0 1.3187775a10d49p+0 1.301c8373e3990p+0
1.2eb4ebb95f841p+0 1.2d50a0219a9d1p+0 1.2bef9a8b7fd2ap+0 1.2a91c7a0c1babp+0 1.293726014b530p+0
1.27dfa5757a1f5p+0 1.268b39b1d3bbfp+0 1.2539d838ff5bdp+0 1.23eb7aac9083bp+0 1.22a012ba940b6p+0
1.2157996cc4132p+0 1.201201dd2fc9bp+0 1.1ecf4494d480bp+0 1.1d8f5528f6569p+0 1.1c52311577e7cp+0
1.1b17c74cb26e9p+0 1.19e010c2c1ab6p+0 1.18ab07bb670bdp+0 1.1778a25efbcb6p+0 1.1648d354c31dap+0
1.151b990275fddp+0 1.13f0ea432d24cp+0 1.12c8b7210f9dap+0 1.11a3028ecb531p+0 1.107fbda8434afp+0
1.0f5ee0f4e6bb3p+0 1.0e4065d2a9fcep+0 1.0d244632ca521p+0 1.0c0a77ce2981ap+0 1.0af2f83c636d1p+0
1.09ddb98a01339p+0 1.08cabaf52e7dfp+0 1.07b9f2f4e28fbp+0 1.06ab58c358f19p+0 1.059eea5ecf92cp+0
1.04949cdd12c90p+0 1.038c6c6f0ada9p+0 1.02865137932a9p+0 1.0182427ea7348p+0 1.008040614b195p+0
1.fe01ff726fa1ap-1 1.fa11cc261ea74p-1 1.f6310b081992ep-1 1.f25f63ceeadcdp-1 1.ee9c8039113e7p-1
1.eae8078cbb1abp-1 1.e741aa29d0c9bp-1 1.e3a91830a99b5p-1 1.e01e009609a56p-1 1.dca01e577bb98p-1
1.d92f20b7c9103p-1 1.d5cac66fb5ccep-1 1.d272caa5ede9dp-1 1.cf26e3e6b2ccdp-1 1.cbe6da2a77902p-1
1.c8b266d37086dp-1 1.c5894bd5d5804p-1 1.c26b533bb9f8cp-1 1.bf583eeece73fp-1 1.bc4fd75db96c1p-1
1.b951e0c864a28p-1 1.b65e2c5ef3e2cp-1 1.b374867c9888bp-1 1.b094b211d304ap-1 1.adbe885f2ef7ep-1
1.aaf1d31603da2p-1 1.a82e63fd358a7p-1 1.a5740ef09738bp-1 1.a2c2a90ab4b27p-1 1.a01a01393f2d1p-1
1.9d79f24db3c1bp-1 1.9ae2505c7b190p-1 1.9852ef297ce2fp-1 1.95cbaeea44b75p-1 1.934c69de74838p-1
1.90d4f2f6752e6p-1 1.8e6528effd79dp-1 1.8bfce9fcc007cp-1 1.899c0dabec30ep-1 1.87427aa2317fbp-1
1.84f00acb39a08p-1 1.82a49e8653e55p-1 1.8060195f40260p-1 1.7e22563e0a329p-1 1.7beb377dcb5adp-1
1.79baa679725c2p-1 1.77907f2170657p-1 1.756cadbd6130cp-1
"""


def _log_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """invc; logc = log(c) rounded; chi + clo = c, for c = 1/invc exactly (e_log_data.c)."""
    invc = [float.fromhex(h) for h in _LOG_INVC_HEX.split()]
    logc, chi, clo = [], [], []
    with mpmath.workprec(200):
        for v in invc:
            c = 1 / Fraction(v)
            logc.append(_mp_double(mpmath.log(mpmath.mpf(c.numerator) / c.denominator)))
            chi.append(float(c))
            clo.append(float(c - Fraction(chi[-1])))
    return tuple(np.array(a, dtype=np.float64) for a in (invc, logc, chi, clo))


_LOG_INVC, _LOG_LOGC, _LOG_CHI, _LOG_CLO = _log_tables()


def _log_r_fused(z: float, i: int) -> float:
    """z/c - 1 as one fused operation, glibc's choice when FMA is fast."""
    return _fused(z, _LOG_INVC[i], -1.0)


def _log_r_split(z: float, i: int) -> float:
    """z/c - 1 as (z - chi - clo) * invc, glibc's choice without FMA."""
    return ((z - _LOG_CHI[i]) - _LOG_CLO[i]) * _LOG_INVC[i]


def _log(x: float) -> float:
    """glibc log: the table path, the path near 1, and the special inputs."""
    bits = _bits(x)
    top = (bits >> 48) & 0xFFFF
    # positive subnormals are scaled into the normal range first
    ix = _sel(top < 0x0010, _bits(x * 2.0**52) - (52 << 52), bits)
    tmp = ix - _LOG_OFF
    i = (tmp >> 45) & 127
    k = tmp >> 52
    z = _float(ix - (tmp & -(1 << 52)))
    r = _log_r(z, i)
    kd = float(k)
    w = _fma(kd, _LOG_LN2HI, _LOG_LOGC[i])
    hi = w + r
    lo = _fma(kd, _LOG_LN2LO, (w - hi) + r)
    r2 = r * r
    p = _fma(_fma(r, _A4, _A3), r2, _fma(r, _A2, _A1))
    res = _fma(r * r2, p, _fma(r2, _A0, lo)) + hi
    near = (ix >= _LOG_NEAR_LO) & (ix < _LOG_NEAR_HI)
    res = _sel(near, _log_near1(x - 1.0), res)
    edge = _sel((bits << 1) == 0, -math.inf, _sel(bits == 0x7FF0000000000000, x, math.nan))
    return _sel((top >= 0x7FF0) | ((bits << 1) == 0), edge, res)


def _log_near1(r: float) -> float:
    """log(1 + r) for |r| < 1/16: a degree-11 polynomial with r^2/2 split exactly."""
    r2 = r * r
    r3 = r * r2
    p = _fma(r3, _B10, _fma(r2, _B9, _fma(r, _B8, _B7)))
    p = _fma(p, r3, _fma(r2, _B6, _fma(r, _B5, _B4)))
    p = _fma(p, r3, _fma(r2, _B3, _fma(r, _B2, _B1)))
    rhi = _fma(-(2.0**27), r, _fma(r, 2.0**27, r))
    rlo = r - rhi
    hi = _fma(rhi * rhi, _B0, r)
    lo = _fma(rhi * rhi, _B0, r - hi)
    lo = _fma(_B0 * rlo, rhi + r, lo)
    return _fma(p, r3, lo) + hi


# ---------------------------------------------------------------------------------------------
# compiling the variants

_log_r = _log_r_fused  # rebound per variant, as _fma is


def _compile(template: Callable, name: str, scope: dict[str, object], inline: str = "always"):
    """njit a copy of `template` named `name` whose globals named in `scope` are replaced.

    The distinct name keeps numba's on-disk cache entries of the variants apart. Helpers are
    inlined by numba so that each public function is one LLVM function.
    """
    env = dict(template.__globals__)
    env.update(scope)
    fn = pytypes.FunctionType(template.__code__, env, name, template.__defaults__)
    fn.__qualname__ = name
    fn.__doc__ = template.__doc__
    return njit(cache=True, error_model="numpy", inline=inline)(fn)


# in dependency order: each template sees the compiled versions of those before it
_TEMPLATES = (_expm1_poly, _expm1_reduced, _expm1_scale, _expm1, _expm1_scale_tanh,
              _expm1_tanh, _tanh, _exp_special, _exp, _sigmoid, _log_near1, _log)
PORTED = ("tanh", "exp", "log", "sigmoid", "expm1")


def _build(variant: str, fma: Callable, log_r: Callable) -> dict[str, Callable]:
    """The scalar functions of one variant, each compiled to one LLVM function.

    They are marked for numba inlining for the sake of the templates calling each other; the
    exported functions below call their compiled code instead.
    """
    scope: dict[str, object] = {"_fma": fma}
    scope["_log_r"] = _compile(log_r, f"_log_r_{variant}", scope)
    for template in _TEMPLATES:
        scope[template.__name__] = _compile(template, f"{template.__name__}_{variant}", scope)
    return {name: scope[f"_{name}"] for name in PORTED}


def _float_intrinsic(nargs: int, codegen: Callable, check: Callable[[], None] = lambda: None):
    """An intrinsic float64 f(float64, ...) with `nargs` arguments lowered by `codegen`."""
    sig = types.float64(*[types.float64] * nargs)

    def typer(*args):
        if not all(isinstance(a, (types.Float, types.Integer)) for a in args):
            return None
        check()
        return sig, codegen

    if nargs == 1:
        return intrinsic(lambda typingctx, x: typer(x))
    return intrinsic(lambda typingctx, x, p: typer(x, p))


def _inlined(scalar: Callable, nargs: int):
    """An intrinsic calling `scalar`'s float64 compilation, marked alwaysinline at the call.

    numba's own inlining (`inline="always"`) would retype the whole body at every call site;
    LLVM's inliner only copies it, and then the caller's loop can vectorise.
    """
    argtypes = (types.float64,) * nargs

    def codegen(context, builder, signature, llargs):
        cres = scalar.overloads[argtypes]
        context.active_code_library.add_linking_library(cres.library)
        fn = context.declare_function(builder.module, cres.fndesc)
        _, res = context.call_conv.call_function(builder, fn, types.float64, argtypes, llargs)
        for instr in builder.block.instructions:
            if isinstance(instr, ir.CallInstr) and instr.callee is fn:
                instr.attributes.add("alwaysinline")
        return res

    return _float_intrinsic(nargs, codegen, lambda: scalar.compile(argtypes))


def _libm(cname: str, nargs: int):
    """An intrinsic calling the C library's `cname` itself.

    nobuiltin (on the declaration: llvmlite allows it there, and LLVM reads it from the callee
    too): LLVM may not constant-fold the call, strength-reduce it (pow(x, 2.0) to x*x) or swap
    in a vector library's version of it.
    """

    def codegen(context, builder, signature, llargs):
        fnty = ir.FunctionType(_F64, [_F64] * nargs)
        fn = cgutils.get_or_insert_function(builder.module, fnty, cname)
        fn.attributes.add("nobuiltin")
        return builder.call(fn, llargs)

    return _float_intrinsic(nargs, codegen)


_libm_tanh, _libm_exp, _libm_log, _libm_expm1 = (
    _libm(name, 1) for name in ("tanh", "exp", "log", "expm1"))
_libm_pow = _libm("pow", 2)


@njit(cache=True)
def _tanh_libm(x: float) -> float:
    """The C library's tanh."""
    return _libm_tanh(x)


@njit(cache=True)
def _exp_libm(x: float) -> float:
    """The C library's exp."""
    return _libm_exp(x)


@njit(cache=True)
def _log_libm(x: float) -> float:
    """The C library's log."""
    return _libm_log(x)


@njit(cache=True)
def _expm1_libm(x: float) -> float:
    """The C library's expm1."""
    return _libm_expm1(x)


@njit(cache=True, error_model="numpy")
def _sigmoid_libm(x: float) -> float:
    """symgrad's sigmoid, 1 / (1 + exp(-x)), on the C library's exp."""
    return 1.0 / (1.0 + _libm_exp(-x))


@njit(cache=True)
def _pow_libm(x: float, p: float) -> float:
    """The C library's pow."""
    return _libm_pow(x, p)


def _export(name: str, scalar: Callable, doc: str) -> Callable:
    """A function callable from Python (through `scalar`) and from njit code (inlined)."""
    nargs = scalar.py_func.__code__.co_argcount
    call = _inlined(scalar, nargs)
    if nargs == 1:
        def fn(x: float) -> float:
            return scalar(x)

        def typed(x):
            return lambda x: call(x)
    else:
        def fn(x: float, p: float) -> float:
            return scalar(x, p)

        def typed(x, p):
            return lambda x, p: call(x, p)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    overload(fn, inline="always")(typed)
    return fn


def _map(xs: np.ndarray, out: np.ndarray) -> None:
    """out[j] = f(xs[j]), the loop shape the ports are built for."""
    for j in range(xs.size):
        out[j] = _scalar(xs[j])


def _scalar(x: float) -> float:
    """Placeholder for the function `_map` applies, bound when `_map` is compiled."""
    raise NotImplementedError


_DOCS = {
    "fma": "glibc's {0} as built with FMA (x86-64 with FMA and AVX2), ported: equal bit for bit "
           "where verified, and vectorisable in loops.",
    "nofma": "glibc's {0} as built without FMA (SSE2 and AVX builds), ported: equal bit for bit "
             "where verified, and vectorisable in loops.",
    "libm": "The C library's {0}, called once per value.",
}


# variant -> op -> numba dispatcher of the scalar function
SCALARS = {
    "fma": _build("fma", _fused, _log_r_fused),
    "nofma": _build("nofma", _unfused, _log_r_split),
    "libm": {"tanh": _tanh_libm, "exp": _exp_libm, "log": _log_libm, "expm1": _expm1_libm,
             "sigmoid": _sigmoid_libm},
}
# variant -> op -> the function callable from Python and inlined into njit code
VARIANTS = {variant: {op: _export(f"{op}_{variant}", scalar, _DOCS[variant].format(op))
                      for op, scalar in ops.items()}
            for variant, ops in SCALARS.items()}
pow_libm = _export("pow_libm", _pow_libm, "The C library's pow(x, p), which LLVM may not "
                   "strength-reduce: pow_libm(x, 2.0) is Python's x ** 2.0, not x * x.")
# the verification loops, one per exported function, compiled when first used
MAPS = {variant: {op: _compile(_map, f"_map_{op}_{variant}", {"_scalar": fn}, "never")
                  for op, fn in ops.items()}
        for variant, ops in VARIANTS.items()}

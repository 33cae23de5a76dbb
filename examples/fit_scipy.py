"""Fit a small model with scipy.optimize.minimize, using symgrad's compiled gradient and Hessian.

The model is a damped oscillation ``y = a * exp(-b*t) * cos(c*t + d)``, written in sympy and
compiled from the sympy expression (`sg.compile` takes sympy): the per-example loss is the
squared residual, its inputs one row ``(t, y)`` of the data. The objective scipy sees is the sum
over the data, computed in compiled code with ``f.batch``; its gradient comes with it, and
``sg.hessian(...).batch`` gives the summed Hessian. Three runs from the same start:

- ``BFGS`` with ``jac=True`` (value and gradient from one compiled call),
- ``trust-exact`` with the compiled Hessian too (second order: fewer iterations),
- ``Newton-CG`` with the compiled Hessian.

scipy is an optional extra: ``pip install 'symgrad[scipy]'``.

Run: python examples/fit_scipy.py [--points N] [--seed S]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import symgrad as sg  # noqa: E402

TRUE = np.array([2.0, 0.3, 3.0, 0.5])  # a, b, c, d
START = np.array([1.0, 0.1, 2.6, 0.0])


def make_data(n: int, seed: int) -> np.ndarray:
    """``(n, 2)`` rows ``(t, y)``: the true curve sampled on [0, 6] plus noise."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 6.0, n)
    a, b, c, d = TRUE
    y = a * np.exp(-b * t) * np.cos(c * t + d) + rng.normal(scale=0.05, size=n)
    return np.column_stack([t, y])


def compile_loss() -> tuple[sg.Compiled, sg.higher.Hessian]:
    """The squared residual of one data point, from sympy: value and gradient, and Hessian."""
    import sympy as sp

    a, b, c, d, t, y = sp.symbols("a b c d t y", real=True)
    residual = a * sp.exp(-b * t) * sp.cos(c * t + d) - y
    f = sg.compile(residual**2, wrt=[a, b, c, d], inputs=[t, y], name="residual2")
    H = sg.hessian(residual**2, wrt=[a, b, c, d], inputs=[t, y], name="residual2")
    return f, H


def main(argv: Sequence[str] | None = None) -> int:
    """Fit the curve three ways; 1 if a fit misses the true parameters."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=200, help="data points (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        from scipy.optimize import minimize
    except ImportError:
        print("this example needs scipy: pip install 'symgrad[scipy]' (or pip install scipy)")
        return 0

    data = make_data(args.points, args.seed)
    t0 = time.perf_counter()
    f, H = compile_loss()
    print(f"compiled the loss and its Hessian from sympy in {time.perf_counter() - t0:.2f} s:")
    print(f"  {f!r}")

    def value_and_grad(p: np.ndarray) -> tuple[float, np.ndarray]:
        values, grad = f.batch(p, data, reduce="sum")
        return float(values.sum()), grad

    def hess(p: np.ndarray) -> np.ndarray:
        _, _, h = H.batch(p, data, reduce="sum")
        return h

    runs = {
        "BFGS (gradient)": dict(method="BFGS", jac=True),
        "trust-exact (gradient and Hessian)": dict(method="trust-exact", jac=True, hess=hess),
        "Newton-CG (gradient and Hessian)": dict(method="Newton-CG", jac=True, hess=hess),
    }
    value_and_grad(START), hess(START)  # the batch loops are compiled on their first call
    ok = True
    print(f"fitting a*exp(-b*t)*cos(c*t + d) to {args.points} points from {START.tolist()}:")
    for title, kw in runs.items():
        t0 = time.perf_counter()
        res = minimize(value_and_grad, START, **kw)
        ms = (time.perf_counter() - t0) * 1e3
        err = float(np.max(np.abs(res.x - TRUE)))
        ok &= bool(res.success) and err < 0.05
        print(f"  {title:36s} {res.nit:3d} iterations, {ms:6.1f} ms, loss {res.fun:.5f}, "
              f"params {np.round(res.x, 3).tolist()} (max error {err:.3f})")
    print(f"true params: {TRUE.tolist()}")
    if not ok:
        print("error: a fit did not find the true parameters", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

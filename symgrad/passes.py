"""Optimisation passes, IR -> IR: constant folding, algebraic simplification, CSE, DCE.

Imports from symgrad: `ir` (`Atom`, `Builder`, `Const`, `Func`, `Var`) and `rewrite` (`live`,
`rebuild`). Each pass returns a new `Func` computing bit-for-bit the same results
under IEEE rules, nan and inf included. Folding, simplification and CSE are "replay the body
through a `Builder` with that feature on"; DCE is a backward liveness sweep.

Simplifications used, all exact for every float including -0.0, inf and nan:
``x*1 -> x``, ``x*-1 -> -x``, ``x/1 -> x``, ``x+(-0.0) -> x``, ``x-0.0 -> x``, ``pow(x,1) -> x``,
``-(-x) -> x``, ``x+(-y) -> x-y``, ``x-(-y) -> x+y``, ``(-x)*(-y) -> x*y``.
Left out on purpose, since IEEE breaks them: ``x*0 -> 0`` (inf, nan), ``x+0.0 -> x`` (-0.0),
``x-x -> 0`` and ``x/x -> 1`` (inf, nan, 0).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .ir import Atom, Builder, Const, Func, Var
from .rewrite import live, rebuild

__all__ = ["cse", "dce", "fold", "optimize", "replay", "simplify", "simplify_rule"]


def replay(func: Func, *, fold: bool = False, cse: bool = False, rewrite: bool = False) -> Func:
    """Re-emit `func` through a fresh `Builder` with the chosen features on."""
    return rebuild(func, Builder(fold=fold, cse=cse, rewrite=simplify_rule if rewrite else None))


def fold(func: Func) -> Func:
    """Constant folding: an op whose operands are all literals becomes a literal (``impl``)."""
    return replay(func, fold=True)


def cse(func: Func) -> Func:
    """Common-subexpression elimination by hash-consing (commutative operands canonicalised)."""
    return replay(func, cse=True)


def simplify(func: Func) -> Func:
    """Algebraic simplification with the IEEE-exact identities listed in the module docstring."""
    return replay(func, rewrite=True)


def dce(func: Func) -> Func:
    """Dead-code elimination: drop instructions no result depends on."""
    return Func(func.name, func.args, tuple(live(func.body, func.results)), func.results)


PASSES: dict[str, Callable[[Func], Func]] = {
    "fold": fold, "simplify": simplify, "cse": cse, "dce": dce,
}


def optimize(
    func: Func, max_rounds: int = 4, on_pass: Callable[[str, Func], None] | None = None
) -> tuple[Func, list[tuple[str, int, float]]]:
    """Run fold, simplify, CSE and DCE until the instruction count stops falling.

    The first round runs each pass on its own, so the log shows what each one removed; later
    rounds replay once with all three features on (the same rewrites, a third of the work).

    Args:
        func: the function to optimise.
        max_rounds: at most this many rounds.
        on_pass: called as ``on_pass(pass name, func after it)`` (``SYMGRAD_DEBUG`` uses it).
    Returns:
        the optimised function and a log of ``(pass name, instructions after, seconds)``.
    """
    log: list[tuple[str, int, float]] = []

    def done(name: str, f: Func, t: float) -> Func:
        log.append((name, len(f.body), time.perf_counter() - t))
        if on_pass is not None:
            on_pass(name, f)
        return f

    for name, p in PASSES.items():
        t = time.perf_counter()
        func = done(name, p(func), t)
    for _ in range(max_rounds - 1):
        before = len(func.body)
        t = time.perf_counter()
        func = done("all", dce(replay(func, fold=True, cse=True, rewrite=True)), t)
        if len(func.body) >= before:
            break
    return func, log


# ---- the rewrite rules -----------------------------------------------------------------------


def _is(a: Atom, v: float) -> bool:
    # compares bits, so _is(x, 0.0) is false for -0.0
    return isinstance(a, Const) and a == Const(v)


def _neg_of(b: Builder, a: Atom) -> Atom | None:
    """The operand of `a` when `a` was defined as ``neg(operand)`` in this builder."""
    if isinstance(a, Var):
        d = b.defs.get(a)
        if d is not None and d.op == "neg":
            return d.args[0]
    return None


def simplify_rule(
    b: Builder, op: str, args: tuple[Atom, ...], params: tuple[float, ...]
) -> Atom | None:
    """One rewrite step for `Builder.emit`: a replacement atom, or None to emit as is."""
    if op == "mul":
        x, y = args
        for u, w in ((x, y), (y, x)):
            if _is(w, 1.0):
                return u
            if _is(w, -1.0):
                return b.emit("neg", [u])
        nx, ny = _neg_of(b, x), _neg_of(b, y)
        if nx is not None and ny is not None:
            return b.emit("mul", [nx, ny])
    elif op == "add":
        x, y = args
        if _is(y, -0.0):
            return x
        if _is(x, -0.0):
            return y
        ny = _neg_of(b, y)
        if ny is not None:
            return b.emit("sub", [x, ny])
        nx = _neg_of(b, x)
        if nx is not None:
            return b.emit("sub", [y, nx])
    elif op == "sub":
        x, y = args
        if _is(y, 0.0):
            return x
        ny = _neg_of(b, y)
        if ny is not None:
            return b.emit("add", [x, ny])
    elif op == "div":
        if _is(args[1], 1.0):
            return args[0]
    elif op == "neg":
        inner = _neg_of(b, args[0])
        if inner is not None:
            return inner
    elif op == "pow" and params == (1.0,):
        return args[0]
    return None

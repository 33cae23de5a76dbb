"""Reverse-mode differentiation as an IR -> IR transform.

Imports `ops` and `ir`. The forward body is replayed, then walked backwards once per output,
emitting each op's vector-Jacobian rule (from the op table) as IR and summing the contributions
to reused values in the order the interpreted engine's ``backward()`` adds them. Zero cotangents
are never materialised: a rule returns None and nothing is emitted.
"""

from __future__ import annotations

from collections.abc import Callable

from .ir import Atom, Builder, Const, Func, Handle, Instr, Var

__all__ = ["name_gradients", "rehint", "value_and_grad"]


def value_and_grad(func: Func, n_wrt: int, name: str | None = None) -> Func:
    """The function computing `func`'s results and their gradients by its first `n_wrt` args.

    Args:
        func: a forward function whose first `n_wrt` arguments are differentiated.
        n_wrt: how many leading arguments are parameters (the rest are inputs).
        name: the new function's name (default ``{func.name}_value_and_grad``).
    Returns:
        a `Func` with the same arguments whose results are the ``n_out`` forward results then the
        Jacobian, row-major: ``d out[k] / d arg[j]`` at position ``n_out + k * n_wrt + j``. The
        gradient results carry the hint ``{label}_bar``.
    """
    if not 0 <= n_wrt <= len(func.args):
        raise ValueError(f"n_wrt={n_wrt} is out of range for {len(func.args)} arguments")
    b = Builder()
    env: dict[Var, Atom] = {a: b.arg(a.hint) for a in func.args}

    def sub(a: Atom) -> Atom:
        return env[a] if isinstance(a, Var) else a

    for ins in func.body:
        env[ins.out] = b.emit(ins.op, [sub(a) for a in ins.args], ins.params, hint=ins.out.hint)

    grads: list[Atom] = []
    for res in func.results:
        adj = _backward_sweep(b, func, res, sub)
        for a in func.args[:n_wrt]:
            g = adj.get(a)
            grads.append(g.atom if g is not None else Const(0.0))
    fwd = [sub(r) for r in func.results]
    out = b.build(name or f"{func.name}_value_and_grad", fwd + grads)
    return name_gradients(out, len(fwd), n_wrt)


def _backward_sweep(
    b: Builder, func: Func, res: Atom, sub: Callable[[Atom], Atom]
) -> dict[Var, Handle]:
    """Emit the adjoints of every Var of `func` for the output `res`, seeded with 1.0."""
    adj: dict[Var, Handle] = {}
    if not isinstance(res, Var):
        return adj  # a constant output: every gradient is zero
    adj[res] = b.handle(1.0)
    for ins in reversed(func.body):
        ct = adj.pop(ins.out, None)
        if ct is None:
            continue
        b.origin = Instr(sub(ins.out), ins.op, tuple(sub(a) for a in ins.args), ins.params)
        op = ins.opdef
        cts = op.vjp(ct, b.handle(sub(ins.out)), *(b.handle(sub(a)) for a in ins.args),
                     **ins.param_dict())
        for a, c in zip(ins.args, cts):
            if c is None or not isinstance(a, Var):
                continue
            c = c if isinstance(c, Handle) else b.handle(c)
            prev = adj.get(a)
            adj[a] = c if prev is None else prev + c
        b.origin = None
    return adj


def name_gradients(func: Func, n_out: int, n_wrt: int) -> Func:
    """Rename gradient results ``{arg}_bar`` (Jacobian rows get ``_bar{k}``) for printing."""
    hints: dict[Var, str] = {}
    # only backward temporaries are renamed: a gradient that is a forward value keeps its name
    backward = {i.out for i in func.body if i.origin is not None}
    n_rows = (len(func.results) - n_out) // n_wrt if n_wrt else 0
    for k in range(n_rows):
        for j, a in enumerate(func.args[:n_wrt]):
            r = func.results[n_out + k * n_wrt + j]
            if isinstance(r, Var) and r in backward and r not in hints:
                base = a.hint or f"arg{j}"
                hints[r] = f"{base}_bar" if n_rows == 1 else f"{base}_bar{k}"
    return rehint(func, hints)


def rehint(func: Func, hints: dict[Var, str]) -> Func:
    """The same function with some Vars' printing hints replaced."""
    if not hints:
        return func

    def h(a: Atom) -> Atom:
        return Var(a.id, hints[a]) if isinstance(a, Var) and a in hints else a

    body = tuple(
        Instr(h(i.out), i.op, tuple(h(a) for a in i.args), i.params, i.origin) for i in func.body
    )
    return Func(func.name, func.args, body, tuple(h(r) for r in func.results))

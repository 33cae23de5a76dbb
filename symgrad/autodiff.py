"""Differentiation as IR -> IR transforms: reverse mode, forward mode, and Hessians from both.

Imports from symgrad: `ir` (`Atom`, `Builder`, `Const`, `Func`, `Handle`, `Instr`, `Var`) and
`rewrite` (`Substitution`, `live`, `replay`). Reverse mode replays the forward body, then walks
it backwards once per output, emitting each op's vector-Jacobian rule (from the op table) as IR
and summing the contributions to reused values in the order the interpreted engine's
``backward()`` adds them. Forward mode (`jvp`) needs no rules of its own: a scalar op's vjp rule
is linear in its cotangent, so the tangent of ``out = op(x0, x1)`` is ``vjp(ct=x0_dot)[0] +
vjp(ct=x1_dot)[1]``. Since every transform's output is IR again, they compose: `jvp` of
`value_and_grad` is forward-over-reverse, the Hessian-vector product (`hvp`). Zero cotangents and
zero tangents are never materialised: they are absent, and nothing is emitted for them.
"""

from __future__ import annotations

from .ir import Atom, Builder, Const, Func, Handle, Instr, Var, names
from .rewrite import Substitution, live, replay

__all__ = [
    "hvp", "jvp", "name_gradients", "rehint", "value_and_grad", "value_grad_and_hessian",
]


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
    sub = replay(func.body, b, Substitution({a: b.arg(a.hint) for a in func.args}))
    grads: list[Atom] = []
    for res in func.results:
        adj = _backward_sweep(b, func, res, sub)
        for a in func.args[:n_wrt]:
            g = adj.get(a)
            grads.append(g.atom if g is not None else Const(0.0))
    fwd = [sub(r) for r in func.results]
    out = b.build(name or f"{func.name}_value_and_grad", fwd + grads)
    return name_gradients(out, len(fwd), n_wrt)


def _backward_sweep(b: Builder, func: Func, res: Atom, sub: Substitution) -> dict[Var, Handle]:
    """Emit the adjoints of every Var of `func` for the output `res`, seeded with 1.0."""
    adj: dict[Var, Handle] = {}
    if not isinstance(res, Var):
        return adj  # a constant output: every gradient is zero
    adj[res] = b.handle(1.0)
    for ins in reversed(_own_order(func, res)):
        ct = adj.pop(ins.out, None)
        if ct is None:
            continue
        with b.provenance("grad", sub.origin(ins, b)):
            cts = ins.opdef.vjp(ct, b.handle(sub(ins.out)), *(b.handle(sub(a)) for a in ins.args),
                                **ins.param_dict())
            for a, c in zip(ins.args, cts, strict=True):
                if c is None or not isinstance(a, Var):
                    continue
                c = c if isinstance(c, Handle) else b.handle(c)
                prev = adj.get(a)
                adj[a] = c if prev is None else prev + c
    return adj


def _own_order(func: Func, res: Var) -> list[Instr]:
    """The instructions `res` depends on, in the order ``res.backward()`` would visit them.

    That is a depth-first post-order from `res` alone, operands left to right. With several
    outputs the body's order is the joint one, and summing a reused value's cotangents in
    another order rounds differently, so each output's sweep follows its own order.
    """
    defs = {ins.out: ins for ins in func.body}
    order: list[Instr] = []
    if res not in defs:
        return order
    seen = {res}
    stack = [(defs[res], iter(defs[res].args))]
    while stack:
        ins, it = stack[-1]
        for a in it:
            if isinstance(a, Var) and a in defs and a not in seen:
                seen.add(a)
                stack.append((defs[a], iter(defs[a].args)))
                break
        else:
            stack.pop()
            order.append(ins)
    return order


def name_gradients(func: Func, n_out: int, n_wrt: int) -> Func:
    """Rename gradient results ``{arg}_bar`` (Jacobian rows get ``_bar{k}``) for printing, after
    each argument's printed name."""
    hints: dict[Var, str] = {}
    # only backward temporaries are renamed: a gradient that is a forward value keeps its name
    backward = {i.out for i in func.body if i.origin is not None}
    n_rows = (len(func.results) - n_out) // n_wrt if n_wrt else 0
    printed = names(func)  # the arguments' names as printed: sanitised, unique
    for k in range(n_rows):
        for j, a in enumerate(func.args[:n_wrt]):
            r = func.results[n_out + k * n_wrt + j]
            if isinstance(r, Var) and r in backward and r not in hints:
                base = printed[a]
                hints[r] = f"{base}_bar" if n_rows == 1 else f"{base}_bar{k}"
    return rehint(func, hints)


def rehint(func: Func, hints: dict[Var, str]) -> Func:
    """The same function with some Vars' printing hints replaced."""
    if not hints:
        return func

    def h(a: Atom) -> Atom:
        return Var(a.id, hints[a]) if isinstance(a, Var) and a in hints else a

    body = tuple(
        Instr(h(i.out), i.op, tuple(h(a) for a in i.args), i.params, i.origin, i.note)
        for i in func.body
    )
    return Func(func.name, func.args, body, tuple(h(r) for r in func.results))


# ---- forward mode ------------------------------------------------------------------------------


def jvp(func: Func, n_wrt: int, name: str | None = None) -> Func:
    """Forward mode: `func`'s results and their tangents (Jacobian-vector products).

    Args:
        func: a function whose first `n_wrt` arguments get tangents (the rest are inputs).
        n_wrt: how many leading arguments are differentiated.
        name: the new function's name (default ``{func.name}_jvp``).
    Returns:
        a `Func` whose arguments are `func`'s first `n_wrt`, then one tangent per such argument
        (hint ``{label}_dot``), then the remaining ones; its results are `func`'s results, then
        their tangents ``sum_j d out[k] / d arg[j] * arg_dot[j]``. Each tangent instruction's
        origin is the instruction it differentiates. Applied to a `value_and_grad` function this
        is forward-over-reverse: the gradients' tangents are Hessian-vector products.
    """
    if not 0 <= n_wrt <= len(func.args):
        raise ValueError(f"n_wrt={n_wrt} is out of range for {len(func.args)} arguments")
    b = Builder()
    params = [b.arg(a.hint) for a in func.args[:n_wrt]]
    dots = [b.arg(f"{a.hint or f'arg{j}'}_dot") for j, a in enumerate(func.args[:n_wrt])]
    rest = [b.arg(a.hint) for a in func.args[n_wrt:]]
    sub = replay(func.body, b, Substitution(zip(func.args, params + rest, strict=True)))
    start = len(b.body)
    tan = _forward_sweep(b, func, sub, dict(zip(func.args[:n_wrt], dots, strict=True)))
    hints = _tangent_hints(b, start, func, tan, "_dot")
    results = [sub(r) for r in func.results] + [_tangent(tan, r) for r in func.results]
    return rehint(b.build(name or f"{func.name}_jvp", results), hints)


def value_grad_and_hessian(func: Func, n_wrt: int, name: str | None = None) -> Func:
    """The value, gradient and Hessian of `func`'s single result by its first `n_wrt` args.

    Forward-over-reverse with basis tangents: the reverse pass is emitted once, then swept
    forward once per parameter with tangent 1.0 on it and (absent) zero on the others, so the
    literal 1.0s fold away under the passes and no ``0.0 * x`` is ever emitted.

    Args:
        func: a forward function with one result.
        n_wrt: how many leading arguments are parameters (the rest are inputs).
        name: the new function's name (default ``{func.name}_hessian``).
    Returns:
        a `Func` with `func`'s arguments and results ``value, grad[0..P), hess[P*P]`` with
        ``hess[j * P + k] = d2 value / d arg[j] d arg[k]``, row ``j`` from the sweep along arg
        ``j``. It is not symmetrised: rows and columns come from different sweeps, and agree to
        rounding.
    """
    _single_result(func, "the Hessian")
    g = value_and_grad(func, n_wrt)
    b = Builder()
    sub = replay(g.body, b, Substitution({a: b.arg(a.hint) for a in g.args}))
    hints: dict[Var, str] = {}
    rows: list[Atom] = []
    for j, a in enumerate(g.args[:n_wrt]):
        start = len(b.body)
        tan = _forward_sweep(b, g, sub, {a: Const(1.0)})
        for v, h in _tangent_hints(b, start, g, tan, f"_d{a.hint or f'arg{j}'}").items():
            hints.setdefault(v, h)
        rows += [_tangent(tan, r) for r in g.results[1:]]
    out = b.build(name or f"{func.name}_hessian", [sub(r) for r in g.results] + rows)
    return rehint(out, hints)


def _forward_sweep(
    b: Builder, func: Func, sub: Substitution, seeds: dict[Var, Atom]
) -> dict[Var, Atom]:
    """Emit the tangent of every Var of `func` (absent: zero) given its arguments' `seeds`."""
    tan: dict[Var, Atom] = dict(seeds)
    for ins in func.body:
        moving = [(i, tan[a]) for i, a in enumerate(ins.args) if isinstance(a, Var) and a in tan]
        if not moving:
            continue
        total: Atom | None = None
        with b.provenance("tangent", sub.origin(ins, b)):
            for i, t in moving:
                term = _vjp_term(b, ins, i, t, sub)
                if term is not None:
                    total = term if total is None else b.emit("add", [total, term])
        if total is not None:
            tan[ins.out] = total
    return tan


def _vjp_term(b: Builder, ins: Instr, i: int, t: Atom, sub: Substitution) -> Atom | None:
    """Operand `i`'s term of the tangent of `ins`: its vjp rule with cotangent `t`."""
    # the rule emits every operand's cotangent; run it in a scratch builder and copy into `b`
    # only what operand i's needs, so forward mode emits no dead code
    s = b.scratch()
    h = s.handle
    cts = ins.opdef.vjp(h(t), h(sub(ins.out)), *(h(sub(a)) for a in ins.args),
                        **ins.param_dict())
    c = cts[i]
    if c is None:
        return None
    atom = c.atom if isinstance(c, Handle) else Const(c)
    kept = live(s.body, [atom])
    return replay(kept, b)(atom) if kept else atom


def hvp(func: Func, n_wrt: int, name: str | None = None) -> Func:
    """Hessian-vector products: `jvp` of `value_and_grad`, keeping the gradient and its tangent.

    Args:
        func: a forward function with one result.
        n_wrt: how many leading arguments are parameters (the rest are inputs).
        name: the new function's name (default ``{func.name}_hvp``).
    Returns:
        a `Func` with arguments (params, their tangents ``{label}_dot``, inputs) and results
        ``grad[0..P), hv[0..P)``, ``hv = H @ params_dot``; only what they need is kept.
    """
    _single_result(func, "a Hessian-vector product")
    j = jvp(value_and_grad(func, n_wrt), n_wrt, name=name or f"{func.name}_hvp")
    # j's results: value, grad (P), value_dot, grad_dot (P)
    keep = j.results[1:1 + n_wrt] + j.results[2 + n_wrt:]
    return Func(j.name, j.args, tuple(live(j.body, keep)), keep)


def _single_result(func: Func, what: str) -> None:
    if len(func.results) != 1:
        raise ValueError(f"{what} needs a single result, {func.name} has {len(func.results)}")


def _tangent(tan: dict[Var, Atom], r: Atom) -> Atom:
    t = tan.get(r) if isinstance(r, Var) else None
    return Const(0.0) if t is None else t


def _tangent_hints(
    b: Builder, start: int, func: Func, tan: dict[Var, Atom], suffix: str
) -> dict[Var, str]:
    """Hints ``{label}{suffix}`` for the tangents of labelled Vars, where emitted since `start`."""
    fresh = {ins.out for ins in b.body[start:]}
    hints: dict[Var, str] = {}
    for v in [ins.out for ins in func.body]:
        t = tan.get(v)
        if v.hint and isinstance(t, Var) and t in fresh and t not in hints:
            hints[t] = v.hint + suffix
    return hints

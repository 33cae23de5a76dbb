"""The IR rewriter: replay instructions through a `Builder`, with a substitution and a hook.

Imports from symgrad: `ir` (`Atom`, `Builder`, `Func`, `Instr`, `Var`). Every IR -> IR transform
that copies a function is a replay (in the spirit of torch.fx's `Transformer` and tinygrad's
`graph_rewrite`): the passes replay through a builder that folds, hash-conses or simplifies as it
emits, autodiff replays the forward body before emitting derivatives, and a `hook` may replace
any instruction with what it emits itself. Provenance travels with the replay: an instruction
that came from another is re-emitted under ``Builder.provenance`` with its origin renamed into
the new function, so no transform sets it by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import groupby

from .ir import Atom, Builder, Func, Instr, Var

__all__ = ["GONE", "Hook", "Substitution", "live", "rebuild", "replay"]


# the result of an origin that no longer exists: no builder makes a Var with a negative id, so it
# never equals (and never prints as) a Var of the new function
GONE = Var(-1)


class Substitution:
    """Where a replay put an old function's Vars: ``sub(atom)`` is the atom that stands for it
    in the new one. A literal, or a Var the map does not hold, stands for itself."""

    __slots__ = ("env",)

    def __init__(self, env: Mapping[Var, Atom] | None = None) -> None:
        self.env: dict[Var, Atom] = dict(env or {})

    def __call__(self, a: Atom) -> Atom:
        return self.env.get(a, a) if isinstance(a, Var) else a

    def __setitem__(self, v: Var, a: Atom) -> None:
        self.env[v] = a

    def origin(self, ins: Instr, b: Builder) -> Instr:
        """`ins` in the new function's names, as provenance (printing data only).

        Its operands are substituted; its result too while `b` defines it by the same op, else
        it is `GONE`, which prints as ``_`` (the instruction was folded or simplified away).
        """
        get = self.env.get
        out = get(ins.out, ins.out)
        d = b.defs.get(out) if isinstance(out, Var) else None
        new = out if isinstance(out, Var) and d is not None and d.op == ins.op else GONE
        args = tuple(get(a, a) if isinstance(a, Var) else a for a in ins.args)
        return Instr(new, ins.op, args, ins.params)


# ``hook(b, ins, sub)``: emit a replacement for `ins` into `b` and return the atom that stands for
# its result, or return None to have `ins` re-emitted as it is
Hook = Callable[[Builder, Instr, Substitution], "Atom | None"]


def replay(
    body: Iterable[Instr],
    b: Builder,
    sub: Substitution | None = None,
    hook: Hook | None = None,
) -> Substitution:
    """Re-emit `body` into `b`, instruction by instruction, and say where each result went.

    Args:
        body: instructions in order (a `Func`'s body, or a part of one).
        b: the builder to emit into; its folding, CSE and rewriting apply.
        sub: where the Vars `body` uses but does not define stand in `b` (typically the old
            arguments); updated in place with every result. Default: empty.
        hook: called for each instruction first, with its provenance in effect, so that what
            it emits carries the same; a non-None return replaces the instruction.
    Returns:
        the substitution, old Var -> new atom, for everything `body` defined.

    An instruction with provenance is emitted under it, renamed with `Substitution.origin`;
    one without is emitted under whatever provenance `b` has in effect.
    """
    sub = Substitution() if sub is None else sub
    # consecutive instructions from one origin share it: rename it once for all of them
    for (_, note), group in groupby(body, key=lambda i: (id(i.origin), i.note)):
        run = list(group)
        origin = run[0].origin
        if origin is None or note is None:
            _emit_all(b, run, sub, hook)
        else:
            with b.provenance(note, sub.origin(origin, b)):
                _emit_all(b, run, sub, hook)
    return sub


def _emit_all(b: Builder, run: Iterable[Instr], sub: Substitution, hook: Hook | None) -> None:
    get = sub.env.get  # `sub`, inlined: this loop runs once per instruction of every pass
    for ins in run:
        new = None if hook is None else hook(b, ins, sub)
        if new is None:
            args = [get(a, a) if a.__class__ is Var else a for a in ins.args]
            new = b.emit(ins.op, args, ins.params, hint=ins.out.hint)
        sub.env[ins.out] = new


def rebuild(func: Func, b: Builder, hook: Hook | None = None, name: str | None = None) -> Func:
    """`func` replayed through a fresh builder `b`: new arguments with the same hints, the body
    re-emitted (see `replay`), the results substituted; named `name` or as before."""
    sub = Substitution({a: b.arg(a.hint) for a in func.args})
    replay(func.body, b, sub, hook)
    return b.build(name or func.name, [sub(r) for r in func.results])


def live(body: Sequence[Instr], roots: Iterable[Atom]) -> list[Instr]:
    """The instructions of `body` that the `roots` depend on, in their order (a backward
    liveness sweep: what dead-code elimination keeps)."""
    need: set[Atom] = {r for r in roots if isinstance(r, Var)}
    keep: list[Instr] = []
    for ins in reversed(body):
        if ins.out in need:
            keep.append(ins)
            need.update(a for a in ins.args if isinstance(a, Var))
    keep.reverse()
    return keep

"""The IR: SSA instructions in a flat list, with a builder, a verifier, an evaluator and a printer.

Imports from symgrad: `ops` (`OPS`, `OpDef`, `format_literal`). A `Func` is a list of arguments,
a body of `Instr` (each defines one new `Var` from atoms: earlier Vars or float `Const` literals)
and a tuple of result atoms. Names are given out when printing (`names`), so IR objects carry
only hints; printing is deterministic.
"""

from __future__ import annotations

import builtins
import html
import keyword
import math
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from .ops import OPS, OpDef, format_literal

__all__ = [
    "Atom", "Builder", "Const", "Func", "Handle", "IRError", "Instr", "Var",
    "evaluate", "first_nonfinite", "names", "sanitize", "verify",
]


class IRError(ValueError):
    """A malformed IR program (raised by `verify`)."""


@dataclass(frozen=True)
class Var:
    """An SSA variable. Equality is by `id`; `hint` (a label) is printing data only."""

    id: int
    hint: str = field(default="", compare=False)

    def __repr__(self) -> str:
        return f"v{self.id}"


class Const:
    """A float literal. Equal when the bits are equal: -0.0 != 0.0 and nan == nan (for CSE)."""

    __slots__ = ("_bits", "value")

    def __init__(self, value: float) -> None:
        self.value = float(value)
        self._bits = struct.pack("<d", self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Const) and other._bits == self._bits

    def __hash__(self) -> int:
        return hash(self._bits)

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        # by its bits (a nan keeps its sign and payload), and under every pickle protocol:
        # protocols 0 and 1 cannot pickle a class with __slots__ by its state
        return (_const_from_bits, (self._bits,))

    def __repr__(self) -> str:
        return format_literal(self.value)


def _const_from_bits(bits: bytes) -> Const:
    """A pickled `Const`, rebuilt from its bits."""
    return Const(struct.unpack("<d", bits)[0])


Atom = Var | Const


@dataclass(frozen=True)
class Instr:
    """``out = op(*args; params)``.

    Provenance, printing data only (set by `Builder.provenance`): `origin` is the instruction a
    derivative line came from and `note` what kind of derivative ("grad" in reverse mode,
    "tangent" in forward mode); both are None on forward instructions.
    """

    out: Var
    op: str
    args: tuple[Atom, ...]
    params: tuple[float, ...] = ()
    origin: Instr | None = field(default=None, compare=False)
    note: str | None = field(default=None, compare=False)

    @property
    def opdef(self) -> OpDef:
        """The op table entry of this instruction."""
        return OPS[self.op]

    def param_dict(self) -> dict[str, float]:
        """The static parameters by name, e.g. ``{"p": 2.0}`` for pow."""
        return dict(zip(OPS[self.op].params, self.params, strict=True))

    def __repr__(self) -> str:  # the IR line with raw names, never a nested dataclass dump
        return f"Instr({instr_text(self, {})})"


@dataclass(frozen=True)
class Func:
    """An IR function: ``name(args): body; return results``."""

    name: str
    args: tuple[Var, ...]
    body: tuple[Instr, ...]
    results: tuple[Atom, ...]

    def __str__(self) -> str:
        return to_text(self)

    def __repr__(self) -> str:  # in a notebook or a REPL, the printed IR
        return to_text(self)

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(to_text(self))}</pre>"

    def __len__(self) -> int:
        return len(self.body)


# ---- building ----------------------------------------------------------------------------------

Rewrite = Callable[["Builder", str, tuple[Atom, ...], tuple[float, ...]], "Atom | None"]


class Builder:
    """Appends instructions, optionally folding constants, hash-consing (CSE) and rewriting.

    ``Builder(fold=False, cse=False)`` records exactly what it is given, so unoptimised IR can
    still be printed and tested. Instructions emitted inside ``with b.provenance(note, origin)``
    carry that provenance.
    """

    def __init__(self, *, fold: bool = False, cse: bool = False, rewrite: Rewrite | None = None):
        self.fold = fold
        self.cse = cse
        self.rewrite = rewrite
        self.args: list[Var] = []
        self.body: list[Instr] = []
        self.defs: dict[Var, Instr] = {}
        self._memo: dict[tuple[Any, ...], Var] = {}
        self._next = 0
        self._origin: Instr | None = None  # the provenance stamped on what is emitted now
        self._note: str | None = None

    def provenance(self, note: str, origin: Instr) -> AbstractContextManager[None]:
        """Within this block, emitted instructions carry the note and origin (nested blocks
        restore the outer ones), e.g. ``with b.provenance("grad", forward_instr):``."""
        return _Provenance(self, origin, note)

    def scratch(self) -> Builder:
        """A plain builder whose Vars never equal one this builder has made so far: emit a
        rule into it, then `replay` what is kept into this one."""
        s = Builder()
        s._next = self._next
        return s

    def _var(self, hint: str = "") -> Var:
        self._next += 1
        return Var(self._next, hint)

    def arg(self, hint: str = "") -> Var:
        """A new function argument."""
        v = self._var(hint)
        self.args.append(v)
        return v

    def emit(
        self,
        op: str | OpDef,
        args: Sequence[Atom | float],
        params: Sequence[float] = (),
        hint: str = "",
    ) -> Atom:
        """Append ``op(args)`` and return its result (possibly an existing atom or a literal)."""
        name = op if isinstance(op, str) else op.name
        if name not in OPS:
            raise IRError(f"unknown op {name!r}")
        atoms = tuple(a if isinstance(a, (Var, Const)) else Const(a) for a in args)
        ps = tuple(float(p) for p in params)
        opdef = OPS[name]
        if self.fold and all(isinstance(a, Const) for a in atoms):
            ps_named = dict(zip(opdef.params, ps, strict=True))
            return Const(opdef.impl(*(a.value for a in atoms), **ps_named))
        if self.rewrite is not None:
            r = self.rewrite(self, name, atoms, ps)
            if r is not None:
                return r
        key: tuple[Any, ...] = ()
        if self.cse:
            # commutative ops are canonicalised so a*b and b*a share one instruction
            key_args = tuple(sorted(atoms, key=_atom_key)) if opdef.commutative else atoms
            key = (name, key_args, ps)
            hit = self._memo.get(key)
            if hit is not None:
                return hit
        out = self._var(hint)
        ins = Instr(out, name, atoms, ps, self._origin, self._note)
        self.body.append(ins)
        self.defs[out] = ins
        if self.cse:
            self._memo[key] = out
        return out

    def handle(self, atom: Atom | float) -> Handle:
        """Wrap an atom so that arithmetic on it emits into this builder."""
        return Handle(self, atom if isinstance(atom, (Var, Const)) else Const(atom))

    def build(self, name: str, results: Iterable[Atom | Handle]) -> Func:
        """Finish: the function with this builder's arguments and body."""
        res = tuple(r.atom if isinstance(r, Handle) else r for r in results)
        return Func(name, tuple(self.args), tuple(self.body), res)


class _Provenance:
    """The context manager of `Builder.provenance` (a class: it is entered once per
    instruction in the sweeps, where a generator-based one costs more)."""

    __slots__ = ("b", "note", "origin", "saved")

    def __init__(self, b: Builder, origin: Instr, note: str) -> None:
        self.b, self.origin, self.note = b, origin, note
        self.saved: tuple[Instr | None, str | None] = (None, None)

    def __enter__(self) -> None:
        b = self.b
        self.saved = (b._origin, b._note)
        b._origin, b._note = self.origin, self.note

    def __exit__(self, *exc: object) -> None:
        self.b._origin, self.b._note = self.saved


def _atom_key(a: Atom) -> tuple[int, Any]:
    return (0, a.id) if isinstance(a, Var) else (1, a._bits)


class Handle:
    """An atom bound to a builder: ``h1 * h2`` and ``TANH(h)`` emit instructions.

    The op table's derivative rules are run on handles to emit the backward pass.
    """

    __slots__ = ("atom", "builder")

    def __init__(self, builder: Builder, atom: Atom) -> None:
        self.builder = builder
        self.atom = atom

    @classmethod
    def _symgrad_apply(cls, op: OpDef, args: tuple[Any, ...], params: dict[str, float]) -> Handle:
        b = next(a.builder for a in args if isinstance(a, Handle))
        atoms: list[Atom] = []
        for i, a in enumerate(args):
            if isinstance(a, Handle):
                atoms.append(a.atom)
            elif isinstance(a, (int, float)) and not isinstance(a, bool):
                atoms.append(Const(float(a)))
            else:
                raise TypeError(f"{op.name}: operand {i} is {type(a).__name__}, not an IR handle")
        ps = tuple(float(params[p]) for p in op.params)
        return Handle(b, b.emit(op, atoms, ps))

    def _bin(self, name: str, a: Any, b: Any) -> Handle:
        return Handle._symgrad_apply(OPS[name], (a, b), {})

    def __add__(self, o: Any) -> Handle:
        return self._bin("add", self, o)

    def __radd__(self, o: Any) -> Handle:
        return self._bin("add", o, self)

    def __sub__(self, o: Any) -> Handle:
        return self._bin("sub", self, o)

    def __rsub__(self, o: Any) -> Handle:
        return self._bin("sub", o, self)

    def __mul__(self, o: Any) -> Handle:
        return self._bin("mul", self, o)

    def __rmul__(self, o: Any) -> Handle:
        return self._bin("mul", o, self)

    def __truediv__(self, o: Any) -> Handle:
        return self._bin("div", self, o)

    def __rtruediv__(self, o: Any) -> Handle:
        return self._bin("div", o, self)

    def __neg__(self) -> Handle:
        return Handle._symgrad_apply(OPS["neg"], (self,), {})

    def __repr__(self) -> str:
        return f"Handle({self.atom!r})"


# ---- checking and running ------------------------------------------------------------------------


def verify(func: Func) -> Func:
    """Check that `func` is well-formed SSA; raise `IRError` naming the first problem."""
    defined: set[Var] = set()
    for a in func.args:
        if not isinstance(a, Var):
            raise IRError(f"argument {a!r} is not a Var")
        if a in defined:
            raise IRError(f"argument {a!r} is listed twice")
        defined.add(a)
    for i, ins in enumerate(func.body):
        where = f"instruction {i} ({ins.out!r} = {ins.op})"
        if ins.op not in OPS:
            raise IRError(f"{where}: unknown op {ins.op!r}")
        op = OPS[ins.op]
        if len(ins.args) != op.arity:
            raise IRError(f"{where}: {ins.op} takes {op.arity} operand(s), got {len(ins.args)}")
        if len(ins.params) != len(op.params):
            raise IRError(f"{where}: {ins.op} takes parameters {op.params}, got {ins.params}")
        for a in ins.args:
            if isinstance(a, Var) and a not in defined:
                raise IRError(f"{where}: uses {a!r} before it is defined")
            if not isinstance(a, (Var, Const)):
                raise IRError(f"{where}: operand {a!r} is not an atom")
        if ins.out in defined:
            raise IRError(f"{where}: {ins.out!r} is assigned twice (not SSA)")
        defined.add(ins.out)
    for r in func.results:
        if isinstance(r, Var) and r not in defined:
            raise IRError(f"result {r!r} is never defined")
        if not isinstance(r, (Var, Const)):
            raise IRError(f"result {r!r} is not an atom")
    return func


def evaluate(
    func: Func, args: Sequence[float], env: dict[Var, float] | None = None
) -> list[float]:
    """Run `func` on floats with each op's reference rule (``impl``): the IR's semantics.

    Pass a dict as `env` to get every intermediate value back in it.
    """
    if len(args) != len(func.args):
        raise ValueError(f"{func.name} takes {len(func.args)} arguments, got {len(args)}")
    env = {} if env is None else env
    env.update(zip(func.args, map(float, args), strict=True))

    def val(a: Atom) -> float:
        return a.value if isinstance(a, Const) else env[a]

    for ins in func.body:
        op = OPS[ins.op]
        env[ins.out] = op.impl(*(val(a) for a in ins.args), **ins.param_dict())
    return [val(r) for r in func.results]


def first_nonfinite(func: Func, args: Sequence[float]) -> tuple[int, Instr, float] | None:
    """The first instruction of `func` at `args` whose result is nan or inf, with its operands
    all finite (where the trouble starts); None if there is none."""
    env: dict[Var, float] = {}
    evaluate(func, args, env)
    for i, ins in enumerate(func.body):
        v = env[ins.out]
        if math.isfinite(v):
            continue
        ops_ = [a.value if isinstance(a, Const) else env[a] for a in ins.args]
        if all(math.isfinite(x) for x in ops_):
            return i, ins, v
    return None


# ---- names and printing --------------------------------------------------------------------------

# names generated code relies on; a label that sanitises to one of these gets a suffix
# (a kernel's globals and its array parameters: its locals are named from labels)
RESERVED = frozenset({
    "np", "math", "prange", "params", "inputs", "out", "grad", "params_dot", "out_dot",
    "grad_dot", "hess",
}) | frozenset(
    dir(builtins)
)

_TEMP = re.compile(r"v\d+$")


def sanitize(label: str) -> str:
    """A label as a safe ASCII identifier, or ``""`` when nothing usable is left.

    Non-identifier characters become ``_``; keywords, builtins and the generated code's own
    names get a trailing ``_``; names shaped like temporaries (``v12``) are left to the namer.
    """
    s = re.sub(r"[^0-9A-Za-z_]+", "_", label).strip("_")[:40]
    if not s:
        return ""
    if s[0].isdigit():
        s = "v_" + s
    if keyword.iskeyword(s) or keyword.issoftkeyword(s) or s in RESERVED:
        s += "_"
    return s


def names(func: Func) -> dict[Var, str]:
    """Give every Var of `func` a unique printable name: from its hint where safe, else ``v{n}``.

    Deterministic: it depends only on the order of arguments and instructions and on hints.
    """
    taken: set[str] = set()
    out: dict[Var, str] = {}
    allvars = list(func.args) + [ins.out for ins in func.body]
    for v in allvars:
        base = sanitize(v.hint) if v.hint else ""
        if not base or _TEMP.match(base):
            continue
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        out[v] = name
    n = 0
    for v in allvars:
        if v in out:
            continue
        while f"v{n}" in taken:
            n += 1
        out[v] = f"v{n}"
        taken.add(out[v])
    return out


def atom_text(a: Atom, nm: dict[Var, str]) -> str:
    """An atom as printed in the IR and in generated source (``_``: a Var no longer there;
    an empty `nm` prints every Var as ``v{id}``)."""
    if isinstance(a, Const):
        return format_literal(a.value)
    return nm.get(a, "_") if nm else repr(a)


def instr_text(ins: Instr, nm: dict[Var, str]) -> str:
    """One instruction as a line of IR: ``o = tanh(n)``, ``v3 = pow(x, p=2.0)``."""
    args = [atom_text(a, nm) for a in ins.args]
    args += [f"{k}={format_literal(v)}" for k, v in ins.param_dict().items()]
    return f"{atom_text(ins.out, nm)} = {ins.op}({', '.join(args)})"


def to_text(func: Func) -> str:
    """The IR for people, one instruction a line, derivative provenance as comments."""
    nm = names(func)
    lines = [f"{func.name}({', '.join(nm[a] for a in func.args)}):"]
    for ins in func.body:
        line = "  " + instr_text(ins, nm)
        if ins.origin is not None:
            line = f"{line:<34}  # {ins.note} of {instr_text(ins.origin, nm)}"
        lines.append(line)
    lines.append("  return " + ", ".join(atom_text(r, nm) for r in func.results))
    return "\n".join(lines)

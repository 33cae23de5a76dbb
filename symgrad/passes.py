"""Optimisation passes, IR -> IR: constant folding, algebraic simplification, CSE, DCE.

Imports from symgrad: `ops` (`OPS`), `ir` (`Atom`, `Builder`, `Const`, `Func`, `Var`) and
`rewrite` (`live`, `rebuild`). Each pass returns a new `Func` computing bit-for-bit the same
results under IEEE rules, nan and inf included. Folding, simplification and CSE are "replay the
body through a `Builder` with that feature on"; DCE is a backward liveness sweep. The identities
simplification uses are the rows of `SIMPLIFY_RULES`; those it leaves out on purpose are the
rows of `NOT_SIMPLIFIED`.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Callable
from dataclasses import dataclass

from .ir import Atom, Builder, Const, Func, Var
from .ops import OPS
from .rewrite import live, rebuild

__all__ = [
    "NOT_SIMPLIFIED", "SIMPLIFY_RULES", "Rule", "cse", "dce", "fold", "optimize", "replay",
    "simplify", "simplify_rule",
]


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
    """Algebraic simplification with the IEEE-exact identities of `SIMPLIFY_RULES`."""
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


# ---- the rewrite rules, as data ------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """An identity ``pattern -> replacement`` and why it holds (or, left out, why it fails).

    Both sides are Python expressions over variables, float literals and the IR's ops: ``+ - *
    /``, unary ``-`` (neg), ``x ** 2`` (pow with p=2) and calls such as ``tanh(x)``. A literal is
    matched bit for bit, so ``-0.0`` never matches ``0.0``; a variable matches any atom (the
    same atom wherever it occurs). A rule for a commutative op matches its operands swapped too.
    """

    pattern: str
    replacement: str
    why: str

    def __str__(self) -> str:
        return f"{self.pattern} -> {self.replacement}"

    def variables(self) -> list[str]:
        """The pattern's variables, sorted."""
        return sorted(_variables(_parse(self.pattern)))

    def as_funcs(self) -> tuple[Func, Func]:
        """The pattern and the replacement as unoptimised functions of `variables`."""
        sides = []
        for name, text in (("pattern", self.pattern), ("replacement", self.replacement)):
            b = Builder()
            bound: dict[str, Atom] = {v: b.arg(v) for v in self.variables()}
            sides.append(b.build(name, [_emit_term(b, _parse(text), bound)]))
        return sides[0], sides[1]


# each row is exact for every float: -0.0, inf and nan (whose sign IEEE leaves open) included;
# tests/test_passes.py checks every row bit for bit on unrestricted floats
SIMPLIFY_RULES: tuple[Rule, ...] = (
    Rule("x*1", "x", "multiplying by one is exact, and keeps inf, nan and the sign of zero"),
    Rule("x*-1", "-x", "multiplying by -1 is exact: it flips the sign bit, as neg does"),
    Rule("x/1", "x", "dividing by one is exact, and keeps inf, nan and the sign of zero"),
    Rule("x+(-0.0)", "x", "-0.0 is the additive identity: -0.0 + -0.0 is -0.0, 0.0 + -0.0 is 0.0"),
    Rule("x-0.0", "x", "x - 0.0 is x + (-0.0)"),
    Rule("x**1", "x", "pow with exponent 1 returns its base"),
    Rule("-(-x)", "x", "negating twice flips the sign bit twice"),
    Rule("x+(-y)", "x-y", "IEEE subtraction is addition of the negation"),
    Rule("x-(-y)", "x+y", "IEEE subtraction is addition of the negation"),
    Rule("(-x)*(-y)", "x*y", "the sign of a product is the xor of its factors' signs"),
)

# tempting, but IEEE breaks them (tests/test_passes.py finds each one wrong at a special value)
NOT_SIMPLIFIED: tuple[Rule, ...] = (
    Rule("x*0", "0", "inf * 0 and nan * 0 are nan; -1 * 0 is -0.0"),
    Rule("x+0.0", "x", "-0.0 + 0.0 is 0.0"),
    Rule("x-x", "0", "inf - inf and nan - nan are nan"),
    Rule("x/x", "1", "0 / 0 and inf / inf are nan"),
)


@dataclass(frozen=True)
class _Op:
    """A pattern node: `op` applied to terms, with static parameters."""

    op: str
    args: tuple[_Term, ...]
    params: tuple[float, ...] = ()


_Term = str | Const | _Op  # a variable's name, a literal, or an op applied to terms

_BINOPS: dict[type[ast.operator], str] = {
    ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div",
}


def _parse(text: str) -> _Term:
    """A rule's side as a term (see `Rule` for the syntax)."""
    return _term(ast.parse(text, mode="eval").body, text)


def _term(node: ast.expr, text: str) -> _Term:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Const(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _term(node.operand, text)
        return Const(-inner.value) if isinstance(inner, Const) else _Op("neg", (inner,))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        p = _term(node.right, text)
        if isinstance(p, Const):
            return _Op("pow", (_term(node.left, text),), (p.value,))
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _Op(_BINOPS[type(node.op)], (_term(node.left, text), _term(node.right, text)))
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in OPS:
        given = {k.arg: _term(k.value, text) for k in node.keywords}
        ps = [given.get(p) for p in OPS[node.func.id].params]
        if all(isinstance(p, Const) for p in ps):
            args = tuple(_term(a, text) for a in node.args)
            return _Op(node.func.id, args, tuple(p.value for p in ps if isinstance(p, Const)))
    raise ValueError(f"rule {text!r}: cannot read {ast.unparse(node)!r}")


def _variables(term: _Term) -> set[str]:
    if isinstance(term, str):
        return {term}
    return set().union(*map(_variables, term.args)) if isinstance(term, _Op) else set()


@dataclass(frozen=True)
class _OpRules:
    """The rows for one op, and what an operand must be for any of them to match: one of
    `literals`, or a Var defined by one of `nested` (unless some row takes any operands)."""

    rows: tuple[tuple[_Op, _Term], ...]
    literals: frozenset[Const]
    nested: frozenset[str]
    any_operands: bool


def _compile(rules: tuple[Rule, ...]) -> dict[str, _OpRules]:
    """The rules by their pattern's op, in table order, each followed by its mirror image when
    the op is commutative."""
    rows: dict[str, list[tuple[_Op, _Term]]] = {}
    for rule in rules:
        pattern, replacement = _parse(rule.pattern), _parse(rule.replacement)
        if not isinstance(pattern, _Op):
            raise ValueError(f"rule {rule}: the pattern must be an op")
        variants = [pattern]
        swapped = _Op(pattern.op, pattern.args[::-1], pattern.params)
        if OPS[pattern.op].commutative and swapped != pattern:
            variants.append(swapped)
        rows.setdefault(pattern.op, []).extend((v, replacement) for v in variants)
    table = {}
    for op, rs in rows.items():
        args = [t for p, _ in rs for t in p.args]
        table[op] = _OpRules(
            tuple(rs), frozenset(t for t in args if isinstance(t, Const)),
            frozenset(t.op for t in args if isinstance(t, _Op)),
            any(all(isinstance(t, str) for t in p.args) for p, _ in rs),
        )
    return table


_RULES = _compile(SIMPLIFY_RULES)


def _match(
    b: Builder, terms: tuple[_Term, ...], atoms: tuple[Atom, ...], bound: dict[str, Atom]
) -> bool:
    """Do `atoms` have the shapes of `terms`? Binds the terms' variables in `bound`."""
    # literals and nested ops first: they are what rejects, and cheaply
    for t, a in zip(terms, atoms, strict=True):
        if isinstance(t, Const):
            if t != a:
                return False
        elif isinstance(t, _Op):
            d = b.defs.get(a) if isinstance(a, Var) else None
            if d is None or d.op != t.op or d.params != t.params:
                return False
            if not _match(b, t.args, d.args, bound):
                return False
    for t, a in zip(terms, atoms, strict=True):
        if isinstance(t, str) and bound.setdefault(t, a) != a:
            return False
    return True


def _emit_term(b: Builder, term: _Term, bound: dict[str, Atom]) -> Atom:
    """Emit `term` into `b` with its variables as bound."""
    if isinstance(term, str):
        return bound[term]
    if isinstance(term, Const):
        return term
    return b.emit(term.op, [_emit_term(b, t, bound) for t in term.args], term.params)


def simplify_rule(
    b: Builder, op: str, args: tuple[Atom, ...], params: tuple[float, ...]
) -> Atom | None:
    """One rewrite step for `Builder.emit`: the first row of `SIMPLIFY_RULES` whose pattern
    matches ``op(args; params)`` gives the replacement atom; None emits the op as it is."""
    rules = _RULES.get(op)
    if rules is None or not (rules.any_operands or _may_match(b, rules, args)):
        return None
    for pattern, replacement in rules.rows:
        bound: dict[str, Atom] = {}
        if pattern.params == params and _match(b, pattern.args, args, bound):
            return _emit_term(b, replacement, bound)
    return None


def _may_match(b: Builder, rules: _OpRules, args: tuple[Atom, ...]) -> bool:
    """A quick look before matching (most instructions match no row): is some operand a
    literal or a nested op that a row of `rules` names?"""
    for a in args:
        if isinstance(a, Const):
            if a in rules.literals:
                return True
        else:
            d = b.defs.get(a)
            if d is not None and d.op in rules.nested:
                return True
    return False

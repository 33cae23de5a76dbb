"""A NumPy executor for a `Tape`: whole batches at once, a dense layer as one matrix product.

Imports `ops`, `tape` and `executors.base`. The Numba interpreter walks the tape one
instruction at a time over blocks of 32 examples; its cost is per instruction and per block.
This executor makes one NumPy call per run of the tape over many examples at a time (up to
`CHUNK` columns of a workspace ``work[row, example]``), which is what pays on wide models:

1. elementwise runs gather their operand rows, apply the op's vectorised form (`vector_op`,
   derived from the op table's template) and write the output rows;
2. a run of fused sums of products (`tape.DOT`) is split into groups of steps whose per-example
   factors are the same rows (a dense layer: ``out[i] = b[i] + sum_j W[i, j] * x[j]``); each
   group is one matrix product ``W @ work[x rows]`` with W gathered from the parameters (a bias
   ``b * 1.0`` is a column of W times a row of ones); terms no product covers (products of two
   per-example values, irregular steps) are summed by gathers, in the tape's order;
3. gradients that are products summed over the examples (``Tape.result_b``) are grouped into
   blocks whose factor rows form a complete bipartite grid (every B row paired with every A
   row); each block is one product ``work[B] @ work[A].T`` over the chunk's examples;
4. tanh's derivative, which the IR computes by the op table's rule as ``d = 1.0 - o*o`` with
   ``o = tanh(n)``, is computed as ``sech(n)**2 = 1 / cosh(n)**2`` from n instead (n is kept
   alive until then, and the square o*o, if nothing else reads it, is not computed): ``1 - o*o``
   cancels, it has no relative accuracy once tanh(n) is near 1 and is 0.0 from ``|n|`` about
   19, which leaves a saturated unit with no gradient at all. sech(n)**2 keeps full relative
   accuracy down to the smallest normal double (it is 0.0, never nan, beyond ``|n|`` about 355).

Parameters and literals are never broadcast over examples: they live in a vector ``u`` indexed
by tape slot, and only per-example values get workspace rows. Rows are given out again here
(first fit, contiguous per run, in operand order), so most gathers and writes are slices.

Numerics: the ops are the same IEEE operations, but sums may be reordered: a matrix product
adds its terms in its own order (starting from +0.0), gradients are summed per chunk, pairwise,
then over chunks. So results are NOT bit-identical to the interpreted engine or the Numba tape:
they agree to about 1e-12 relative on well-conditioned models. nan and inf appear where the
tape has them (no product adds a term the tape does not have, so no ``0 * inf`` appears that
the tape lacks), except where a sum overflows part way in one order and not in the other, or a
-0.0 sum becomes +0.0 and is then divided by. Sums outside matrix products keep the tape's order
and bits. numpy's SIMD exp, log, tanh, pow may differ from libm's (the engine's, Numba's) by a
few ulps. tanh's derivative is more accurate than the exact backends' (item 4), so a
saturated unit's gradients differ from theirs by more than rounding: they are right where the
exact backends' are 0.0 or have few correct digits. This is an explicit opt-in backend for these
reasons; it pays on big models (dense layers of tens of units and more) over batches of hundreds
of rows or more, where matrix products and numpy's vectorised tanh beat the exact backends,
especially when the machine is busy.
"""

from __future__ import annotations

import ast
import itertools
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..ops import OPS, OpDef
from ..tape import DOT, OPCODES, Tape
from .base import TapeExecutor

__all__ = ["CHUNK", "MEMORY", "Plan", "VectorOp", "VectorPlan", "plan", "run", "vector_op"]

CHUNK = 2048  # most examples per pass over the tape (measured best of 512..4096)
MIN_CHUNK = 64  # fewest examples per pass, whatever the memory estimate says
MEMORY = 64 << 20  # bytes of workspace and temporaries one pass aims to stay under
MAX_MATMULS = 16  # matrix products per DOT run; smaller groups go to the pooled gather path

Index = slice | np.ndarray

# static parameters (pow's exponents) numpy must not see as one number for a whole loop: its
# fast path computes x ** 0.5 as sqrt(x), and sqrt(-0.0) = -0.0, sqrt(-inf) = nan where pow (the
# tape's, the engine's) gives 0.0 and inf; the test of pow through the executor guards the rest
SCALAR_UNSAFE = frozenset({0.5})


# ---- vectorised forms of the op table --------------------------------------------------------


@dataclass(frozen=True)
class VectorOp:
    """An op's template rewritten for arrays.

    Attributes:
        name: the op.
        source: the vectorised expression over operands ``x0``, ``x1``, ... and the op's parameters
            (each a ``(k, 1)`` column in a run: one value per instruction).
        fn: ``fn(x0, [x1, ...,] *params) -> array``.
        ufunc: when the expression is a single ufunc of the arguments (``np.tanh(x0)``,
            ``x0 + x1``, ``x0 ** p``), that ufunc, so runs can write in place with ``out=``.
        ufunc_args: positions in fn's arguments of the ufunc's operands, in order.
    """

    name: str
    source: str
    fn: Callable[..., np.ndarray]
    ufunc: np.ufunc | None
    ufunc_args: tuple[int, ...]


class _Vectorise(ast.NodeTransformer):
    """Rewrite the scalar-only constructs of a template for arrays, in this one place.

    ``a if c else b`` (relu's and step's templates) becomes ``np.where(c, a, b)``; ``and``,
    ``or`` and ``not`` become numpy's logical ufuncs. Everything else in a template (numpy
    ufuncs, arithmetic operators, numpy scalars) already broadcasts over arrays.
    """

    @staticmethod
    def _np(name: str, args: list[ast.expr]) -> ast.Call:
        return ast.Call(ast.Attribute(ast.Name("np", ast.Load()), name, ast.Load()), args, [])

    def visit_IfExp(self, node: ast.IfExp) -> ast.AST:
        self.generic_visit(node)
        return self._np("where", [node.test, node.body, node.orelse])

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        name = "logical_and" if isinstance(node.op, ast.And) else "logical_or"
        out = node.values[0]
        for v in node.values[1:]:
            out = self._np(name, [out, v])
        return out

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Not):
            return self._np("logical_not", [node.operand])
        return node


# functions templates call (see `symgrad.jit.template_globals`), as numpy ufuncs: numpy's own
# pow, which is not libm's bit for bit (this backend is not exact)
_CALLS: dict[str, np.ufunc] = {"pow_libm": np.power}

_BINOPS: dict[type, np.ufunc] = {
    ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.true_divide,
    ast.Pow: np.power,
}


def _single_ufunc(tree: ast.expr, names: list[str]) -> tuple[np.ufunc | None, tuple[int, ...]]:
    """``(ufunc, argument positions)`` if `tree` is one ufunc applied to bare arguments."""

    def arg(e: ast.expr) -> int | None:
        return names.index(e.id) if isinstance(e, ast.Name) and e.id in names else None

    if isinstance(tree, ast.BinOp) and type(tree.op) in _BINOPS:
        ufunc, operands = _BINOPS[type(tree.op)], [tree.left, tree.right]
    elif isinstance(tree, ast.UnaryOp) and isinstance(tree.op, ast.USub):
        ufunc, operands = np.negative, [tree.operand]
    elif (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Attribute)
          and isinstance(tree.func.value, ast.Name) and tree.func.value.id == "np"
          and not tree.keywords
          and isinstance(getattr(np, tree.func.attr, None), np.ufunc)):
        ufunc, operands = getattr(np, tree.func.attr), list(tree.args)
    elif (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name)
          and tree.func.id in _CALLS and not tree.keywords):
        ufunc, operands = _CALLS[tree.func.id], list(tree.args)
    else:
        return None, ()
    pos = [arg(e) for e in operands]
    if any(p is None for p in pos) or len(pos) != ufunc.nin:
        return None, ()
    return ufunc, tuple(p for p in pos if p is not None)


_vector_ops: dict[str, VectorOp] = {}
_vector_lock = threading.Lock()


def vector_op(name: str) -> VectorOp:
    """The vectorised form of op `name`, derived from its template (`OpDef.py`) and cached.

    Raises:
        ValueError: the template does not work on arrays even after the rewrite (a new op
            whose template needs a hand-written array form).
    """
    with _vector_lock:
        vop = _vector_ops.get(name)
        if vop is None:
            vop = _vector_ops[name] = _derive(OPS[name])
    return vop


def _derive(op: OpDef) -> VectorOp:
    names = [f"x{i}" for i in range(op.arity)] + list(op.params)
    expr = op.py.format(*names[: op.arity], **{p: p for p in op.params})
    tree = ast.fix_missing_locations(_Vectorise().visit(ast.parse(expr, mode="eval")))
    source = ast.unparse(tree)
    fn = eval(f"lambda {', '.join(names)}: {source}", {"np": np, **_CALLS})  # a trusted table
    ufunc, pos = _single_ufunc(tree.body, names)
    probe = [np.array([[0.5, -1.5], [2.0, 3.0]])] * op.arity + [np.full((2, 1), 2.0)] * len(
        op.params
    )
    try:
        with np.errstate(all="ignore"):
            got = np.broadcast_to(fn(*probe), (2, 2))
    except Exception as e:  # any failure means the template is scalar-only
        raise ValueError(f"op {op.name!r}: template {op.py!r} has no array form ({e})") from e
    if got.dtype != np.float64:
        raise ValueError(f"op {op.name!r}: array form {source!r} gives {got.dtype}, not float64")
    return VectorOp(op.name, source, fn, ufunc, pos)


def _sech2(x: np.ndarray) -> np.ndarray:
    """sech(x)**2 with full relative accuracy, as ``1 / cosh(x)**2`` (cosh has no cancellation,
    and the square and reciprocal add two roundings). Past ``|x|`` about 355 cosh(x)**2
    overflows to inf and the result is 0.0 (sech(x)**2 is subnormal there), never nan; nan
    stays nan."""
    c = np.cosh(x, out=np.empty(np.shape(x)))  # an array even for a uniform (0-d) operand
    np.multiply(c, c, out=c)
    return np.reciprocal(c, out=c)


# tanh's derivative computed from tanh's operand n rather than from its output o: the op
# table's ``1 - o*o`` (which the exact backends keep) cancels to 0.0 from |n| about 19
SECH2 = VectorOp("sech2", "1.0 / np.cosh(x0) ** 2", _sech2, None, ())


# ---- the plan: the tape rewritten as array steps ---------------------------------------------


def _index(rows: list[int] | np.ndarray, broadcast: bool = False) -> Index:
    """Rows as a slice when they are consecutive, up or down (a view, no copy), else an index
    array. With `broadcast`, the same row k times is the one-row slice (for elementwise
    operands, which broadcast it)."""
    r = np.asarray(rows, dtype=np.int64)
    if len(r) == 0:
        return r
    first, last = int(r[0]), int(r[-1])
    if len(r) == 1 or bool(np.all(np.diff(r) == 1)):
        return slice(first, last + 1)
    if bool(np.all(np.diff(r) == -1)):
        return slice(first, last - 1 if last > 0 else None, -1)
    if broadcast and bool(np.all(r == first)):
        return slice(first, first + 1)
    return r


class _Rows:
    """Workspace rows, given out first fit in contiguous blocks (a run's outputs are a slice)."""

    def __init__(self) -> None:
        self.used = bytearray()

    def alloc(self, k: int) -> int:
        if k == 0:
            return 0
        i = self.used.find(bytes(k))
        if i < 0:
            tail = len(self.used) - len(self.used.rstrip(b"\x00"))
            i = len(self.used) - tail
            self.used.extend(bytes(k - tail))
        self.used[i: i + k] = b"\x01" * k
        return i

    def free(self, r: int) -> None:
        self.used[r] = 0

    def __len__(self) -> int:
        return len(self.used)


class _Elementwise:
    """One run (or the part of it with one pattern of per-example/uniform operands)."""

    __slots__ = ("fn", "getters", "inplace", "out", "take", "temp", "uargs", "ufunc")

    def __init__(self, vop: VectorOp, args: list[tuple[str, Any]], out: Index, k: int) -> None:
        # args: ("rows", row index), ("uniform", slots (k, 1) or one slot), ("param", one
        # number), ("param_array", (k, 1) column, made a whole array at run time)
        self.fn, self.ufunc, self.out = vop.fn, vop.ufunc, out
        self.getters: list[Callable[[np.ndarray, np.ndarray], Any]] = []
        self.take: list[int] = []  # fn's i-th argument is getters[take[i]]'s value
        for i, (kind, ix) in enumerate(args):
            if i == 1 and kind == "rows" and args[0][0] == "rows" and _same(args[0][1], ix):
                self.take.append(0)  # x * x reads the same rows twice: gather once
                continue
            self.take.append(len(self.getters))
            self.getters.append(_getter(kind, ix, k))
        self.uargs = [self.take[i] for i in vop.ufunc_args]
        self.inplace = vop.ufunc is not None and isinstance(out, slice)
        self.temp = k * (sum(1 for a in args if a[0] == "rows" and not isinstance(a[1], slice))
                         + (0 if self.inplace else 1))

    def __call__(self, work: np.ndarray, u: np.ndarray) -> None:
        vals = [g(work, u) for g in self.getters]
        if self.inplace:
            self.ufunc(*[vals[j] for j in self.uargs], out=work[self.out])  # type: ignore
        else:
            work[self.out] = self.fn(*[vals[j] for j in self.take])


def _getter(kind: str, ix: Any, k: int) -> Callable[[np.ndarray, np.ndarray], Any]:
    if kind == "rows":
        return lambda work, u: work[ix]
    if kind == "uniform":
        return lambda work, u: u[ix]
    if kind == "param":  # one static parameter for the whole run: a scalar (numpy's fast paths)
        return lambda work, u: ix

    def param_array(work: np.ndarray, u: np.ndarray) -> np.ndarray:
        full = np.empty((k, work.shape[1]))
        full[...] = ix
        return full

    return param_array


def _count(ix: Index) -> int:
    return len(range(*ix.indices(1 << 62))) if isinstance(ix, slice) else len(ix)


def _same(a: Index, b: Index) -> bool:
    if isinstance(a, slice) or isinstance(b, slice):
        return isinstance(a, slice) and isinstance(b, slice) and a == b
    return a.shape == b.shape and bool(np.all(a == b))


Factor = tuple[bool, int]  # (a workspace row?, the row or the uniform slot)


class _Factors:
    """One factor of each of T terms: a workspace row, or a uniform value (``u[slot]``)."""

    __slots__ = ("kind", "n", "rows", "rows_at", "slots", "slots_at")

    def __init__(self, items: list[Factor]) -> None:
        self.n = len(items)
        r = [(i, x) for i, (is_row, x) in enumerate(items) if is_row]
        q = [(i, x) for i, (is_row, x) in enumerate(items) if not is_row]
        self.rows_at = np.array([i for i, _ in r], np.int64)
        self.rows = _index([x for _, x in r])
        self.slots_at = np.array([i for i, _ in q], np.int64)
        self.slots = np.array([x for _, x in q], np.int64).reshape(-1, 1)
        self.kind = "rows" if not q else "uniform" if not r else "mixed"

    def get(self, work: np.ndarray, u: np.ndarray) -> np.ndarray:
        if self.kind == "rows":
            return work[self.rows]
        if self.kind == "uniform":
            return u[self.slots]  # (T, 1): broadcasts over the examples
        out = np.empty((self.n, work.shape[1]))
        out[self.rows_at] = work[self.rows]
        out[self.slots_at] = u[self.slots]
        return out


class _Terms:
    """Sums of products ``a_t * b_t`` over segments of terms, one segment per output row.

    Steps are grouped by their number of terms L, so a group's products reshape to
    ``(steps, L, examples)``; the sum starts from the first product and adds the next ones in
    order, as the tape's DOT loop does: these sums are the tape's, bit for bit. (numpy's own
    reductions may sum pairwise, and start from +0.0, which turns a -0.0 sum into +0.0.)
    """

    __slots__ = ("a", "assign", "b", "groups")

    def __init__(self, terms: list[tuple[int, Factor, Factor]], out_row: dict[int, int],
                 assign: bool) -> None:
        by_step: dict[int, list[tuple[Factor, Factor]]] = {}
        for k, fa, fb in terms:  # in the tape's order within each step
            by_step.setdefault(k, []).append((fa, fb))
        by_len: dict[int, list[int]] = {}
        for k, ts in by_step.items():
            by_len.setdefault(len(ts), []).append(k)
        flat: list[tuple[Factor, Factor]] = []
        self.groups: list[tuple[int, int, int, Index]] = []  # (first term, steps, L, out rows)
        for length, ks in sorted(by_len.items()):
            self.groups.append((len(flat), len(ks), length, _index([out_row[k] for k in ks])))
            flat += [t for k in ks for t in by_step[k]]
        self.a = _Factors([fa for fa, _ in flat])
        self.b = _Factors([fb for _, fb in flat])
        self.assign = assign

    def __call__(self, work: np.ndarray, u: np.ndarray) -> None:
        prod = self.a.get(work, u) * self.b.get(work, u)
        for t0, n, length, out in self.groups:
            q = prod[t0: t0 + n * length].reshape(n, length, -1)
            s = q[:, 0].copy()
            for j in range(1, length):
                s += q[:, j]
            if self.assign:
                work[out] = s
            else:
                work[out] += s


class _Dot:
    """A run of fused sums of products: matrix products, then the terms no product covers."""

    __slots__ = ("extra", "mats", "rest", "temp")

    def __init__(self) -> None:
        self.mats: list[tuple[np.ndarray, Index, slice]] = []  # (W slots, x rows, out rows)
        self.extra: _Terms | None = None  # other terms of the steps in a matrix product
        self.rest: _Terms | None = None  # steps in no matrix product
        self.temp = 0

    def __call__(self, work: np.ndarray, u: np.ndarray) -> None:
        for wslots, xrows, out in self.mats:
            np.matmul(u[wslots], work[xrows], out=work[out])
        if self.extra is not None:
            self.extra(work, u)
        if self.rest is not None:
            self.rest(work, u)


_NONE = np.zeros(0, np.int64)


@dataclass
class _Results:
    """Where each result is read from at the end of a pass, by kind."""

    n_out: int
    n_acc: int
    # values: (columns, rows) and (columns, uniform slots)
    val_rows: tuple[np.ndarray, Index] = (_NONE, _NONE)
    val_u: tuple[np.ndarray, np.ndarray] = (_NONE, _NONE)
    # accumulated results that are values: pieces (acc columns, rows), and (acc columns, slots)
    plain_rows: list[tuple[np.ndarray, Index]] = field(default_factory=list)
    plain_u: tuple[np.ndarray, np.ndarray] = (_NONE, _NONE)
    # products summed over examples: grid blocks (B rows, A rows, acc columns, flat picks)
    grids: list[tuple[Index, Index, np.ndarray, np.ndarray]] = field(default_factory=list)
    # products that fit no grid, by factor kinds: rows x rows, rows x uniform, uniform x uniform
    # (acc columns, first factor, second factor); a uniform factor is slots, (n, 1) for rows
    prod_rr: tuple[np.ndarray, Index, Index] = (_NONE, _NONE, _NONE)
    prod_ru: tuple[np.ndarray, Index, np.ndarray] = (_NONE, _NONE, _NONE)
    prod_uu: tuple[np.ndarray, np.ndarray, np.ndarray] = (_NONE, _NONE, _NONE)
    # per-row mode, result-major: (kind, acc columns, a, b); kind "row": the results are rows
    # a, "u": slots a, "rr" / "ru" / "uu": products of rows / row and slot / slots a and b,
    # "grid": a grid block (B rows a, A rows b, columns: the strides (first, di, dj) when the
    # block's results are evenly spaced, as a dense layer's weights are, else (gcols, picks))
    per_row: list[tuple[str, Any, Any, Any]] = field(default_factory=list)


@dataclass
class Plan:
    """A tape rewritten as array steps over a compact workspace, for `n_params` parameters.

    Attributes:
        n_rows: workspace rows (per-example values alive at once; parameters have none).
        x_rows: the rows the per-example arguments are written to (a slice, in X's order).
        ones_row: a row of 1.0 (biases are a column of a layer's matrix), or None.
        n_slots: the tape's slots: the length of the uniform vector ``u``.
        param_slots, const_slots, const_values: where parameters and literals go in ``u``.
        steps: callables ``step(work, u)``, in tape order.
        results: where results are read.
        temp_rows: the most rows of temporaries one step makes (for the memory estimate).
        stats: counts for `describe` and tests (matrix products, grids, terms covered, tanh
            derivatives computed from tanh's operand).
    """

    n_rows: int
    x_rows: slice
    ones_row: int | None
    n_slots: int
    param_slots: np.ndarray
    const_slots: np.ndarray
    const_values: np.ndarray
    steps: list[Callable[[np.ndarray, np.ndarray], None]]
    results: _Results
    temp_rows: int
    stats: dict[str, int]

    def chunk(self, per_row: bool) -> int:
        """Examples per pass: as many as fit in `MEMORY`, within [MIN_CHUNK, CHUNK]."""
        rows = self.n_rows + self.temp_rows + self.results.n_out
        if per_row:  # the gathered factors, their products, then the transpose into acc
            rows += 4 * self.results.n_acc
        return int(min(CHUNK, max(MIN_CHUNK, MEMORY // (8 * max(rows, 1)))))

    def describe(self) -> str:
        """A short summary, for people."""
        s = self.stats
        return (
            f"# vector plan: {len(self.steps)} steps, {self.n_rows} workspace rows, "
            f"{s['matmuls']} matrix products ({s['matmul_terms']} of {s['terms']} fused terms), "
            f"{s['grids']} gradient grids ({s['grid_products']} of {s['products']} products), "
            f"{s['sech2']} tanh derivatives as sech(n)**2"
        )


Operand = tuple[bool, int]  # (per-example?, its value id, or its uniform slot)


@dataclass
class _Values:
    """Per-example values of a tape: every write of a per-example slot is a new value, with an
    id (vid); instruction k's output is ``base + k``, the per-example arguments are 0..base-1.

    Attributes:
        base: the number of per-example arguments.
        reads: run -> the vids it reads.
        last: vid -> the last run reading it (``len(runs)`` for results); a vid not in it is
            never read (a square only tanh's derivative read).
        end: slot -> the vid it holds at the end.
        sech2: instruction k computing ``1.0 - o*o`` with ``o = tanh(n)`` (tanh's derivative by
            the op table's rule) -> n: k is computed as ``sech(n)**2`` from n.
    """

    base: int
    reads: dict[int, list[int]] = field(default_factory=dict)
    last: dict[int, int] = field(default_factory=dict)
    end: dict[int, int] = field(default_factory=dict)
    sech2: dict[int, Operand] = field(default_factory=dict)


class _TanhDerivatives:
    """Finds, while the tape is walked, ``d = sub(1.0, v)`` with ``v = mul(o, o)`` and
    ``o = tanh(n)``. ``1 - tanh(n)**2`` cancels: it has no relative accuracy once tanh(n) is
    near 1 and is 0.0 from ``|n|`` about 19, where sech(n)**2 is still far from underflow."""

    def __init__(self, tape: Tape, uniform: np.ndarray, base: int) -> None:
        self.tape, self.uniform, self.base = tape, uniform, base
        self.ones = {int(s) for s, v in zip(tape.const_slots, tape.const_values, strict=True)
                     if v == 1.0}
        self.tanh_of: dict[int, Operand] = {}  # vid of o -> n
        self.square_of: dict[int, Operand] = {}  # vid of v -> n
        self.found: dict[int, Operand] = {}  # instruction of d -> n

    def see(self, name: str, lo: int, hi: int, cur: dict[int, int]) -> None:
        """Run [lo, hi) of op `name`, its operands' slots holding the vids `cur`."""
        if name not in ("tanh", "mul", "sub"):
            return
        u, t = self.uniform, self.tape
        for k, a, b in zip(range(lo, hi), t.a0[lo:hi].tolist(), t.a1[lo:hi].tolist(),
                           strict=True):
            if name == "tanh":
                self.tanh_of[self.base + k] = (False, a) if u[a] else (True, cur[a])
            elif name == "mul" and a == b and not u[a] and cur[a] in self.tanh_of:
                self.square_of[self.base + k] = self.tanh_of[cur[a]]
            elif name == "sub" and a in self.ones and not u[b] and cur[b] in self.square_of:
                self.found[k] = self.square_of[cur[b]]


def _operand_vids(tape: Tape, uniform: np.ndarray, n_params: int) -> _Values:
    """The tape's per-example values, which runs read them, and tanh's derivatives."""
    x_slots = [int(s) for s in tape.arg_slots[n_params:]]
    cur = {s: i for i, s in enumerate(x_slots)}
    vals = _Values(base=len(x_slots))
    tanh_d = _TanhDerivatives(tape, uniform, vals.base)
    names = {v: k for k, v in OPCODES.items()}
    for g, (opc, lo, hi) in enumerate(tape.runs.tolist()):
        if opc == DOT:
            t0, t1 = int(tape.a0[lo]), int(tape.a1[hi - 1])
            slots = np.concatenate([tape.ta[t0:t1], tape.tb[t0:t1]])
            extra: list[int] = []
        else:
            tanh_d.see(names[opc], lo, hi, cur)
            ks = [k for k in range(lo, hi) if k not in tanh_d.found]
            arity = OPS[names[opc]].arity
            slots = np.concatenate([a[ks] for a in _operand_arrays(tape)[:arity]])
            extra = [n for k in range(lo, hi) if k in tanh_d.found
                     for is_row, n in [tanh_d.found[k]] if is_row]
        slots = np.unique(slots[~uniform[slots]])
        vids = sorted({cur[int(s)] for s in slots} | set(extra))
        for v in vids:
            vals.last[v] = g
        vals.reads[g] = vids
        for k in range(lo, hi):
            cur[int(tape.out[k])] = vals.base + k
    end = len(tape.runs)
    for s in np.concatenate([tape.result_slots, tape.result_b[tape.result_b >= 0]]).tolist():
        if not uniform[s]:
            vals.last[cur[s]] = end
    vals.end, vals.sech2 = cur, tanh_d.found
    return vals


def _build(tape: Tape, n_params: int, n_out: int) -> Plan:
    """Walk the runs in order, planning each and giving its outputs workspace rows."""
    uniform = np.zeros(tape.n_slots, bool)
    uniform[tape.arg_slots[:n_params]] = True
    uniform[tape.const_slots] = True
    vals = _operand_vids(tape, uniform, n_params)
    base = vals.base
    rows = _Rows()
    unit = {int(s) for s, v in zip(tape.const_slots, tape.const_values, strict=True)
            if v == 1.0}
    # a row of ones for the biases, just before the arguments' rows: a first layer's inputs
    # and the ones are then one slice
    ones_row = rows.alloc(1) if unit and bool(np.any(tape.runs[:, 0] == DOT)) else None
    r0 = rows.alloc(base)
    row_of: dict[int, int] = {v: r0 + v for v in range(base)}  # vid -> row
    x_rows = slice(r0, r0 + base)
    cur: dict[int, int] = dict(zip(tape.arg_slots[n_params:].tolist(), range(base), strict=True))
    names = {v: k for k, v in OPCODES.items()}
    steps: list[Callable[[np.ndarray, np.ndarray], None]] = []
    stats = {"matmuls": 0, "matmul_terms": 0, "terms": 0, "grids": 0, "grid_products": 0,
             "products": 0, "sech2": len(vals.sech2)}
    temp = 0

    def row(slot: int) -> int:
        return row_of[cur[slot]]

    for g, (opc, lo, hi) in enumerate(tape.runs.tolist()):
        if opc == DOT:
            order, made = _plan_dot(tape, lo, hi, uniform, row, stats, unit, ones_row)
        else:
            order, made = _plan_run(tape, names[opc], lo, hi, uniform, row, vals, row_of)
        # outputs get a contiguous block BEFORE this run's dead operands are freed: no step
        # writes a row another of its operands is still read from
        start = rows.alloc(hi - lo)
        out_row = {k: start + i for i, k in enumerate(order)}
        for k in range(lo, hi):
            row_of[base + k] = out_row[k]
            cur[int(tape.out[k])] = base + k
        for step in made(out_row):
            steps.append(step)
            temp = max(temp, step.temp)  # type: ignore[attr-defined]
        for v in vals.reads[g]:
            if vals.last[v] == g:
                rows.free(row_of[v])
        for k in range(lo, hi):
            if base + k not in vals.last:  # never read: dead code
                rows.free(row_of[base + k])
    results = _plan_results(tape, n_out, uniform, lambda s: row_of[vals.end[s]], stats)
    return Plan(
        n_rows=max(len(rows), 1), x_rows=x_rows, ones_row=ones_row, n_slots=tape.n_slots,
        param_slots=tape.arg_slots[:n_params].copy(), const_slots=tape.const_slots,
        const_values=tape.const_values, steps=steps, results=results, temp_rows=temp,
        stats=stats,
    )


MadeSteps = Callable[[dict[int, int]], list[Any]]


def _operand_arrays(tape: Tape) -> tuple[np.ndarray, ...]:
    """The tape's per-instruction operand slots, first operand first."""
    return tape.a0, tape.a1, tape.a2


def _plan_run(
    tape: Tape, name: str, lo: int, hi: int, uniform: np.ndarray, row: Callable[[int], int],
    vals: _Values, row_of: dict[int, int],
) -> tuple[list[int], MadeSteps]:
    """An elementwise run: tanh's derivatives from n (`SECH2`), the others by op `name`.
    Instructions whose outputs are never read (squares only those derivatives read) are given
    rows, last, but no step computes them."""
    live = [k for k in range(lo, hi) if vals.base + k in vals.last]
    plain = [k for k in live if k not in vals.sech2]
    sech = [k for k in live if k in vals.sech2]
    parts: list[tuple[list[int], MadeSteps]] = []
    if plain:
        arrays = _operand_arrays(tape)[: OPS[name].arity]

        def operands(k: int) -> list[Factor]:
            ss = [int(a[k]) for a in arrays]
            return [(False, s) if uniform[s] else (True, row(s)) for s in ss]

        parts.append(_plan_elementwise(vector_op(name), plain, operands,
                                       tape.p if OPS[name].params else None))
    if sech:

        def pre_activation(k: int) -> list[Factor]:
            is_row, n = vals.sech2[k]
            return [(True, row_of[n]) if is_row else (False, n)]

        parts.append(_plan_elementwise(SECH2, sech, pre_activation, None))
    dead = [k for k in range(lo, hi) if vals.base + k not in vals.last]
    order = [k for o, _ in parts for k in o] + dead

    def made(out_row: dict[int, int]) -> list[Any]:
        return [step for _, m in parts for step in m(out_row)]

    return order, made


def _plan_elementwise(
    vop: VectorOp, ks: list[int], operands: Callable[[int], list[Factor]],
    params: np.ndarray | None,
) -> tuple[list[int], MadeSteps]:
    """Instructions `ks` of one op, with `operands` (a workspace row or a uniform slot each)
    and static parameters ``params[k]`` (pow's exponent) or None; each part with the same
    pattern of per-example and uniform operands is one vectorised call."""
    parts: dict[tuple[bool, ...], list[int]] = {}
    of = {k: operands(k) for k in ks}
    for k in ks:
        parts.setdefault(tuple(not is_row for is_row, _ in of[k]), []).append(k)

    def operand_rows(k: int) -> tuple[int, ...]:
        # parameters' slots break ties: w[j] * ct (one ct row for all j) goes in j's order
        return tuple(x for is_row, x in of[k] if is_row) + tuple(
            x for is_row, x in of[k] if not is_row)

    # in the order of their operands' rows (the backward pass reads a layer's values in
    # reverse), so that operands are slices; this run's outputs are laid out in the same order
    for pks in parts.values():
        pks.sort(key=operand_rows)
    order = [k for pks in parts.values() for k in pks]
    part_args = []
    for pattern, pks in parts.items():
        args: list[tuple[str, Any]] = []
        for i, is_u in enumerate(pattern):
            xs = [of[k][i][1] for k in pks]
            if is_u and len(set(xs)) == 1:
                # one literal for the whole run (1.0 - x): a scalar, numpy's fast path
                args.append(("uniform", xs[0]))
            elif is_u:
                args.append(("uniform", np.array(xs, np.int64).reshape(-1, 1)))
            else:
                args.append(("rows", _index(xs, broadcast=True)))
        if params is not None:  # pow's exponent: one per instruction
            ps = params[pks]
            if bool(np.all(ps == ps[0])) and float(ps[0]) not in SCALAR_UNSAFE:
                args.append(("param", np.float64(ps[0])))
            else:
                args.append(("param_array", ps.reshape(-1, 1).copy()))
        part_args.append((args, pks))

    def made(out_row: dict[int, int]) -> list[Any]:
        return [_Elementwise(vop, args, _index([out_row[k] for k in pks]), len(pks))
                for args, pks in part_args]

    return order, made


def _plan_dot(
    tape: Tape, lo: int, hi: int, uniform: np.ndarray, row: Callable[[int], int],
    stats: dict[str, int], unit: set[int], ones_row: int | None,
) -> tuple[list[int], MadeSteps]:
    """Group a DOT run's steps by their per-example factor rows: each group is ``W @ X``.

    A bias term ``b * 1.0`` (`unit`: slots of the literal 1.0) of a step with per-example terms
    becomes ``b * ones_row``, a column of W, instead of a separate broadcast addition. Steps in
    no group keep all their terms, in the tape's order (`_Terms`).
    """
    dr = _DotRun(lo, hi, unit, ones_row)
    for k in range(lo, hi):
        ts = _step_terms(tape, k, uniform, row)
        dr.add_step(k, ts)
        stats["terms"] += len(ts)
    dr.choose_products()
    return dr.order, lambda out_row: dr.made(out_row, stats)


def _step_terms(
    tape: Tape, k: int, uniform: np.ndarray, row: Callable[[int], int]
) -> list[tuple[Factor, Factor]]:
    """Step k's terms in the tape's order, each with its per-example factor (if any) first."""
    ts = []
    for t in range(int(tape.a0[k]), int(tape.a1[k])):
        fa, fb = [(True, row(x)) if not uniform[x] else (False, x)
                  for x in (int(tape.ta[t]), int(tape.tb[t]))]
        if fb[0] and not fa[0]:
            fa, fb = fb, fa  # products commute exactly: the per-example factor first
        ts.append((fa, fb))
    return ts


@dataclass
class _DotRun:
    """A DOT run's steps sorted into matrix-product groups and terms summed by gathers."""

    lo: int
    hi: int
    unit: set[int]  # slots of the literal 1.0
    ones_row: int | None
    terms: dict[int, list[tuple[Factor, Factor]]] = field(default_factory=dict)  # tape's order
    mats: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # [(row, uniform slot)]
    others: dict[int, list[tuple[Factor, Factor]]] = field(default_factory=dict)  # not in mats
    groups: dict[tuple[int, ...], list[int]] = field(default_factory=dict)  # rows -> steps
    products: list[tuple[tuple[int, ...], list[int]]] = field(default_factory=list)
    in_product: set[int] = field(default_factory=set)
    order: list[int] = field(default_factory=list)

    def add_step(self, k: int, ts: list[tuple[Factor, Factor]]) -> None:
        """Split step k's terms into row x uniform ones (a row of W) and the others."""
        m = [(fa[1], fb[1]) for fa, fb in ts if fa[0] and not fb[0]]
        o = [(fa, fb) for fa, fb in ts if not (fa[0] and not fb[0])]
        if m and self.ones_row is not None:
            for i, (fa, fb) in enumerate(o):
                if not fa[0] and not fb[0] and (fa[1] in self.unit or fb[1] in self.unit):
                    # b * 1.0 == b * ones exactly, inf and nan too
                    m.append((self.ones_row, fa[1] if fb[1] in self.unit else fb[1]))
                    del o[i]
                    break
        m.sort(key=lambda rs: rs[0])  # stable: duplicate rows keep their order
        self.terms[k], self.mats[k], self.others[k] = ts, m, o
        if m:
            self.groups.setdefault(tuple(r for r, _ in m), []).append(k)

    def choose_products(self) -> None:
        """The biggest groups become matrix products; the other steps are pooled gathers."""
        ranked = sorted(self.groups.items(), key=lambda kv: -len(kv[0]) * len(kv[1]))
        products = [(key, ks) for key, ks in ranked if len(ks) >= 2 or len(key) >= 8]
        self.products = products[:MAX_MATMULS]
        for _, ks in self.products:  # by their parameters' slots: neuron order, both passes
            ks.sort(key=lambda k: [s for _, s in self.mats[k]])
        self.in_product = {k for _, ks in self.products for k in ks}
        self.order = [k for _, ks in self.products for k in ks] + [
            k for k in range(self.lo, self.hi) if k not in self.in_product
        ]

    def made(self, out_row: dict[int, int], stats: dict[str, int]) -> list[Any]:
        """The run's one step, its outputs at `out_row`."""
        step = _Dot()
        temp = 0
        extra: list[tuple[int, Factor, Factor]] = []
        for key, ks in self.products:
            w, xr, bias = self._matrix(key, ks)
            extra += bias
            out = _index([out_row[k] for k in ks])
            assert isinstance(out, slice)  # a group's outputs were allocated together
            step.mats.append((w, xr, out))
            temp = max(temp, 0 if isinstance(xr, slice) else len(key))
            stats["matmuls"] += 1
            stats["matmul_terms"] += w.size
        extra += [(k, fa, fb) for k in sorted(self.in_product) for fa, fb in self.others[k]]
        if extra:
            extra.sort(key=lambda t: t[0])  # stable
            step.extra = _Terms(extra, out_row, assign=False)
            temp = max(temp, 3 * len(extra))
        rest = [(k, fa, fb) for k in self.order if k not in self.in_product
                for fa, fb in self.terms[k]]
        if rest:
            step.rest = _Terms(rest, out_row, assign=True)
            temp = max(temp, 3 * len(rest))
        step.temp = temp + (self.hi - self.lo)
        return [step]

    def _matrix(self, key: tuple[int, ...], ks: list[int]) -> tuple[
        np.ndarray, Index, list[tuple[int, Factor, Factor]]
    ]:
        """A group's (W slots, x rows), and the bias terms taken out of W to keep x a slice."""
        w = np.array([[s for _, s in self.mats[k]] for k in ks], np.int64)
        xr = _index(list(key))
        if self.ones_row in key and not isinstance(xr, slice):
            j = key.index(self.ones_row)
            rest_key = key[:j] + key[j + 1:]
            if isinstance(_index(list(rest_key)), slice) and 2 * len(ks) < len(key):
                # few outputs, many inputs: adding the bias beats copying the inputs
                unit_slot = min(self.unit)
                bias = [(k, (False, int(b)), (False, unit_slot))
                        for k, b in zip(ks, w[:, j], strict=True)]
                return np.delete(w, j, axis=1), _index(list(rest_key)), bias
        return w, xr, []


def _pieces(cols: np.ndarray, rows: Index, min_len: int = 8) -> list[tuple[np.ndarray, Index]]:
    """Split rows into slices of consecutive rows (views) and one index array for the rest."""
    if isinstance(rows, slice):
        return [(cols, rows)] if len(cols) else []
    order = np.argsort(rows, kind="stable")
    cols, rows = cols[order], rows[order]
    cuts = np.flatnonzero(np.diff(rows) != 1) + 1
    out, rest = [], []
    for c, r in zip(np.split(cols, cuts), np.split(rows, cuts), strict=True):
        if len(r) >= min_len:
            out.append((c, slice(int(r[0]), int(r[-1]) + 1)))
        else:
            rest.append((c, r))
    if rest:
        out.append((np.concatenate([c for c, _ in rest]), np.concatenate([r for _, r in rest])))
    return out


def _plan_results(
    tape: Tape, n_out: int, uniform: np.ndarray, row: Callable[[int], int],
    stats: dict[str, int],
) -> _Results:
    """Read values, sum plain gradients, and group the summed products into grids."""
    slots = tape.result_slots.tolist()
    bs = tape.result_b.tolist()
    res = _Results(n_out=n_out, n_acc=len(slots) - n_out)
    res.val_rows, res.val_u = _split_results(list(range(n_out)), slots[:n_out], uniform, row)
    plain = [k - n_out for k in range(n_out, len(slots)) if bs[k] < 0]
    (pc, pr), res.plain_u = _split_results(plain, [slots[c + n_out] for c in plain], uniform,
                                           row)
    res.plain_rows = _pieces(pc, pr)
    prods = [(k - n_out, slots[k], bs[k]) for k in range(n_out, len(slots)) if bs[k] >= 0]
    stats["products"] = len(prods)
    _plan_products(res, _Products(prods, uniform, row), stats)
    _plan_per_row(res)
    return res


def _split_results(
    cols: list[int], ss: list[int], uniform: np.ndarray, row: Callable[[int], int]
) -> tuple[tuple[np.ndarray, Index], tuple[np.ndarray, np.ndarray]]:
    """Results `cols` read from slots `ss`: ``((columns, rows), (columns, uniform slots))``."""
    r = [(c, row(s)) for c, s in zip(cols, ss, strict=True) if not uniform[s]]
    q = [(c, s) for c, s in zip(cols, ss, strict=True) if uniform[s]]
    return (
        (np.array([c for c, _ in r], np.int64), _index([x for _, x in r])),
        (np.array([c for c, _ in q], np.int64), np.array([x for _, x in q], np.int64)),
    )


class _Products:
    """Accumulated results that are products ``a * b`` summed over the examples: their
    columns, and for each factor whether it is uniform and its row (or uniform slot)."""

    def __init__(self, prods: list[tuple[int, int, int]], uniform: np.ndarray,
                 row: Callable[[int], int]) -> None:
        self.cols = np.array([c for c, _, _ in prods], np.int64)
        self.a_u = np.array([bool(uniform[a]) for _, a, _ in prods], bool)
        self.b_u = np.array([bool(uniform[b]) for _, _, b in prods], bool)
        self.a_ix = np.array([a if uniform[a] else row(a) for _, a, _ in prods], np.int64)
        self.b_ix = np.array([b if uniform[b] else row(b) for _, _, b in prods], np.int64)

    def edges(self) -> tuple[dict[tuple[int, int], list[int]], dict[int, set[int]]]:
        """Products of two rows as edges between rows: ``{(low, high): products}``, and each
        row's partners."""
        edges: dict[tuple[int, int], list[int]] = {}
        partners: dict[int, set[int]] = {}
        for i in np.flatnonzero(~self.a_u & ~self.b_u).tolist():
            x, y = int(self.a_ix[i]), int(self.b_ix[i])
            edges.setdefault((min(x, y), max(x, y)), []).append(i)
            partners.setdefault(x, set()).add(y)
            partners.setdefault(y, set()).add(x)
        return edges, partners


def _plan_products(res: _Results, pr: _Products, stats: dict[str, int]) -> None:
    """Grids first; the products no grid covers by the kinds of their factors."""
    cols, a_ix, b_ix = pr.cols, pr.a_ix, pr.b_ix
    edges, partners = pr.edges()
    done = _plan_grids(res, cols, edges, partners, stats)
    left = [i for e, ps in edges.items() if e not in done for i in ps]
    res.prod_rr = (cols[left], _index(a_ix[left]), _index(b_ix[left]))
    ru = np.flatnonzero(pr.a_u ^ pr.b_u)
    # the per-example factor first
    r_ix = np.where(pr.a_u[ru], b_ix[ru], a_ix[ru])
    u_ix = np.where(pr.a_u[ru], a_ix[ru], b_ix[ru])
    res.prod_ru = (cols[ru], _index(r_ix), u_ix.reshape(-1, 1))
    uu = np.flatnonzero(pr.a_u & pr.b_u)
    res.prod_uu = (cols[uu], a_ix[uu], b_ix[uu])


def _plan_grids(
    res: _Results, cols: np.ndarray, edges: dict[tuple[int, int], list[int]],
    partners: dict[int, set[int]], stats: dict[str, int],
) -> set[tuple[int, int]]:
    """Rows grouped by their set of partners; each group G with partners P is the block G x P,
    kept if most of its entries are products still to compute. Returns the edges covered."""
    by_set: dict[frozenset[int], list[int]] = {}
    for r, ps in partners.items():
        by_set.setdefault(frozenset(ps), []).append(r)
    done: set[tuple[int, int]] = set()
    blocks = sorted(by_set.items(), key=lambda kv: -len(kv[0]) * len(kv[1]))
    for pset, grp in blocks:
        b_rows, a_rows = sorted(grp), sorted(pset)
        todo = [(min(x, y), max(x, y)) for x in b_rows for y in a_rows]
        todo = list(dict.fromkeys(e for e in todo if e in edges and e not in done))
        if len(todo) < 2 or len(todo) < 0.5 * len(b_rows) * len(a_rows):
            continue
        bpos = {r: i for i, r in enumerate(b_rows)}
        apos = {r: i for i, r in enumerate(a_rows)}
        gcols, picks = [], []
        for e in todo:
            x, y = e
            # orient the edge: the grid's rows are b_rows, its columns a_rows
            i, j = (bpos[x], apos[y]) if x in bpos and y in apos else (bpos[y], apos[x])
            for p in edges[e]:
                gcols.append(int(cols[p]))
                picks.append(i * len(a_rows) + j)
            done.add(e)
        res.grids.append(
            (_index(b_rows), _index(a_rows), np.array(gcols, np.int64),
             np.array(picks, np.int64))
        )
        stats["grids"] += 1
        stats["grid_products"] += len(gcols)
    return done


def _plan_per_row(res: _Results) -> None:
    """The per-row mode's list, result-major (see `_Results.per_row`)."""
    res.per_row = [("row", c, ix, None) for c, ix in res.plain_rows]
    if len(res.plain_u[0]):
        res.per_row.append(("u", res.plain_u[0], res.plain_u[1].reshape(-1, 1), None))
    for b_rows, a_rows, gcols, picks in res.grids:
        res.per_row.append(("grid", _strides(gcols, picks, b_rows, a_rows), b_rows, a_rows))
    if len(res.prod_rr[0]):
        res.per_row.append(("rr", *res.prod_rr))
    if len(res.prod_ru[0]):
        res.per_row.append(("ru", *res.prod_ru))
    cols, ua, ub = res.prod_uu
    if len(cols):
        res.per_row.append(("uu", cols, ua.reshape(-1, 1), ub.reshape(-1, 1)))


def _strides(gcols: np.ndarray, picks: np.ndarray, b_rows: Index, a_rows: Index) -> Any:
    """``(first, di, dj)`` when grid entry (i, j) is result ``first + i*di + j*dj`` for every
    entry, each once (a dense layer's weights, bias columns in between), else (gcols, picks)."""
    nb_, na_ = _count(b_rows), _count(a_rows)
    if len(picks) != nb_ * na_ or len(np.unique(picks)) != len(picks):
        return gcols, picks
    c = np.empty(nb_ * na_, np.int64)
    c[picks] = gcols
    c = c.reshape(nb_, na_)
    di = int(c[1, 0] - c[0, 0]) if nb_ > 1 else 0
    dj = int(c[0, 1] - c[0, 0]) if na_ > 1 else 0
    first = int(c[0, 0])
    want = first + di * np.arange(nb_)[:, None] + dj * np.arange(na_)[None, :]
    if di < 0 or dj < 0 or not np.array_equal(c, want):
        return gcols, picks
    return first, di, dj


_plans: dict[tuple[int, int, int], tuple[weakref.ref[Tape], Plan]] = {}
_plans_lock = threading.Lock()


def plan(tape: Tape, n_params: int, n_out: int) -> Plan:
    """The `Plan` of `tape` with its first `n_params` arguments uniform, built once per tape."""
    key = (id(tape), n_params, n_out)
    with _plans_lock:
        hit = _plans.get(key)
        if hit is not None and hit[0]() is tape:
            return hit[1]
    # built when the executor is, inside the compile's pause of the garbage collector
    pl = _build(tape, n_params, n_out)
    with _plans_lock:
        for k in [k for k, (ref, _) in _plans.items() if ref() is None]:
            del _plans[k]  # tapes that are gone
        _plans[key] = (weakref.ref(tape), pl)
    return pl


# ---- running ---------------------------------------------------------------------------------


def run(tape: Tape, params: np.ndarray, X: np.ndarray, n_out: int, values: np.ndarray,
        acc: np.ndarray, per_row: bool) -> None:
    """Run `tape` over the rows of `X`, as the tape interpreter does.

    Args:
        params: the uniform arguments (parameters), ``(n_params,)``.
        X: ``(N, n_inputs)``, one example a row.
        n_out: how many leading results are values assigned per row.
        values: ``(N, n_out)``, assigned.
        acc: ``(1, n_acc)`` (summed over rows) or ``(N, n_acc)`` (per_row), added into.
        per_row: whether accumulated results are kept per row.
    """
    n = X.shape[0]
    if n == 0:
        return
    pl = plan(tape, params.shape[0], n_out)
    u = np.zeros(pl.n_slots)
    u[pl.param_slots] = params
    u[pl.const_slots] = pl.const_values
    chunk = pl.chunk(per_row)
    n_chunks = -(-n // chunk)
    bounds = [n * i // n_chunks for i in range(n_chunks + 1)]  # near-equal chunks
    work = np.empty((0, 0))
    with np.errstate(all="ignore"):  # IEEE results: 1/0 is inf, as in the compiled backends
        for start, stop in itertools.pairwise(bounds):
            nb = stop - start
            if work.shape != (pl.n_rows, nb):
                work = np.empty((pl.n_rows, nb))
            work[pl.x_rows] = X[start:stop].T
            if pl.ones_row is not None:
                work[pl.ones_row] = 1.0
            for step in pl.steps:
                step(work, u)
            _finish(pl.results, work, u, start, stop, values, acc, per_row)


def _finish(r: _Results, work: np.ndarray, u: np.ndarray, start: int, stop: int,
            values: np.ndarray, acc: np.ndarray, per_row: bool) -> None:
    """Write a pass's values and add its accumulated results."""
    nb = stop - start
    cols, ix = r.val_rows
    if len(cols):
        values[start:stop, cols] = work[ix].T
    cols, us = r.val_u
    if len(cols):
        values[start:stop, cols] = u[us]
    if r.n_acc == 0:
        return
    if per_row:
        # result-major first (whole workspace rows, contiguous), then one blocked transpose
        t = np.empty((r.n_acc, nb))
        for kind, cols, a, b in r.per_row:
            if kind == "grid":
                prod = (work[a][:, None, :], work[b][None, :, :])
                if len(cols) == 3:  # evenly spaced results: write them through a strided view
                    first, di, dj = cols
                    step = t.strides[0]
                    view = np.lib.stride_tricks.as_strided(
                        t[first:], (prod[0].shape[0], prod[1].shape[1], nb),
                        (di * step, dj * step, t.strides[1]))
                    np.multiply(*prod, out=view)
                else:
                    gcols, picks = cols
                    t[gcols] = np.multiply(*prod).reshape(-1, nb)[picks]
            elif kind == "row":
                t[cols] = work[a]
            elif kind == "u":
                t[cols] = u[a]
            elif kind == "rr":
                t[cols] = work[a] * work[b]
            elif kind == "ru":
                t[cols] = work[a] * u[b]
            else:
                t[cols] = u[a] * u[b]
        blk = acc[start:stop]
        for c in range(0, r.n_acc, 256):  # in tiles: a plain transposed add is cache-hostile
            blk[:, c: c + 256] += t[c: c + 256].T
        return
    tot = np.zeros(r.n_acc)
    for cols, ix in r.plain_rows:
        tot[cols] = work[ix].sum(axis=1)
    cols, us = r.plain_u
    tot[cols] = u[us] * nb
    for b_rows, a_rows, gcols, picks in r.grids:
        tot[gcols] = (work[b_rows] @ work[a_rows].T).ravel()[picks]
    cols, a, b = r.prod_rr
    if len(cols):
        tot[cols] = np.einsum("ij,ij->i", work[a], work[b])
    cols, a, us2 = r.prod_ru
    if len(cols):
        tot[cols] = (work[a] * u[us2]).sum(axis=1)
    cols, ua, ub = r.prod_uu
    tot[cols] = (u[ua] * u[ub]) * nb
    acc[0] += tot


class VectorPlan(TapeExecutor):
    """The tape run by NumPy a whole batch at a time, dense layers as matrix products (BLAS).

    Opt-in (``backend="vector"``): sums may be added in another order than the engine's, so
    results agree with the exact executors to rounding, not bit for bit.
    """

    name = "vector"
    exact = False
    preparing = "planning the matrix products"

    def __init__(self, kernels: Any, title: str, header: str) -> None:
        super().__init__(kernels, title, header)
        # plan now (inside compile's pause of the garbage collector), not on the first call
        plans = [plan(self.tapes[k.name], k.layout.n_uniform(), k.layout.n_assigned())
                 for k in self.kernels.values()]
        self.source += "\n\n" + "\n\n".join(pl.describe() for pl in plans)

    def run_tape(self, kernel: str, params: np.ndarray, X: np.ndarray, n_out: int,
                 values: np.ndarray, acc: np.ndarray, per_row: bool,
                 n_chunks: int | None = None) -> None:
        """See `TapeExecutor.run_tape` (sums in NumPy's own order: `n_chunks` is not used)."""
        run(self.tapes[kernel], params, X, n_out, values, acc, per_row)

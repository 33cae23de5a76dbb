"""A tape planned for blocked execution: dense layers, gradient grids, everything else as is.

Imports `tape`. The tape (`symgrad.tape.Tape`) is a list of runs; this module finds in it the
structure a model has, without changing a single operation or the order of any sum:

- *dense groups*: in a run of fused sums, the sums whose per-example factors are the same rows
  in the same order (a layer's neurons, forward, or its input gradients, backward) become one
  call of a dense kernel with a per-call factor matrix ``W`` (`symgrad.executors.dense`);
- *grids*: accumulated results that are products of two per-example rows, where a set of rows
  meets a set of partners (a layer's weight gradients, cotangents times inputs) become one outer
  product per block; a result that is a per-example row ``r`` is the product ``r * 1.0`` (exact
  for every float), so a layer's bias gradients join its weights' grid on a row of ones;
- everything else keeps the tape's own steps: runs of one op, fused sums that fit no group,
  and the remaining accumulated results, summed one by one.

Only per-example values and the uniform values read as rows get workspace rows filled per
block; the other uniform values (weights) reach the kernels through ``W`` and the products.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ..ops import OPS
from ..tape import DOT, OPCODES, Tape

__all__ = ["DENSE", "PLAN_FIELDS", "BlockPlan", "pack", "plan"]

DENSE = DOT + 1  # a step that is a dense group (the tape's own DOT is a run of fused sums)
MIN_GROUP = 2  # fewer sums sharing a row list stay fused sums ...
MIN_ALONE = 8  # ... unless a lone sum has at least this many terms (an output neuron)
MIN_FILL = 0.5  # a grid is used when at least this share of its products is wanted

I64 = np.int64
# the integer arrays of a `BlockPlan`, packed in this order for compiled code (`pack`)
PLAN_FIELDS = (
    "steps", "dot_steps", "out", "a0", "a1", "a2", "ta", "tb", "dense", "dense_out", "dense_x",
    "dense_w", "uniform_slots", "uniform_param", "rows_slots", "rows_rows", "x_slots",
    "value_slots", "grids", "grid_a", "grid_b", "grid_cols", "grid_strides", "rest_cols",
    "rest_a", "rest_b",
)
OPNAMES = {code: name for name, code in OPCODES.items()}


@dataclass(frozen=True)
class BlockPlan:
    """A `Tape` as steps a blocked executor runs; every array int64 unless said otherwise.

    Slots are the tape's (and one more, `ones`); once planned, every array the steps read
    as workspace rows holds row numbers instead (`_compact`): all but the ``uniform_*``,
    ``rows_slots`` and ``dense_w`` arrays, which index the vector ``u`` of uniform values.

    Attributes:
        tape: the tape planned.
        n_slots: the tape's slots and the row of ones: the length of ``u``.
        ones: the slot of the row of ones.
        n_rows: workspace rows.
        uniform_slots, uniform_param: the slots of values the same for every example, and for
            each the parameter it holds (its index in ``params``), or -1 for a literal, whose
            value is in ``uniform_value`` (float64).
        rows_slots, rows_rows: the uniform slots read as rows, and their rows (filled across a
            block once per chunk).
        x_slots: the slots of the per-example arguments, in the columns' order of ``X``.
        steps: ``(n_steps, 3)``: (tape opcode, lo, hi) for a run of one op; (DOT, lo, hi) for
            the fused sums ``dot_steps[lo:hi]``; (DENSE, g, 0) for dense group g.
        dot_steps: the tape's fused sums that fit no dense group.
        out, a0, a1, a2, p, ta, tb, tu: the tape's instruction and term arrays (see `Tape`).
        dense: ``(n_groups, 5)``: offsets and sizes (out_off, n_out, x_off, K, w_off) into
            ``dense_out``, ``dense_x`` (slots) and ``dense_w`` (the uniform slot of each entry
            of the group's ``W``, row-major).
        value_slots: the slots of the values (assigned results).
        grids: ``(n_grids, 6)``: (a_off, n_a, b_off, n_b, g_off, direct) into ``grid_a``,
            ``grid_b`` (slots) and ``grid_cols`` (for each entry (i, j) of the grid, row-major,
            the column of the accumulated results it goes to, or -1 when no result wants it);
            ``direct`` is the first column when the grid's entries are the consecutive columns
            from there (summed in place), else -1 (summed apart, then copied).
        grid_strides: ``(n_grids, 3)``: (col0, di, dj) when entry (i, j) goes to column
            ``col0 + i*di + j*dj`` for every entry (a dense layer's weights), else (-1, 0, 0).
        rest_cols, rest_a, rest_b: the other accumulated results: column, and the two slots
            whose product it is (``rest_b`` is the row of ones for a plain value).
    """

    tape: Tape
    n_slots: int
    ones: int
    n_rows: int
    uniform_slots: np.ndarray
    uniform_param: np.ndarray
    uniform_value: np.ndarray
    rows_slots: np.ndarray
    rows_rows: np.ndarray
    x_slots: np.ndarray
    steps: np.ndarray
    dot_steps: np.ndarray
    out: np.ndarray
    a0: np.ndarray
    a1: np.ndarray
    a2: np.ndarray
    p: np.ndarray
    ta: np.ndarray
    tb: np.ndarray
    tu: np.ndarray
    dense: np.ndarray
    dense_out: np.ndarray
    dense_x: np.ndarray
    dense_w: np.ndarray
    value_slots: np.ndarray
    grids: np.ndarray
    grid_a: np.ndarray
    grid_b: np.ndarray
    grid_cols: np.ndarray
    grid_strides: np.ndarray
    rest_cols: np.ndarray
    rest_a: np.ndarray
    rest_b: np.ndarray
    stats: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """A one-line summary, for people."""
        s = self.stats
        return (
            f"# blocked plan: {len(self.steps)} steps, {s['dense_groups']} dense groups "
            f"({s['dense_terms']} of {s['dot_terms']} fused terms), {s['grids']} gradient grids "
            f"({s['grid_results']} of {s['acc_results']} accumulated results)"
        )


def plan(tp: Tape, n_uniform: int, n_out: int) -> BlockPlan:
    """Plan `tp`, whose first `n_uniform` arguments are uniform and first `n_out` results
    are assigned (the rest accumulated)."""
    ones = tp.n_slots
    uniform = np.zeros(tp.n_slots + 1, bool)
    uniform[tp.arg_slots[:n_uniform]] = True
    uniform[tp.const_slots] = True
    uniform[ones] = True
    stats = {"dense_groups": 0, "dense_terms": 0, "dot_terms": len(tp.ta)}
    steps, dot_steps, dense = _plan_steps(tp, uniform, stats)
    grids, rest = _plan_results(tp, n_out, uniform, ones, stats)
    u_slots = np.concatenate([tp.arg_slots[:n_uniform], tp.const_slots, [ones]]).astype(I64)
    u_param = np.concatenate([np.arange(n_uniform), np.full(len(tp.const_slots) + 1, -1)])
    u_value = np.concatenate([np.zeros(n_uniform), tp.const_values, [1.0]])
    read_as_rows = _rows_read(tp, steps, dot_steps, dense, grids, rest, n_out)
    slotted = BlockPlan(
        tape=tp, n_slots=tp.n_slots + 1, ones=ones, n_rows=0,
        uniform_slots=u_slots, uniform_param=u_param.astype(I64), uniform_value=u_value,
        rows_slots=np.array(sorted(s for s in read_as_rows if uniform[s]), I64),
        rows_rows=np.zeros(0, I64), x_slots=tp.arg_slots[n_uniform:].astype(I64),
        steps=np.array(steps, I64).reshape(-1, 3), dot_steps=np.array(dot_steps, I64),
        out=tp.out, a0=tp.a0, a1=tp.a1, a2=tp.a2, p=tp.p, ta=tp.ta, tb=tp.tb, tu=tp.tu,
        dense=np.array(dense.meta, I64).reshape(-1, 5), dense_out=np.array(dense.out, I64),
        dense_x=np.array(dense.x, I64), dense_w=np.array(dense.w, I64),
        value_slots=tp.result_slots[:n_out].astype(I64),
        grids=np.array(grids.meta, I64).reshape(-1, 6), grid_a=np.array(grids.a, I64),
        grid_b=np.array(grids.b, I64), grid_cols=np.array(grids.cols, I64),
        grid_strides=np.array(grids.strides, I64).reshape(-1, 3),
        rest_cols=np.array([c for c, _, _ in rest], I64),
        rest_a=np.array([a for _, a, _ in rest], I64),
        rest_b=np.array([b for _, _, b in rest], I64),
        stats=stats,
    )
    return _compact(slotted)


def _compact(pl: BlockPlan) -> BlockPlan:
    """The plan with workspace rows for the slots read or written as rows only, numbered from 0.

    A tape gives every value a slot, parameters included, but a parameter read only through a
    dense group's ``W`` or a product needs no row: a workspace of the other slots is a fraction
    of the size. Uniform values stay indexed by slot (``u``); `rows_slots` lists the uniform
    slots filled across rows ``rows_rows``.
    """
    elementwise = np.ones(len(pl.out), bool)
    for op, lo, hi in pl.tape.runs.tolist():
        if op == DOT:
            elementwise[lo:hi] = False  # their a0, a1 delimit terms: not slots
    run, dots = _executed(pl)
    terms = np.concatenate([np.arange(pl.a0[k], pl.a1[k]) for k in dots] or [np.zeros(0, I64)])
    used = [pl.out[run], pl.a0[run], pl.a1[run], pl.a2[run], pl.out[dots], pl.ta[terms],
            pl.tb[terms], pl.rows_slots, pl.x_slots, pl.dense_out, pl.dense_x, pl.value_slots,
            pl.grid_a, pl.grid_b, pl.rest_a, pl.rest_b]
    rows = np.unique(np.concatenate(used)) if any(len(u) for u in used) else np.zeros(0, I64)
    row = np.zeros(pl.n_slots, I64)
    row[rows] = np.arange(len(rows))
    a0, a1, a2 = pl.a0.copy(), pl.a1.copy(), pl.a2.copy()
    for new, old in ((a0, pl.a0), (a1, pl.a1), (a2, pl.a2)):
        new[elementwise] = row[old[elementwise]]
    return dataclasses.replace(
        pl, n_rows=max(len(rows), 1), rows_rows=row[pl.rows_slots], x_slots=row[pl.x_slots],
        out=row[pl.out], a0=a0, a1=a1, a2=a2, ta=row[pl.ta], tb=row[pl.tb],
        dense_out=row[pl.dense_out], dense_x=row[pl.dense_x], value_slots=row[pl.value_slots],
        grid_a=row[pl.grid_a], grid_b=row[pl.grid_b], rest_a=row[pl.rest_a],
        rest_b=row[pl.rest_b],
    )


def _executed(pl: BlockPlan) -> tuple[np.ndarray, np.ndarray]:
    """The instructions the steps run one by one, and the fused sums they run as such (the
    others are parts of dense groups or grids, and need no rows of their own)."""
    run, dots = [np.zeros(0, I64)], [np.zeros(0, I64)]
    for op, lo, hi in pl.steps.tolist():
        if op < DOT:
            run.append(np.arange(lo, hi, dtype=I64))
        elif op == DOT:
            dots.append(pl.dot_steps[lo:hi])
    return np.concatenate(run), np.concatenate(dots).astype(I64)


def pack(pl: BlockPlan) -> tuple[np.ndarray, np.ndarray]:
    """The plan's integer arrays end to end, and each one's (offset, length) in that vector,
    in `PLAN_FIELDS` order (2-D arrays row-major)."""
    arrays = [np.asarray(getattr(pl, f), I64).ravel() for f in PLAN_FIELDS]
    lengths = np.array([len(a) for a in arrays], I64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(I64)
    ints = np.concatenate(arrays) if arrays else np.zeros(0, I64)
    return np.ascontiguousarray(ints, I64), np.stack([offsets, lengths], axis=1)


# ---- steps: runs of one op, dense groups, the other fused sums ----------------------------------


@dataclass
class _Dense:
    meta: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    out: list[int] = field(default_factory=list)
    x: list[int] = field(default_factory=list)
    w: list[int] = field(default_factory=list)

    def add(self, outs: list[int], xs: tuple[int, ...], ws: list[list[int]]) -> int:
        self.meta.append((len(self.out), len(outs), len(self.x), len(xs), len(self.w)))
        self.out += outs
        self.x += list(xs)
        self.w += [s for row in ws for s in row]
        return len(self.meta) - 1


def _plan_steps(tp: Tape, uniform: np.ndarray,
                stats: dict[str, int]) -> tuple[list[tuple[int, int, int]], list[int], _Dense]:
    """The tape's runs in order, each fused-sum run split into dense groups and the rest."""
    steps: list[tuple[int, int, int]] = []
    dot_steps: list[int] = []
    dense = _Dense()
    literal = set(tp.const_slots.tolist())
    for op, lo, hi in tp.runs.tolist():
        if op != DOT:
            steps.append((op, lo, hi))
            continue
        groups, others = _group_sums(tp, lo, hi, uniform, literal)
        for xs, ks in groups.items():
            ws = [[_w_factor(tp, t, uniform, literal) for t in range(tp.a0[k], tp.a1[k])]
                  for k in ks]
            g = dense.add([int(tp.out[k]) for k in ks], xs, ws)
            steps.append((DENSE, g, 0))
            stats["dense_groups"] += 1
            stats["dense_terms"] += len(ks) * len(xs)
        if others:
            steps.append((DOT, len(dot_steps), len(dot_steps) + len(others)))
            dot_steps += others
    return steps, dot_steps, dense


def _row_factor(tp: Tape, t: int, uniform: np.ndarray, literal: set[int]) -> int:
    """The factor of term `t` (whose second factor is uniform) read as a row: the first, unless
    both are uniform and only the second is a literal (a bias times 1.0 puts 1.0 in the row and
    the bias in ``W``, so that a layer's neurons share their rows)."""
    a, b = int(tp.ta[t]), int(tp.tb[t])
    return b if uniform[a] and b in literal and a not in literal else a


def _w_factor(tp: Tape, t: int, uniform: np.ndarray, literal: set[int]) -> int:
    """The other factor of term `t` (see `_row_factor`): it goes into ``W``."""
    a, b = int(tp.ta[t]), int(tp.tb[t])
    return a if uniform[a] and b in literal and a not in literal else b


def _group_sums(tp: Tape, lo: int, hi: int, uniform: np.ndarray,
                literal: set[int]) -> tuple[dict[tuple[int, ...], list[int]], list[int]]:
    """Fused sums of a run grouped by their row lists (every term has a uniform factor, the
    per-example ones the same rows in the same order), and the sums that fit no group."""
    by_rows: dict[tuple[int, ...], list[int]] = {}
    others: list[int] = []
    for k in range(lo, hi):
        t0, t1 = int(tp.a0[k]), int(tp.a1[k])
        if bool(np.all(tp.tu[t0:t1])):  # every term: a row times a uniform factor
            xs = tuple(_row_factor(tp, t, uniform, literal) for t in range(t0, t1))
            by_rows.setdefault(xs, []).append(k)
        else:
            others.append(k)
    groups = {}
    for xs, ks in by_rows.items():
        if len(ks) >= MIN_GROUP or len(xs) >= MIN_ALONE:
            groups[xs] = ks
        else:
            others += ks
    others.sort()
    return groups, others


# ---- results: grids of products, the rest one by one ---------------------------------------------


@dataclass
class _Grids:
    meta: list[tuple[int, int, int, int, int, int]] = field(default_factory=list)
    a: list[int] = field(default_factory=list)
    b: list[int] = field(default_factory=list)
    cols: list[int] = field(default_factory=list)
    strides: list[tuple[int, int, int]] = field(default_factory=list)


def _products(tp: Tape, n_out: int, ones: int) -> list[tuple[int, int, int]]:
    """Every accumulated result as (column, a slot, b slot): its value is ``work[a] * work[b]``
    (a plain value ``r`` is ``r * 1.0``, the row of ones)."""
    slots, bs = tp.result_slots.tolist(), tp.result_b.tolist()
    return [(k - n_out, slots[k], ones if bs[k] < 0 else bs[k])
            for k in range(n_out, len(slots))]


def _plan_results(tp: Tape, n_out: int, uniform: np.ndarray, ones: int,
                  stats: dict[str, int]) -> tuple[_Grids, list[tuple[int, int, int]]]:
    """Group the products of per-example rows into grids; the other results stay as they are.

    Products commute exactly, so a product is an unordered pair of rows. Rows are grouped by
    their set of partners (a layer's inputs and the row of ones share its cotangents); each
    group and its partners is a grid, used when most of its entries are wanted. A grid's rows
    are ordered by the result columns they go to, so that a dense layer's weights are evenly
    spaced (`_strides`).
    """
    prods = _products(tp, n_out, ones)
    stats["acc_results"] = len(prods)
    wanted: dict[tuple[int, int], list[int]] = {}
    partners: dict[int, set[int]] = {}
    for c, a, b in prods:
        if uniform[a] or (uniform[b] and b != ones):
            continue
        wanted.setdefault((min(a, b), max(a, b)), []).append(c)
        partners.setdefault(a, set()).add(b)
        partners.setdefault(b, set()).add(a)
    by_set: dict[frozenset[int], list[int]] = {}
    for r, ps in partners.items():
        by_set.setdefault(frozenset(ps), []).append(r)
    grids = _Grids()
    done: set[tuple[int, int]] = set()
    for pset, rows in sorted(by_set.items(), key=lambda kv: -len(kv[0]) * len(kv[1])):
        a_rows = _by_first_column(rows, pset, wanted)
        b_rows = _by_first_column(pset, rows, wanted)
        cells = [(min(a, b), max(a, b)) for a in a_rows for b in b_rows]
        hits = [cell for cell in cells if cell in wanted and cell not in done]
        if len(hits) < 2 or len(hits) < MIN_FILL * len(cells):
            continue
        _add_grid(grids, a_rows, b_rows, {cell: wanted[cell][0] for cell in hits})
        done.update(hits)
    # a cell wanted by several results fills the first; the others are summed on their own
    covered = {wanted[cell][0] for cell in done}
    stats["grids"] = len(grids.meta)
    stats["grid_results"] = len(covered)
    rest = [(c, a, b) for c, a, b in prods if c not in covered]
    return grids, rest


def _by_first_column(rows: Iterable[int], partners: Iterable[int],
                     wanted: dict[tuple[int, int], list[int]]) -> list[int]:
    """`rows` in the order of the first result column each has with one of `partners`."""
    partners = list(partners)

    def first(r: int) -> int:
        cols = [wanted[c][0] for q in partners if (c := (min(r, q), max(r, q))) in wanted]
        return min(cols, default=1 << 62)

    return sorted(rows, key=first)


def _add_grid(grids: _Grids, a_rows: list[int], b_rows: list[int],
              cells: dict[tuple[int, int], int]) -> None:
    """One grid: `cells` gives the result column of each wanted (a, b) entry.

    The kernel's lanes run along the second list; the cheaper orientation is taken (products
    commute, so either gives the same bits). A grid whose entries are the columns
    ``col0 + i * n_b + j`` is summed straight into the chunk's columns (``direct``).
    """
    from .dense import outer_swapped  # imports numba: not at module level

    if outer_swapped(len(a_rows), len(b_rows)):
        a_rows, b_rows = b_rows, a_rows
    cols = np.array([cells.get((min(a, b), max(a, b)), -1) for a in a_rows for b in b_rows], I64)
    strides = _strides(cols.reshape(len(a_rows), len(b_rows)))
    consecutive = strides[2] == 1 and (strides[1] == len(b_rows) or len(a_rows) == 1)
    direct = strides[0] if consecutive else -1
    grids.meta.append((len(grids.a), len(a_rows), len(grids.b), len(b_rows), len(grids.cols),
                       direct))
    grids.a += a_rows
    grids.b += b_rows
    grids.cols += cols.tolist()
    grids.strides.append(strides)


def _strides(cols: np.ndarray) -> tuple[int, int, int]:
    """(col0, di, dj) when ``cols[i, j] == col0 + i*di + j*dj`` everywhere, else (-1, 0, 0)."""
    n_a, n_b = cols.shape
    col0 = int(cols[0, 0])
    di = int(cols[1, 0] - col0) if n_a > 1 else 0
    dj = int(cols[0, 1] - col0) if n_b > 1 else 0
    want = col0 + di * np.arange(n_a)[:, None] + dj * np.arange(n_b)[None, :]
    if col0 < 0 or not np.array_equal(cols, want):
        return (-1, 0, 0)
    return (col0, di, dj)


def _rows_read(tp: Tape, steps: list[tuple[int, int, int]], dot_steps: list[int],
               dense: _Dense, grids: _Grids, rest: list[tuple[int, int, int]],
               n_out: int) -> set[int]:
    """Every slot read as a workspace row by some step or result."""
    read: set[int] = set(dense.x) | set(grids.a) | set(grids.b)
    read |= {a for _, a, _ in rest} | {b for _, _, b in rest}
    read |= set(tp.result_slots[:n_out].tolist())
    for op, lo, hi in steps:
        if op < DOT:
            for operand in (tp.a0, tp.a1, tp.a2)[: OPS[OPNAMES[op]].arity]:
                read |= set(operand[lo:hi].tolist())
    for k in dot_steps:
        t0, t1 = int(tp.a0[k]), int(tp.a1[k])
        read |= set(tp.ta[t0:t1].tolist()) | set(tp.tb[t0:t1].tolist())
    return read

"""Dense-layer kernels for the tape: order-exact sums of products, at close to BLAS speed.

Imports numpy, numba and llvmlite only (nothing from symgrad). A dense layer of a micrograd model
reaches the tape as many fused sums that share one list of per-example rows; these kernels
compute a whole group of them, and the products summed into weight gradients, keeping each sum
in exactly its sequential order: the first term is a product, every next product is rounded and
then added (never a fused multiply-add, never reassociated), so results are bit for bit the
tape's own.

Speed comes from register tiles: `ROWS` sums times `COLS` lanes (examples, or gradient columns)
stay in vector registers for a whole sum, so each loaded vector feeds `ROWS` products and each
accumulator is read and written once per tile instead of once per term. Numba leaves LLVM's SLP
vectoriser off and its loop vectoriser only sees innermost loops, so neither keeps accumulators
in registers across a sum; the tile is therefore emitted as LLVM IR (`_emit_tile`): a loop whose
accumulators are vector phis. Its multiplies and adds are plain ``fmul``/``fadd`` without
fast-math flags, which LLVM may not contract into FMAs. Masked loads and stores handle a
partial tile, so arrays need no padding and no column outside the requested range is read or
written. The rows left after the full tiles, fewer than `ROWS` (a layer with one output has
only those), take a thin tile of just those rows and more vectors per row (`_THIN`), so that
it still has about as many independent add chains.

Layout conventions (every array C-contiguous):

- ``work``: float64 ``(n_slots, block)``, a structure-of-arrays workspace: row = slot, column =
  example of the current block.
- row lists (``out_rows``, ``x_rows``, ``a_rows``, ``b_rows``): int64 vectors of slots.
- ``W``: float64 ``(n_out, K)``, the per-call factors: ``W[o, k]`` multiplies
  ``work[x_rows[k]]`` in output ``o``; `gather` fills it from a parameter vector.

All kernels are ``numba.njit(nogil=True, cache=True)``: callable from Python (from any thread)
and from other jitted code such as a tape executor, compiled on first use for the argument
types they meet (the tiles are LLVM intrinsics, so they need the JIT: not for
``NUMBA_DISABLE_JIT``). Bad shapes and out-of-range slots raise ValueError, checked once per
call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import llvmlite.binding as llvm
import llvmlite.ir as lir
import numba
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, register_jitable

__all__ = [
    "COLS", "NARROW_COLS", "ROWS", "THIN_CHAINS", "WIDTH", "dense_forward", "dense_outer",
    "dense_outer_rows", "gather", "outer_swapped",
]


def _host_width() -> int:
    """Doubles per vector register of Numba's target: 8 with AVX-512, else 4.

    LLVM splits a vector wider than the target's registers, so any width is correct; this one
    fills the registers without spilling the tile's accumulators.
    """
    forced = numba.config.CPU_FEATURES  # NUMBA_CPU_FEATURES, when the user set a target
    if forced is not None:
        return 8 if "+avx512f" in forced else 4
    try:
        features = llvm.get_host_cpu_features()
    except RuntimeError:  # no feature list on this host
        return 4
    return 8 if features.get("avx512f", False) else 4


WIDTH = _host_width()  # doubles per vector
VECS = 2  # vectors per tile row
ROWS = 4  # tile rows: ROWS * VECS independent add chains hide the add latency
COLS = VECS * WIDTH  # lanes per tile
# Fewer rows than ROWS take a tile of just those rows, with about THIN_CHAINS vectors in all:
# a full tile with its rows clamped to the last would compute that row up to ROWS times. The
# last few lanes take narrow tiles (two vectors a row), so that they do not pay for a wide
# tile's masked-off vectors.
THIN_CHAINS = ROWS * VECS
NARROW_COLS = 2 * WIDTH  # lanes of a narrow tile


class _Tile(NamedTuple):
    """A register tile's shape: `rows` sums times `vecs` vectors of `WIDTH` lanes."""

    rows: int
    vecs: int


_MAIN = _Tile(ROWS, VECS)
_THIN = tuple(_Tile(r, THIN_CHAINS // r) for r in range(1, ROWS))  # by rows: 1 to ROWS - 1
_NARROW = tuple(_Tile(r, NARROW_COLS // WIDTH) for r in range(1, ROWS))
_THIN_COLS = tuple(t.vecs * WIDTH for t in _THIN)
assert ROWS == 4 and _THIN[2] == _NARROW[2]  # the kernels name each thin tile


@register_jitable
def _thin_step(rows: int, left: int) -> tuple[bool, int]:
    """The thin tile for `rows` rows (1 to ROWS - 1) with `left` lanes to go: whether it is
    the narrow one, and its lanes. Two narrow tiles, which do no masked-off work, cost less
    than one wide tile that is half masked off or more."""
    if left <= 2 * NARROW_COLS:
        return True, NARROW_COLS
    return False, _THIN_COLS[rows - 1]


_I32 = lir.IntType(32)
_I64 = lir.IntType(64)
_F64 = lir.DoubleType()
_VEC = lir.VectorType(_F64, WIDTH)
_ALIGN = lir.Constant(_I32, 8)  # rows start anywhere: aligned to one double only


# ---- the register tile, as LLVM IR ----------------------------------------------------------


def _splat(builder: Any, x: Any, vty: Any) -> Any:
    first = builder.insert_element(lir.Constant(vty, None), x, lir.Constant(_I32, 0))
    return builder.shuffle_vector(first, first, lir.Constant(lir.VectorType(_I32, WIDTH),
                                                             [0] * WIDTH))


def _masks(builder: Any, n: Any, vecs: int) -> list[Any]:
    """Per vector of a tile row, its lanes below `n` (lane v*WIDTH + i is on when it is < n)."""
    lanes = lir.Constant(lir.VectorType(_I64, WIDTH), list(range(WIDTH)))
    out = []
    for v in range(vecs):
        left = _splat(builder, builder.sub(n, lir.Constant(_I64, v * WIDTH)),
                      lir.VectorType(_I64, WIDTH))
        out.append(builder.icmp_signed("<", lanes, left))
    return out


def _masked(builder: Any, op: str, args: list[Any]) -> Any:
    ret = _VEC if op == "load" else lir.VoidType()
    fnty = lir.FunctionType(ret, [a.type for a in args])
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.masked.{op}.v{WIDTH}f64.p0")
    return builder.call(fn, args)


def _load_tile_row(builder: Any, ptr: Any, masks: list[Any]) -> list[Any]:
    zero = lir.Constant(_VEC, [0.0] * WIDTH)
    return [_masked(builder, "load", [builder.gep(ptr, [lir.Constant(_I64, v * WIDTH)]),
                                      _ALIGN, m, zero]) for v, m in enumerate(masks)]


def _store_tile_row(builder: Any, ptr: Any, masks: list[Any], acc: list[Any]) -> None:
    for v, m in enumerate(masks):
        _masked(builder, "store", [acc[v], builder.gep(ptr, [lir.Constant(_I64, v * WIDTH)]),
                                   _ALIGN, m])


_Addr = Callable[..., Any]  # (step) -> vector row pointer, or (step, row) -> scalar pointer


def _products(builder: Any, t: Any, vector_at: _Addr, scalar_at: _Addr, masks: list[Any],
              rows: int) -> list[list[Any]]:
    """Step `t`'s products: tile row r, vector v = scalar(t, r) * vector(t)[v], rounded."""
    xs = _load_tile_row(builder, vector_at(t), masks)
    out = []
    for r in range(rows):
        w = _splat(builder, builder.load(scalar_at(t, r)), _VEC)
        out.append([builder.fmul(w, x) for x in xs])
    return out


def _emit_tile(builder: Any, init: list[list[Any]], start: Any, stop: Any, vector_at: _Addr,
               scalar_at: _Addr, masks: list[Any]) -> list[list[Any]]:
    """``acc = init; for t in [start, stop): acc = acc + products(t)``; returns the final acc.

    The tile's shape is that of `init` (rows x vectors). The accumulators are loop phis, so they
    live in registers for the whole loop; each step's product is rounded, then added: the
    sequential sum, term by term.
    """
    pre = builder.block
    head = builder.append_basic_block("tile.head")
    body = builder.append_basic_block("tile.body")
    done = builder.append_basic_block("tile.done")
    builder.branch(head)
    builder.position_at_end(head)
    t = builder.phi(_I64)
    acc = [[builder.phi(_VEC) for _ in row] for row in init]
    t.add_incoming(start, pre)
    for acc_row, init_row in zip(acc, init, strict=True):
        for a, a0 in zip(acc_row, init_row, strict=True):
            a.add_incoming(a0, pre)
    builder.cbranch(builder.icmp_signed("<", t, stop), body, done)
    builder.position_at_end(body)
    prod = _products(builder, t, vector_at, scalar_at, masks, len(init))
    for acc_row, prod_row in zip(acc, prod, strict=True):
        for a, p in zip(acc_row, prod_row, strict=True):
            a.add_incoming(builder.fadd(a, p), body)
    t.add_incoming(builder.add(t, lir.Constant(_I64, 1)), body)
    builder.branch(head)
    builder.position_at_end(done)
    return acc


def _int64s(context: Any, builder: Any, vals: Any, tys: Any) -> list[Any]:
    return [context.cast(builder, v, t, types.int64) for v, t in zip(vals, tys, strict=True)]


def _tile_rows(builder: Any, first: Any, n_rows: Any, rows: int) -> list[Any]:
    """Tile rows first .. first+rows-1, clamped to the last row."""
    last = builder.sub(n_rows, lir.Constant(_I64, 1))
    out = []
    for r in range(rows):
        i = builder.add(first, lir.Constant(_I64, r))
        out.append(builder.select(builder.icmp_signed("<", i, last), i, last))
    return out


def _matrix(t: Any) -> bool:
    return (isinstance(t, types.Array) and t.ndim == 2 and t.layout == "C"
            and t.dtype == types.float64)


def _vector(t: Any) -> bool:
    return isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C" and t.dtype == types.int64


def _named_intrinsic(fn: Callable[..., Any], tile: _Tile) -> Any:
    # one intrinsic per tile shape, named after it (in the IR and machine code too)
    fn.__name__ = fn.__qualname__ = f"{fn.__name__}_{tile.rows}x{tile.vecs}"
    return intrinsic(fn)


def _forward_tile(tile: _Tile) -> Any:
    """The intrinsic for one `tile` of `dense_forward`."""

    def forward_tile(typingctx: Any, work: Any, out_rows: Any, x_rows: Any, W: Any, o0: Any,
                     e: Any, n: Any) -> Any:
        """Outputs o0.. (tile rows, clamped) at examples e .. e+min(n, tile lanes)-1."""
        if not (_matrix(work) and _vector(out_rows) and _vector(x_rows) and _matrix(W)
                and all(isinstance(t, types.Integer) for t in (o0, e, n))):
            return None

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            wk, orows, xrows, w = (context.make_array(t)(context, builder, a)
                                   for t, a in zip(sig.args[:4], args[:4], strict=True))
            o0_, e_, n_ = _int64s(context, builder, args[4:], sig.args[4:])
            ld = cgutils.unpack_tuple(builder, wk.shape)[1]
            n_out, K = cgutils.unpack_tuple(builder, w.shape)
            rows = _tile_rows(builder, o0_, n_out, tile.rows)
            masks = _masks(builder, n_, tile.vecs)

            def row_at(slots: Any, i: Any) -> Any:  # &work[slots[i], e]
                slot = builder.load(builder.gep(slots.data, [i]))
                return builder.gep(wk.data, [builder.add(builder.mul(slot, ld), e_)])

            def scalar_at(t: Any, r: int) -> Any:  # &W[rows[r], t]
                return builder.gep(w.data, [builder.add(builder.mul(rows[r], K), t)])

            def vector_at(t: Any) -> Any:  # &work[x_rows[t], e]
                return row_at(xrows, t)

            # the first term starts each sum: a product, not 0.0 + product (0.0 + -0.0 is +0.0)
            init = _products(builder, lir.Constant(_I64, 0), vector_at, scalar_at, masks,
                             tile.rows)
            acc = _emit_tile(builder, init, lir.Constant(_I64, 1), K, vector_at, scalar_at,
                             masks)
            for r in range(tile.rows):
                _store_tile_row(builder, row_at(orows, rows[r]), masks, acc[r])
            return context.get_dummy_value()

        return types.void(work, out_rows, x_rows, W, o0, e, n), codegen

    return _named_intrinsic(forward_tile, tile)


def _outer_tile(tile: _Tile) -> Any:
    """The intrinsic for one `tile` of `dense_outer`."""

    def outer_tile(typingctx: Any, G: Any, Bt: Any, work: Any, a_rows: Any, i0: Any, j0: Any,
                   e0: Any, e1: Any) -> Any:
        """Rows i0.. (tile rows, clamped) and columns j0.. (tile lanes, masked) of `G`."""
        if not (_matrix(G) and _matrix(Bt) and _matrix(work) and _vector(a_rows)
                and all(isinstance(t, types.Integer) for t in (i0, j0, e0, e1))):
            return None

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            g, bt, wk, arows = (context.make_array(t)(context, builder, a)
                                for t, a in zip(sig.args[:4], args[:4], strict=True))
            i0_, j0_, e0_, e1_ = _int64s(context, builder, args[4:], sig.args[4:])
            n_i, n_j = cgutils.unpack_tuple(builder, g.shape)
            ld_bt = cgutils.unpack_tuple(builder, bt.shape)[1]
            ld = cgutils.unpack_tuple(builder, wk.shape)[1]
            rows = _tile_rows(builder, i0_, n_i, tile.rows)
            masks = _masks(builder, builder.sub(n_j, j0_), tile.vecs)
            g_at = [builder.gep(g.data, [builder.add(builder.mul(i, n_j), j0_)]) for i in rows]
            a_at = [builder.gep(wk.data, [builder.mul(builder.load(builder.gep(arows.data, [i])),
                                                      ld)]) for i in rows]

            def vector_at(t: Any) -> Any:  # &Bt[t - e0, j0]
                return builder.gep(bt.data, [builder.add(builder.mul(builder.sub(t, e0_), ld_bt),
                                                         j0_)])

            def scalar_at(t: Any, r: int) -> Any:  # &work[a_rows[rows[r]], t]
                return builder.gep(a_at[r], [t])

            init = [_load_tile_row(builder, p, masks) for p in g_at]
            acc = _emit_tile(builder, init, e0_, e1_, vector_at, scalar_at, masks)
            for r in range(tile.rows):
                _store_tile_row(builder, g_at[r], masks, acc[r])
            return context.get_dummy_value()

        return types.void(G, Bt, work, a_rows, i0, j0, e0, e1), codegen

    return _named_intrinsic(outer_tile, tile)


_forward_main = _forward_tile(_MAIN)
_forward_thin1, _forward_thin2, _forward_thin3 = map(_forward_tile, _THIN)
_forward_narrow1, _forward_narrow2 = map(_forward_tile, _NARROW[:2])
_outer_main = _outer_tile(_MAIN)
_outer_thin1, _outer_thin2, _outer_thin3 = map(_outer_tile, _THIN)
_outer_narrow1, _outer_narrow2 = map(_outer_tile, _NARROW[:2])


# ---- the transposed copy --------------------------------------------------------------------

_PAIR, _QUAD = lir.VectorType(_F64, 2), lir.VectorType(_F64, 4)


def _transpose4(builder: Any, srcs: list[Any], dest: Any, n: Any) -> None:
    """Four examples of four slots: ``dest[q * n + i] = srcs[i][q]``.

    Each 4-vector holds two examples of two slots (slots 0 and 2, or 1 and 3: two loads of a
    pair, which x86 does as one load and one load-and-insert); interleaving the low, then the
    high, lanes of two such vectors gives one example of all four slots. Sixteen values take
    eight loads, four shuffles and four stores, where a copy value by value takes sixteen loads
    and sixteen stores.
    """
    def pair(i: int, k: int) -> Any:  # srcs[i][k : k + 2]
        ptr = builder.bitcast(builder.gep(srcs[i], [lir.Constant(_I64, k)]), _PAIR.as_pointer())
        return builder.load(ptr, align=8)

    def quad(i: int, k: int) -> Any:  # (srcs[i][k], srcs[i][k+1], srcs[i+2][k], srcs[i+2][k+1])
        return builder.shuffle_vector(pair(i, k), pair(i + 2, k),
                                      lir.Constant(lir.VectorType(_I32, 4), [0, 1, 2, 3]))

    for k in (0, 2):
        even, odd = quad(0, k), quad(1, k)
        for q, lanes in ((k, [0, 4, 2, 6]), (k + 1, [1, 5, 3, 7])):
            row = builder.shuffle_vector(even, odd, lir.Constant(lir.VectorType(_I32, 4), lanes))
            at = builder.gep(dest, [builder.mul(lir.Constant(_I64, q), n)])
            builder.store(row, builder.bitcast(at, _QUAD.as_pointer()), align=8)


@intrinsic
def _transpose_into(typingctx: Any, dest: Any, work: Any, rows: Any, e0: Any) -> Any:
    """``dest[t, j] = work[rows[j], e0 + t]``: slots side by side, one example per row.

    Eight slots at a time, so that each example's eight values fill a cache line of `dest`
    at once (a line written in parts, with the other rows of `dest` in between, may have left
    the cache by its next part), and the slots are read along their rows. Within them four
    slots by four examples are transposed in registers (`_transpose4`); what is left over,
    fewer than four slots or examples, is copied value by value.
    """
    if not (_matrix(dest) and _matrix(work) and _vector(rows) and isinstance(e0, types.Integer)):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        d, wk, rw = (context.make_array(t)(context, builder, a)
                     for t, a in zip(sig.args[:3], args[:3], strict=True))
        (e0_,) = _int64s(context, builder, args[3:], sig.args[3:])
        n_t, n = cgutils.unpack_tuple(builder, d.shape)
        ld = cgutils.unpack_tuple(builder, wk.shape)[1]

        def const(k: int) -> Any:
            return lir.Constant(_I64, k)

        def source(j: Any) -> Any:  # &work[rows[j], e0]
            slot = builder.load(builder.gep(rw.data, [j]))
            return builder.gep(wk.data, [builder.add(builder.mul(slot, ld), e0_)])

        def columns(j0: Any, width: int) -> None:  # slots j0 .. j0+width-1, every example
            srcs = [source(builder.add(j0, const(q))) for q in range(width)]
            done = const(0)  # examples copied in blocks of four
            if width >= 4:
                blocks = builder.sdiv(n_t, const(4))
                with cgutils.for_range(builder, blocks) as block:
                    t0 = builder.mul(block.index, const(4))
                    row = builder.gep(d.data, [builder.add(builder.mul(t0, n), j0)])
                    for q in range(0, width, 4):
                        _transpose4(builder, [builder.gep(p, [t0]) for p in srcs[q:q + 4]],
                                    builder.gep(row, [const(q)]), n)
                done = builder.mul(blocks, const(4))
            with cgutils.for_range(builder, n_t, start=done) as t:
                row = builder.gep(d.data, [builder.add(builder.mul(t.index, n), j0)])
                for q in range(width):
                    value = builder.load(builder.gep(srcs[q], [t.index]))
                    builder.store(value, builder.gep(row, [const(q)]))

        n8 = builder.sdiv(n, const(8))
        with cgutils.for_range(builder, n8) as block:
            columns(builder.mul(block.index, const(8)), 8)
        j = builder.mul(n8, const(8))
        with builder.if_then(builder.icmp_signed(">=", builder.sub(n, j), const(4))):
            columns(j, 4)
        with cgutils.for_range(builder, n, start=builder.mul(builder.sdiv(n, const(4)),
                                                            const(4))) as rest:
            columns(rest.index, 1)
        return context.get_dummy_value()

    return types.void(dest, work, rows, e0), codegen


_jit = numba.njit(nogil=True, cache=True, error_model="numpy")
_inline = numba.njit(inline="always")  # a named step of a kernel, compiled as part of it


# ---- the kernels --------------------------------------------------------------------------------


@_jit
def _span(rows: Any, n_slots: int) -> tuple[int, int]:
    # (lowest, highest) slot of `rows`, all checked to lie in [0, n_slots)
    lo, hi = n_slots, -1
    for s in rows:
        if s < 0 or s >= n_slots:
            raise ValueError("dense kernel: a row index is outside the workspace")
        lo = min(lo, s)
        hi = max(hi, s)
    return lo, hi


@_jit
def dense_forward(work: Any, out_rows: Any, x_rows: Any, W: Any, nb: int) -> None:
    """A group of sums of products sharing one row list, each in its sequential order.

    For every output ``o < n_out`` and example ``e < nb``::

        work[out_rows[o], e] = (...((W[o, 0] * work[x_rows[0], e])
                                    + W[o, 1] * work[x_rows[1], e]) + ...)
                               + W[o, K-1] * work[x_rows[K-1], e]

    every product rounded, then added, left to right (no FMA, no reordering). A layer's
    forward pass is one call (``x_rows[0]`` a row of ones with ``W[:, 0]`` the biases, since
    ``b * 1.0`` is exactly ``b``, then the inputs with their weights); so are its input
    gradients (the cotangent rows in the tape's order, with the transposed weights). In a
    tape's run of fused sums, the steps whose per-example rows are the same list form one
    group; a term whose two factors are both uniform (the bias times the literal 1.0) takes
    the literal's row as its x row and the other factor into `W`.

    Args:
        work: ``(n_slots, block)`` float64 workspace; only columns ``[0, nb)`` are touched.
        out_rows: ``(n_out,)`` int64 slots written; none of them may be in `x_rows`.
        x_rows: ``(K,)`` int64 slots read, ``K >= 1``.
        W: ``(n_out, K)`` float64, the same for every example.
        nb: examples in this block, ``0 <= nb <= work.shape[1]``.
    """
    n_out, K = W.shape
    if out_rows.shape[0] != n_out or x_rows.shape[0] != K or K == 0:
        raise ValueError("dense_forward: W must be (len(out_rows), len(x_rows)) with K >= 1")
    if nb < 0 or nb > work.shape[1]:
        raise ValueError("dense_forward: nb must be in [0, work.shape[1]]")
    lo_o, hi_o = _span(out_rows, work.shape[0])
    lo_x, hi_x = _span(x_rows, work.shape[0])
    if lo_o <= hi_x and lo_x <= hi_o:  # the spans overlap: compare every pair
        for s in out_rows:
            for t in x_rows:
                if s == t:
                    raise ValueError("dense_forward: out_rows and x_rows share a slot")
    # one term: nothing to keep in registers; a plain loop (LLVM vectorises it) writes each
    # output row in one sweep, where tiles, examples outer, go from row to row
    if K == 1:
        x = work[x_rows[0]]
        for o in range(n_out):
            out, w = work[out_rows[o]], W[o, 0]
            for e in range(nb):
                out[e] = w * x[e]
        return
    n_main = n_out - n_out % ROWS
    # examples outer: one tile's slice of the rows (K x COLS) stays in L1 for every output
    for e in range(0, nb, COLS):
        for o0 in range(0, n_main, ROWS):
            _forward_main(work, out_rows, x_rows, W, o0, e, nb - e)
    if n_main < n_out:
        _forward_rest(work, out_rows, x_rows, W, n_main, nb)


@_inline
def _forward_rest(work: Any, out_rows: Any, x_rows: Any, W: Any, o0: int, nb: int) -> None:
    # outputs o0.. (the last 1 to ROWS - 1) of dense_forward, in thin tiles
    rows = W.shape[0] - o0
    e = 0
    while e < nb:
        narrow, step = _thin_step(rows, nb - e)
        if rows == 1 and narrow:
            _forward_narrow1(work, out_rows, x_rows, W, o0, e, nb - e)
        elif rows == 1:
            _forward_thin1(work, out_rows, x_rows, W, o0, e, nb - e)
        elif rows == 2 and narrow:
            _forward_narrow2(work, out_rows, x_rows, W, o0, e, nb - e)
        elif rows == 2:
            _forward_thin2(work, out_rows, x_rows, W, o0, e, nb - e)
        else:
            _forward_thin3(work, out_rows, x_rows, W, o0, e, nb - e)
        e += step


@_jit
def dense_outer(G: Any, work: Any, a_rows: Any, b_rows: Any, e0: int, e1: int) -> None:
    """Add the products of two row lists into `G`, example by example, in example order.

    For every ``i``, ``j``: ``G[i, j] = ((G[i, j] + A[i, e0] * B[j, e0]) + A[i, e0+1] *
    B[j, e0+1]) + ...`` up to ``e1 - 1``, where ``A[i, e] = work[a_rows[i], e]`` and
    ``B[j, e] = work[b_rows[j], e]``: each product rounded, then added (no FMA, no
    reordering). A layer's weight gradients over a block (cotangents times inputs) are one
    call; a chunk's sum starts from ``G = 0.0`` and runs over the chunk's blocks in order.

    The tile's lanes run along `j` and `b_rows` is copied to a transposed scratch first, so the
    two orientations of one gradient differ in speed (not in value: ``G.T`` from the lists
    exchanged holds the same sums); `outer_swapped` says which to use.

    Args:
        G: ``(len(a_rows), len(b_rows))`` float64, updated in place; not a view of `work`.
        work: ``(n_slots, block)`` float64 workspace, read only.
        a_rows, b_rows: int64 slots.
        e0, e1: the examples summed, ``0 <= e0 <= e1 <= work.shape[1]``.
    """
    n_i, n_j = G.shape
    if a_rows.shape[0] != n_i or b_rows.shape[0] != n_j:
        raise ValueError("dense_outer: G must be (len(a_rows), len(b_rows))")
    if e0 < 0 or e0 > e1 or e1 > work.shape[1]:
        raise ValueError("dense_outer: need 0 <= e0 <= e1 <= work.shape[1]")
    _span(a_rows, work.shape[0])
    _span(b_rows, work.shape[0])
    if n_i == 0 or n_j == 0 or e0 == e1:
        return
    Bt = np.empty((e1 - e0, n_j))
    _transpose_into(Bt, work, b_rows, e0)
    n_main = n_i - n_i % ROWS
    for j0 in range(0, n_j, COLS):  # j outer: a tile's columns of Bt stay in L1 for every i
        for i0 in range(0, n_main, ROWS):
            _outer_main(G, Bt, work, a_rows, i0, j0, e0, e1)
    if n_main < n_i:
        _outer_rest(G, Bt, work, a_rows, n_main, e0, e1)


@_inline
def _outer_rest(G: Any, Bt: Any, work: Any, a_rows: Any, i0: int, e0: int, e1: int) -> None:
    # rows i0.. (the last 1 to ROWS - 1) of dense_outer, in thin tiles
    rows, n_j = G.shape[0] - i0, G.shape[1]
    j0 = 0
    while j0 < n_j:
        narrow, step = _thin_step(rows, n_j - j0)
        if rows == 1 and narrow:
            _outer_narrow1(G, Bt, work, a_rows, i0, j0, e0, e1)
        elif rows == 1:
            _outer_thin1(G, Bt, work, a_rows, i0, j0, e0, e1)
        elif rows == 2 and narrow:
            _outer_narrow2(G, Bt, work, a_rows, i0, j0, e0, e1)
        elif rows == 2:
            _outer_thin2(G, Bt, work, a_rows, i0, j0, e0, e1)
        else:
            _outer_thin3(G, Bt, work, a_rows, i0, j0, e0, e1)
        j0 += step


@_jit
def dense_outer_rows(out: Any, row0: int, col0: int, di: int, dj: int, work: Any, a_rows: Any,
                     b_rows: Any, nb: int) -> None:
    """Per-example products: ``out[row0 + e, col0 + i*di + j*dj] += A[i, e] * B[j, e]``.

    With ``A``, ``B`` as in `dense_outer`, for ``e < nb`` and every ``i``, ``j``, visited in
    that order (``e``, then ``i``, then ``j``): the rows of a ``reduce="none"`` gradient. The
    product is added to what `out` holds (``out = out + product``), which is what the
    interpreted engine's ``grad += ...`` does: from a zeroed `out`, a -0.0 product gives +0.0.
    A dense layer's weights at ``first + i*(n_in + 1) + j`` are ``col0=first, di=n_in+1,
    dj=1``; ``dj == 1`` vectorises.

    Args:
        out: ``(rows, P)`` float64, updated in place; not a view of `work`.
        row0: the row of `out` for example 0; rows ``[row0, row0 + nb)`` must exist.
        col0, di, dj: where product ``(i, j)`` goes; every such column must exist.
        work: ``(n_slots, block)`` float64 workspace, read only.
        a_rows, b_rows: int64 slots.
        nb: examples in this block, ``0 <= nb <= work.shape[1]``.
    """
    n_i, n_j = a_rows.shape[0], b_rows.shape[0]
    if nb < 0 or nb > work.shape[1] or row0 < 0 or row0 + nb > out.shape[0]:
        raise ValueError("dense_outer_rows: need 0 <= nb <= work.shape[1] rows of out from row0")
    _span(a_rows, work.shape[0])
    _span(b_rows, work.shape[0])
    if n_i == 0 or n_j == 0 or nb == 0:
        return
    lo = col0 + min(0, (n_i - 1) * di) + min(0, (n_j - 1) * dj)
    hi = col0 + max(0, (n_i - 1) * di) + max(0, (n_j - 1) * dj)
    if lo < 0 or hi >= out.shape[1]:
        raise ValueError("dense_outer_rows: a product's column is outside out")
    Bt = np.empty((nb, n_j))
    _transpose_into(Bt, work, b_rows, 0)
    for e in range(nb):
        dest = out[row0 + e]
        b = Bt[e]
        for i in range(n_i):
            a = work[a_rows[i], e]
            c = col0 + i * di
            for j in range(n_j):  # LLVM versions this loop for dj == 1 and vectorises it
                dest[c + j * dj] = dest[c + j * dj] + a * b[j]


@_jit
def gather(src: Any, idx: Any, out: Any) -> None:
    """``out[o, k] = src[idx[o, k]]``: a layer's factor matrix `W` from a parameter vector.

    Args:
        src: 1-D float64 (any stride: a column of the workspace works too).
        idx: ``(n_out, K)`` int64 positions in `src`.
        out: ``(n_out, K)`` float64, written.
    """
    if idx.shape != out.shape:
        raise ValueError("gather: idx and out must have the same shape")
    n = src.shape[0]
    for o in range(idx.shape[0]):
        for k in range(idx.shape[1]):
            s = idx[o, k]
            if s < 0 or s >= n:
                raise ValueError("gather: an index is outside src")
            out[o, k] = src[s]


def _tile_pairs(n_i: int, n_j: int) -> int:
    """Vector multiply-add pairs per example in `dense_outer`'s tiles of an ``(n_i, n_j)`` grid.

    The same plan as the kernel's: full-row tiles, then the thin tiles of the rows left. A step
    counts at least 4 pairs: a tile with fewer independent add chains waits for their latency.
    """
    pairs = (n_i // ROWS) * -(-n_j // COLS) * ROWS * VECS
    rows, j = n_i % ROWS, 0
    while rows and j < n_j:
        narrow, step = _thin_step(rows, n_j - j)
        tile = (_NARROW if narrow else _THIN)[rows - 1]
        pairs += max(tile.rows * tile.vecs, 4)
        j += step
    return pairs


def outer_swapped(n_a: int, n_b: int) -> bool:
    """Whether `dense_outer` should get the two lists exchanged (and accumulate ``G.T``).

    A cost model of the kernel, per example: its tiles' vector multiply-add pairs, plus the
    transposed copy of `b_rows` (``n_j`` values, each about half a pair). For a layer of 64
    outputs and 16 inputs it puts the 16 inputs second; for a single output, its cotangent
    first; for 64 by 65 the 65 first, which fills the lanes of every tile. The results are the
    same bits either way.
    """
    def cost(n_i: int, n_j: int) -> int:
        return 2 * _tile_pairs(n_i, n_j) + n_j

    return cost(n_b, n_a) < cost(n_a, n_b)

"""symgrad.executors.dense: every kernel equals a naive sequential pure-Python sum, bit for bit.

The oracle below is the definition written as plainly as possible: Python floats (IEEE doubles,
one rounding per operation, no FMA), one sum at a time, terms in order. Hypothesis draws shapes
around the tile sizes (one row, one term, one example, partial tiles) and values that expose any
change of order: -0.0, infinities, nan, subnormals, huge and tiny magnitudes. Separate tests
pin values where an FMA, a reassociated sum or a sum started from 0.0 gives another result.
"""

from __future__ import annotations

import platform
import threading

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symgrad.executors import dense

# ---- the oracle ---------------------------------------------------------------------------


def ref_forward(work, out_rows, x_rows, W, nb):
    out = work.copy()
    for o, dest in enumerate(out_rows):
        for e in range(nb):
            acc = float(W[o, 0]) * float(work[x_rows[0], e])
            for k in range(1, len(x_rows)):
                acc = acc + float(W[o, k]) * float(work[x_rows[k], e])
            out[dest, e] = acc
    return out


def ref_outer(G, work, a_rows, b_rows, e0, e1):
    out = G.copy()
    for i, a in enumerate(a_rows):
        for j, b in enumerate(b_rows):
            acc = float(G[i, j])
            for e in range(e0, e1):
                acc = acc + float(work[a, e]) * float(work[b, e])
            out[i, j] = acc
    return out


def ref_outer_rows(out, row0, col0, di, dj, work, a_rows, b_rows, nb):
    res = out.copy()
    for e in range(nb):
        for i, a in enumerate(a_rows):
            for j, b in enumerate(b_rows):
                c = col0 + i * di + j * dj
                res[row0 + e, c] = float(res[row0 + e, c]) + float(work[a, e]) * float(work[b, e])
    return res


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bits everywhere (so -0.0 != 0.0), except that any nan equals any nan."""
    a, b = np.asarray(a), np.asarray(b)
    same = (a.view(np.int64) == b.view(np.int64)) | (np.isnan(a) & np.isnan(b))
    return a.shape == b.shape and bool(same.all())


# ---- values and shapes --------------------------------------------------------------------

SPECIAL = [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 5e-324, -2.2250738585072014e-308,
           1.7976931348623157e308, -1e308, 1e-300, 3.0, 1e16, -1e16, 1.0 + 2.0**-52]
values = st.one_of(st.sampled_from(SPECIAL), st.floats(allow_nan=True, allow_infinity=True),
                   st.floats(-10.0, 10.0))


def fill(draw, shape):
    n = int(np.prod(shape))
    return np.array(draw(st.lists(values, min_size=n, max_size=n)), np.float64).reshape(shape)


# sizes straddle a tile: one, just under and over a vector, a tile, and odd sizes between
sizes = st.one_of(st.integers(1, 5), st.sampled_from(
    sorted({dense.WIDTH - 1, dense.WIDTH + 1, dense.COLS, dense.COLS + 3, 2 * dense.COLS + 1})))
examples = st.one_of(st.integers(0, 3), sizes)
# lane counts around each tile's width (the main tile's, a narrow tile's and twice that, the thin
# tiles' of one, two and three rows), where a kernel changes tiles or masks a partial one
_EDGES = {dense.COLS, dense.NARROW_COLS, 2 * dense.NARROW_COLS,
          *(dense.THIN_CHAINS // r * dense.WIDTH for r in (1, 2, 3))}
lanes = st.one_of(st.integers(1, 3), st.sampled_from(sorted(
    {e + d for e in _EDGES for d in (-1, 0, 1)} | {2 * dense.THIN_CHAINS * dense.WIDTH + 1})))
# fewer rows than a tile, alone or left after full tiles: the thin tiles' rows
thin_rows = st.sampled_from([1, 2, 3, dense.ROWS + 1, dense.ROWS + 2, 2 * dense.ROWS + 3])


@st.composite
def workspace(draw, n_rows):
    """A work array with `n_rows` disjoint groups of slots, shuffled, plus spare columns."""
    sizes_ = list(n_rows)
    n_slots = sum(sizes_) + draw(st.integers(0, 3))
    perm = draw(st.permutations(range(n_slots)))
    groups, at = [], 0
    for n in sizes_:
        groups.append(np.array(perm[at: at + n], np.int64))
        at += n
    return n_slots, groups


@st.composite
def forward_cases(draw):
    n_out, K, nb = draw(sizes), draw(sizes), draw(examples)
    block = nb + draw(st.integers(0, 3))
    n_slots, (out_rows, x_rows) = draw(workspace((n_out, K)))
    if K > 1 and draw(st.booleans()):
        x_rows[-1] = x_rows[0]  # a row read twice
    work = fill(draw, (n_slots, max(block, 1)))[:, :block].copy()
    return work, out_rows, x_rows, fill(draw, (n_out, K)), nb


@st.composite
def thin_forward_cases(draw):
    """Forward cases on thin tiles: 1 to 3 outputs (or that many after full tiles), examples
    around every thin tile's width, one term (its own loop) or several."""
    n_out, K, nb = draw(thin_rows), draw(st.one_of(st.just(1), sizes)), draw(lanes)
    block = nb + draw(st.integers(0, 3))
    n_slots, (out_rows, x_rows) = draw(workspace((n_out, K)))
    work = fill(draw, (n_slots, block))
    return work, out_rows, x_rows, fill(draw, (n_out, K)), nb


@st.composite
def outer_cases(draw, n_rows=sizes, n_cols=sizes):
    n_i, n_j, block = draw(n_rows), draw(n_cols), draw(examples)
    e0 = draw(st.integers(0, block))
    e1 = draw(st.integers(e0, block))
    n_slots, (a_rows, b_rows) = draw(workspace((n_i, n_j)))
    if draw(st.booleans()):
        b_rows[0] = a_rows[0]  # a slot in both lists: x * x
    work = fill(draw, (n_slots, max(block, 1)))[:, :block].copy()
    return fill(draw, (n_i, n_j)), work, a_rows, b_rows, e0, e1


@st.composite
def outer_rows_cases(draw):
    n_i, n_j, nb = draw(sizes), draw(sizes), draw(examples)
    n_slots, (a_rows, b_rows) = draw(workspace((n_i, n_j)))
    work = fill(draw, (n_slots, max(nb, 1)))[:, :nb].copy()
    if draw(st.booleans()):  # a dense layer's weights: rows of n_j + 1 (the bias last)
        di, dj = n_j + 1, 1
    else:  # transposed, or overlapping, layouts
        di, dj = draw(st.sampled_from([(1, n_i), (0, 1), (1, 1), (2, 3), (3, 0), (0, 0)]))
    col0 = draw(st.integers(0, 2))
    P = col0 + (n_i - 1) * di + (n_j - 1) * dj + 1 + draw(st.integers(0, 2))
    row0 = draw(st.integers(0, 2))
    out = fill(draw, (row0 + nb + draw(st.integers(0, 2)), P)) if draw(st.booleans()) else (
        np.zeros((row0 + nb + 1, P)))
    return out, row0, col0, di, dj, work, a_rows, b_rows, nb


# ---- exactness ----------------------------------------------------------------------------


@settings(max_examples=100)  # the pure-Python oracle is slow on big shapes
@given(forward_cases())
def test_forward_is_the_sequential_sum(case) -> None:
    work, out_rows, x_rows, W, nb = case
    expected = ref_forward(work, out_rows, x_rows, W, nb)
    dense.dense_forward(work, out_rows, x_rows, W, nb)
    assert same_bits(work, expected)  # other rows and columns >= nb untouched too


@settings(max_examples=100)  # the pure-Python oracle is slow on big shapes
@given(thin_forward_cases())
def test_thin_forward_is_the_sequential_sum(case) -> None:
    work, out_rows, x_rows, W, nb = case
    expected = ref_forward(work, out_rows, x_rows, W, nb)
    dense.dense_forward(work, out_rows, x_rows, W, nb)
    assert same_bits(work, expected)


@settings(max_examples=100)  # the pure-Python oracle is slow on big shapes
@given(st.one_of(outer_cases(), outer_cases(thin_rows, lanes)))
def test_outer_is_the_sequential_sum(case) -> None:
    G, work, a_rows, b_rows, e0, e1 = case
    expected = ref_outer(G, work, a_rows, b_rows, e0, e1)
    before = work.copy()
    dense.dense_outer(G, work, a_rows, b_rows, e0, e1)
    assert same_bits(G, expected)
    assert same_bits(work, before)


@settings(max_examples=100)  # the pure-Python oracle is slow on big shapes
@given(outer_rows_cases())
def test_outer_rows_adds_each_product(case) -> None:
    out, row0, col0, di, dj, work, a_rows, b_rows, nb = case
    expected = ref_outer_rows(out, row0, col0, di, dj, work, a_rows, b_rows, nb)
    dense.dense_outer_rows(out, row0, col0, di, dj, work, a_rows, b_rows, nb)
    assert same_bits(out, expected)


@settings(max_examples=100)  # the pure-Python oracle is slow on big shapes
@given(outer_cases())
def test_outer_with_the_lists_exchanged_gives_the_transpose(case) -> None:
    G, work, a_rows, b_rows, e0, e1 = case
    GT = np.ascontiguousarray(G.T)
    dense.dense_outer(G, work, a_rows, b_rows, e0, e1)
    dense.dense_outer(GT, work, b_rows, a_rows, e0, e1)
    assert same_bits(GT.T, G)


# the faster way round of each, as measured (on a machine with AVX-512)
@pytest.mark.parametrize(("n_a", "n_b"), [
    (64, 16), (1, 64), (16, 16), (2, 16), (5, 5), (65, 64), (17, 64), (1, 65), (3, 16),
    (17, 16), (9, 64), (6, 20), (3, 30), (7, 40)])
def test_outer_swapped_is_a_consistent_choice(n_a: int, n_b: int) -> None:
    assert not (dense.outer_swapped(n_a, n_b) and dense.outer_swapped(n_b, n_a))
    assert not dense.outer_swapped(n_a, n_b)  # these are the cheaper way round already
    if n_a != n_b:
        assert dense.outer_swapped(n_b, n_a)


def test_outer_over_blocks_is_one_sequential_sum() -> None:
    # a chunk's gradient: G from 0.0, block after block, equals one sum over all examples
    rng = np.random.default_rng(0)
    work = rng.standard_normal((9, 200)) * 10.0 ** rng.integers(-8, 8, (9, 200))
    a_rows, b_rows = np.array([0, 3, 5], np.int64), np.array([1, 2, 4, 6, 7, 8], np.int64)
    G = np.zeros((3, 6))
    for e0 in range(0, 200, 32):
        dense.dense_outer(G, work, a_rows, b_rows, e0, min(e0 + 32, 200))
    assert same_bits(G, ref_outer(np.zeros((3, 6)), work, a_rows, b_rows, 0, 200))


# ---- what a fused or reordered sum would get wrong, in every lane and tile row -------------

TINY = 2.0**-30
# fma(1 + t, 1 - t, -1) = -t*t, while the rounded product is 1.0 and 1.0 + -1 = 0.0
FMA_A, FMA_B = 1.0 + TINY, 1.0 - TINY


def _lanes_case(n_out, nb):
    """Forward sums, each [-1*1, FMA_A*FMA_B, 1*1e16, 1*1 , 1*-1e16]: exactly 0.0 in order."""
    x_rows = np.arange(5, dtype=np.int64)
    out_rows = np.arange(5, 5 + n_out, dtype=np.int64)
    work = np.empty((5 + n_out, nb))
    work[:5] = np.array([1.0, FMA_B, 1e16, 1.0, -1e16])[:, None]
    W = np.tile([-1.0, FMA_A, 1.0, 1.0, 1.0], (n_out, 1))
    return work, out_rows, x_rows, W


@pytest.mark.parametrize("n_out", [1, 2, 3, 4, 5, 6, 9])
@pytest.mark.parametrize("nb", [2 * dense.COLS + 3, dense.THIN_CHAINS * dense.WIDTH + 3])
def test_forward_rounds_each_product_and_adds_in_order(n_out: int, nb: int) -> None:
    # full tiles and masked ones: main, thin (wide and narrow) tiles
    work, out_rows, x_rows, W = _lanes_case(n_out, nb)
    dense.dense_forward(work, out_rows, x_rows, W, nb)
    # an FMA would leave -2**-60 after the second term; (1e16 + 1) rounds back to 1e16, so
    # in order the sum ends at 0.0, while 1 + (1e16 - 1e16) or any pairwise sum gives 1.0
    assert same_bits(work[out_rows], np.zeros((n_out, nb)))
    assert FMA_A * FMA_B == 1.0 and (1e16 + 1.0) - 1e16 == 0.0  # the premises, in Python


@pytest.mark.parametrize("n_out", [1, 2, 3, 5])
@pytest.mark.parametrize("K", [1, 2])
def test_forward_starts_from_the_first_product_not_zero(n_out: int, K: int) -> None:
    nb = dense.THIN_CHAINS * dense.WIDTH + dense.NARROW_COLS + 1  # wide and narrow tiles
    work = np.zeros((K + n_out, nb))
    work[:K] = 1.0
    W = np.full((n_out, K), -0.0)
    dense.dense_forward(work, np.arange(K, K + n_out), np.arange(K), W, nb)
    # -0.0 + -0.0 is -0.0, while 0.0 + -0.0 would be +0.0
    assert same_bits(work[K:], np.full((n_out, nb), -0.0))


@pytest.mark.parametrize("shape", [(1, 1), (1, 65), (2, 40), (3, 17), (5, 70), (4, 9)])
def test_outer_starts_from_g(shape) -> None:
    n_i, n_j = shape
    work = np.ones((n_i + n_j, 5))
    work[:n_i] = -0.0
    G = np.full(shape, -0.0)
    dense.dense_outer(G, work, np.arange(n_i), np.arange(n_i, n_i + n_j), 0, 5)
    assert same_bits(G, np.full(shape, -0.0))  # G + -0.0 from G = -0.0; from 0.0 it is +0.0


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (4, 17), (1, 65), (2, 33), (3, 20), (7, 70)])
def test_outer_rounds_each_product_and_adds_in_order(shape) -> None:
    n_i, n_j = shape
    a_rows = np.arange(n_i, dtype=np.int64)
    b_rows = np.arange(n_i, n_i + n_j, dtype=np.int64)
    work = np.empty((n_i + n_j, 4))
    work[:n_i] = [FMA_A, 1.0, 1.0, 1.0]
    work[n_i:] = [FMA_B, 1e16, 1.0, -1e16]
    G = np.full(shape, -1.0)
    dense.dense_outer(G, work, a_rows, b_rows, 0, 4)
    assert same_bits(G, np.zeros(shape))


def test_outer_rows_adds_to_what_is_there() -> None:
    work = np.array([[-1.0, 2.0], [0.0, 3.0]])
    out = np.zeros((2, 1))
    dense.dense_outer_rows(out, 0, 0, 1, 1, work, np.array([0]), np.array([1]), 2)
    assert same_bits(out, np.array([[0.0], [6.0]]))  # 0.0 + (-1 * 0.0) is +0.0, as grad += is


@numba.njit
def _transposed(dest, work, rows, e0):
    dense._transpose_into(dest, work, rows, e0)


@settings(max_examples=200)
@given(st.integers(0, 21), st.integers(0, 21), st.integers(0, 3), st.data())
def test_the_transposed_copy_writes_its_rows_and_nothing_else(n_t, n, e0, data) -> None:
    # every path: blocks of eight and of four slots, single slots, examples left over
    n_slots = n + data.draw(st.integers(0, 3))
    rows = np.array(data.draw(st.permutations(range(n_slots)))[:n], np.int64)
    work = np.random.default_rng(n_t * 100 + n).standard_normal((n_slots, e0 + n_t + 2))
    buf = np.full(n_t * n + 4, 7.0)  # guard values after the destination
    _transposed(buf[:n_t * n].reshape(n_t, n), work, rows, e0)
    assert same_bits(buf[:n_t * n].reshape(n_t, n), work[rows, e0:e0 + n_t].T)
    assert same_bits(buf[n_t * n:], np.full(4, 7.0))


# ---- the machine code ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 mnemonics")
@pytest.mark.parametrize("name", ["dense_forward", "dense_outer"])
def test_tiles_multiply_then_add_in_vector_registers(name: str) -> None:
    # a fresh, uncached build of the same Python function, so its assembly can be read
    fn = numba.njit(nogil=True)(getattr(dense, name).py_func)
    f64 = numba.float64[:, ::1]
    i64 = numba.int64[::1]
    sig = ((f64, i64, i64, f64, numba.int64) if name == "dense_forward"
           else (f64, f64, i64, i64, numba.int64, numba.int64))
    fn.compile(sig)
    asm = fn.inspect_asm(fn.signatures[0])
    assert "vmulpd" in asm and "vaddpd" in asm
    assert "vfmadd" not in asm and "vfmsub" not in asm and "vfnmadd" not in asm
    reg = "%zmm" if dense.WIDTH == 8 else "%ymm"
    assert any(reg in line for line in asm.splitlines() if "vaddpd" in line)


# ---- bad input, threads ----------------------------------------------------------------------


def _ok_forward():
    work = np.zeros((6, 4))
    return work, np.array([4, 5]), np.array([0, 1, 2]), np.zeros((2, 3)), 4


@pytest.mark.parametrize(("change", "match"), [
    ({"W": np.zeros((2, 2))}, "W must be"),
    ({"W": np.zeros((3, 3))}, "W must be"),
    ({"x_rows": np.zeros(0, np.int64), "W": np.zeros((2, 0))}, "K >= 1"),
    ({"nb": 5}, "nb must be"),
    ({"nb": -1}, "nb must be"),
    ({"x_rows": np.array([0, 1, 6])}, "outside the workspace"),
    ({"out_rows": np.array([-1, 5])}, "outside the workspace"),
    ({"out_rows": np.array([4, 1])}, "share a slot"),
])
def test_forward_rejects_bad_input(change, match) -> None:
    args = dict(zip(["work", "out_rows", "x_rows", "W", "nb"], _ok_forward(), strict=True))
    args.update(change)
    with pytest.raises(ValueError, match=match):
        dense.dense_forward(*args.values())


def test_outer_kernels_reject_bad_input() -> None:
    work = np.zeros((4, 8))
    a, b = np.array([0, 1]), np.array([2, 3])
    with pytest.raises(ValueError, match="G must be"):
        dense.dense_outer(np.zeros((2, 3)), work, a, b, 0, 8)
    with pytest.raises(ValueError, match="e0 <= e1"):
        dense.dense_outer(np.zeros((2, 2)), work, a, b, 3, 2)
    with pytest.raises(ValueError, match="e0 <= e1"):
        dense.dense_outer(np.zeros((2, 2)), work, a, b, 0, 9)
    with pytest.raises(ValueError, match="outside the workspace"):
        dense.dense_outer(np.zeros((2, 2)), work, a, np.array([2, 4]), 0, 8)
    with pytest.raises(ValueError, match="column is outside"):
        dense.dense_outer_rows(np.zeros((8, 4)), 0, 1, 2, 1, work, a, b, 8)
    with pytest.raises(ValueError, match="rows of out"):
        dense.dense_outer_rows(np.zeros((8, 4)), 1, 0, 2, 1, work, a, b, 8)
    with pytest.raises(ValueError, match="outside src"):
        dense.gather(np.zeros(3), np.array([[0, 3]]), np.zeros((1, 2)))


def test_gather() -> None:
    src = np.arange(10.0)[::2]  # strided, as a column of the workspace is
    out = np.empty((2, 2))
    dense.gather(src, np.array([[4, 0], [1, 1]]), out)
    assert same_bits(out, np.array([[8.0, 0.0], [2.0, 2.0]]))


def test_kernels_release_the_gil_and_agree_across_threads() -> None:
    for fn in (dense.dense_forward, dense.dense_outer, dense.dense_outer_rows, dense.gather):
        assert fn.targetoptions["nogil"] and fn.targetoptions.get("parallel") is not True
    rng = np.random.default_rng(1)
    work0 = rng.standard_normal((80, 64))
    x_rows, out_rows = np.arange(16), np.arange(16, 80)
    W = rng.standard_normal((64, 16))
    expected = ref_forward(work0, out_rows, x_rows, W, 64)
    works = [work0.copy() for _ in range(4)]
    threads = [threading.Thread(target=lambda w=w: [
        dense.dense_forward(w, out_rows, x_rows, W, 64) for _ in range(50)]) for w in works]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(same_bits(w, expected) for w in works)

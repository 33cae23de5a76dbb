"""The tape interpreter's static part: chunks, blocks, dense groups, fused sums, results.

This file is real code read as text: `interpreter.interpreter_source` appends ``run_elementwise``
(generated from the op table: one branch per op) and the whole text is compiled by Numba as one
generated module. Nothing imports this file to run it.

A plan (`tape_plan.BlockPlan`) arrives packed: its integer arrays one after the other in
``ints``, field ``F_X`` at ``ints[fields[F_X, 0]:][:fields[F_X, 1]]`` (`field`), in the order
of `tape_plan.PLAN_FIELDS`; few arguments keep Numba's compile time down. A block of up to
``block`` examples lives in ``work[row, example]`` (structure of arrays), so the innermost
loops run over examples and vectorise. Batch sums follow `symgrad.layout`: chunk ``c`` holds
rows ``chunk_start(c)`` to ``chunk_start(c + 1)``, adds them in row order into its own buffer
``chunk_acc[c]``, and the buffers are added in chunk order (`add_in_order`).
"""

import numpy as np
from numba import carray
from numba.extending import register_jitable

from symgrad.executors.dense import dense_forward, dense_outer, dense_outer_rows
from symgrad.executors.native_threads import (
    CLAIMED,
    JOB,
    PARKED,
    POSTED,
    RUNNING,
    SPINNING,
    STATE,
    TAKEN,
    atomic_load,
    atomic_store,
    compare_swap,
    float_pointer,
    int_pointer,
)
from symgrad.executors.threads import fetch_add

# the plan's integer arrays, in the order of tape_plan.PLAN_FIELDS (a test checks)
(F_STEPS, F_DOT_STEPS, F_OUT, F_A0, F_A1, F_A2, F_TA, F_TB, F_DENSE, F_DENSE_OUT, F_DENSE_X,
 F_DENSE_W, F_UNIFORM_SLOTS, F_UNIFORM_PARAM, F_ROWS_SLOTS, F_ROWS_ROWS, F_X_SLOTS,
 F_VALUE_SLOTS, F_GRIDS, F_GRID_A, F_GRID_B, F_GRID_COLS, F_GRID_STRIDES, F_REST_COLS,
 F_REST_A, F_REST_B) = range(26)
DOT_STEP = -1  # replaced by the generated module: the tape's opcode of a fused sum
DENSE_STEP = -2  # ... and of a dense group
CHUNK_ROWS = -3  # ... and the chunking of `symgrad.layout`
MAX_CHUNKS = -4
ALIGN = -5


def run_elementwise(op, lo, hi, out, a0, a1, a2, p, work, nb, exact):
    """Placeholder: the generated module defines the real one after this file's text."""
    raise NotImplementedError


@register_jitable(inline="always")
def field(ints, fields, f):
    """Plan field `f`, a view of ``ints`` (inlined where it is used: one compile)."""
    return ints[fields[f, 0]:fields[f, 0] + fields[f, 1]]


def run_dot(k, out, a0, a1, ta, tb, work, acc, nb):
    """Fused sum of products `k`, its terms in the original order: bit for bit the unfused."""
    for t in range(a0[k], a1[k]):
        a = ta[t]
        b = tb[t]
        if t == a0[k]:
            for e in range(nb):
                acc[e] = work[a, e] * work[b, e]
        else:
            for e in range(nb):
                acc[e] = acc[e] + work[a, e] * work[b, e]
    o = out[k]
    for e in range(nb):
        work[o, e] = acc[e]


def sum_results(ints, fields, work, G, sums, nb):
    """Add a block's accumulated results, example by example, to the chunk's sums ``sums``:
    a grid's products into its consecutive columns of `sums` or, when they are not, into
    ``G``; the other results one by one."""
    grids = field(ints, fields, F_GRIDS).reshape((-1, 6))
    grid_a, grid_b = field(ints, fields, F_GRID_A), field(ints, fields, F_GRID_B)
    for g in range(grids.shape[0]):
        a0_, n_a, b0, n_b, g0, direct = grids[g, 0], grids[g, 1], grids[g, 2], grids[g, 3], \
            grids[g, 4], grids[g, 5]
        if direct >= 0:
            block = sums[direct:direct + n_a * n_b].reshape((n_a, n_b))
        else:
            block = G[g0:g0 + n_a * n_b].reshape((n_a, n_b))
        dense_outer(block, work, grid_a[a0_:a0_ + n_a], grid_b[b0:b0 + n_b], 0, nb)
    cols, ra = field(ints, fields, F_REST_COLS), field(ints, fields, F_REST_A)
    rb = field(ints, fields, F_REST_B)
    for e in range(nb):
        for q in range(cols.shape[0]):
            sums[cols[q]] += work[ra[q], e] * work[rb[q], e]


def scatter_grids(ints, fields, G, sums):
    """The sums of the grids not summed in place into their columns (each started at 0.0, as
    the column did)."""
    grids = field(ints, fields, F_GRIDS).reshape((-1, 6))
    grid_cols = field(ints, fields, F_GRID_COLS)
    for g in range(grids.shape[0]):
        if grids[g, 5] < 0:
            for i in range(grids[g, 4], grids[g, 4] + grids[g, 1] * grids[g, 3]):
                if grid_cols[i] >= 0:
                    sums[grid_cols[i]] = G[i]


def row_results(ints, fields, work, acc, start, nb):
    """A block's accumulated results per row: ``acc[row, col] += product``."""
    grids = field(ints, fields, F_GRIDS).reshape((-1, 6))
    strides = field(ints, fields, F_GRID_STRIDES).reshape((-1, 3))
    grid_a, grid_b = field(ints, fields, F_GRID_A), field(ints, fields, F_GRID_B)
    grid_cols = field(ints, fields, F_GRID_COLS)
    for g in range(grids.shape[0]):
        a0_, n_a, b0, n_b, g0 = grids[g, 0], grids[g, 1], grids[g, 2], grids[g, 3], grids[g, 4]
        if strides[g, 0] >= 0:
            dense_outer_rows(acc, start, strides[g, 0], strides[g, 1], strides[g, 2], work,
                             grid_a[a0_:a0_ + n_a], grid_b[b0:b0 + n_b], nb)
            continue
        for e in range(nb):
            for i in range(n_a):
                for j in range(n_b):
                    col = grid_cols[g0 + i * n_b + j]
                    if col >= 0:
                        acc[start + e, col] += work[grid_a[a0_ + i], e] * work[grid_b[b0 + j], e]
    cols, ra = field(ints, fields, F_REST_COLS), field(ints, fields, F_REST_A)
    rb = field(ints, fields, F_REST_B)
    for e in range(nb):
        for q in range(cols.shape[0]):
            acc[start + e, cols[q]] += work[ra[q], e] * work[rb[q], e]


def run_block(ints, fields, p, W, X, values, work, dot_acc, start, nb, exact):
    """One block of examples: arguments in, every step of the plan, values out."""
    x_slots, value_slots = field(ints, fields, F_X_SLOTS), field(ints, fields, F_VALUE_SLOTS)
    for j in range(x_slots.shape[0]):
        for e in range(nb):
            work[x_slots[j], e] = X[start + e, j]
    steps = field(ints, fields, F_STEPS).reshape((-1, 3))
    out, a0, a1 = field(ints, fields, F_OUT), field(ints, fields, F_A0), field(ints, fields, F_A1)
    a2 = field(ints, fields, F_A2)
    dense = field(ints, fields, F_DENSE).reshape((-1, 5))
    dense_out, dense_x = field(ints, fields, F_DENSE_OUT), field(ints, fields, F_DENSE_X)
    dot_steps, ta, tb = field(ints, fields, F_DOT_STEPS), field(ints, fields, F_TA), \
        field(ints, fields, F_TB)
    for i in range(steps.shape[0]):
        op, lo, hi = steps[i, 0], steps[i, 1], steps[i, 2]
        if op == DENSE_STEP:
            o0, n_out, x0, K, w0 = dense[lo, 0], dense[lo, 1], dense[lo, 2], dense[lo, 3], \
                dense[lo, 4]
            dense_forward(work, dense_out[o0:o0 + n_out], dense_x[x0:x0 + K],
                          W[w0:w0 + n_out * K].reshape((n_out, K)), nb)
        elif op == DOT_STEP:
            for q in range(lo, hi):
                run_dot(dot_steps[q], out, a0, a1, ta, tb, work, dot_acc, nb)
        else:
            run_elementwise(op, lo, hi, out, a0, a1, a2, p, work, nb, exact)
    for k in range(value_slots.shape[0]):
        for e in range(nb):
            values[start + e, k] = work[value_slots[k], e]


def setup(ints, fields, uniform_value, n_slots, params, n_rows, block):
    """A thread's start: the dense groups' factors ``W`` (group g's matrix at its ``w_off``,
    row-major) and its workspace with the uniform rows filled, from this call's uniform values
    (by slot: parameters and literals)."""
    slots, param = field(ints, fields, F_UNIFORM_SLOTS), field(ints, fields, F_UNIFORM_PARAM)
    u = np.zeros(n_slots)
    for i in range(slots.shape[0]):
        u[slots[i]] = params[param[i]] if param[i] >= 0 else uniform_value[i]
    dense_w = field(ints, fields, F_DENSE_W)
    W = np.empty(dense_w.shape[0])
    for i in range(dense_w.shape[0]):
        W[i] = u[dense_w[i]]
    work = np.empty((n_rows, block))
    rows_slots, rows_rows = field(ints, fields, F_ROWS_SLOTS), field(ints, fields, F_ROWS_ROWS)
    for i in range(rows_slots.shape[0]):
        work[rows_rows[i], :] = u[rows_slots[i]]
    return W, work


def add_in_order(chunk_acc, acc):
    """The chunks' sums added, in chunk order, to the result: ``acc += chunk_acc[c]``."""
    for c in range(chunk_acc.shape[0]):
        for k in range(chunk_acc.shape[1]):
            acc[0, k] += chunk_acc[c, k]


def run_sums(counter, ints, fields, p, uniform_value, n_slots, n_rows, block, n_grid, params,
             X, values, acc, chunk_acc, exact):
    """A batch, accumulated results summed in ``chunk_acc.shape[0]`` chunks: the chunks claimed
    from `counter` (several threads share a batch so; the caller then adds the chunks' sums),
    or every chunk in order and their sums into ``acc`` when `counter` is empty."""
    n = X.shape[0]
    n_chunks = chunk_acc.shape[0]  # symgrad.layout.n_chunks, unless the caller asks otherwise
    W, work = setup(ints, fields, uniform_value, n_slots, params, n_rows, block)
    dot_acc, G = np.empty(block), np.zeros(n_grid)
    c = fetch_add(counter) if counter.shape[0] > 0 else 0
    while c < n_chunks:
        # symgrad.layout.chunk_rows
        first = (c * n // n_chunks) // ALIGN * ALIGN
        last = n if c + 1 == n_chunks else ((c + 1) * n // n_chunks) // ALIGN * ALIGN
        G[:] = 0.0
        chunk_acc[c, :] = 0.0  # here, not by the caller: each thread zeroes its own chunks
        for start in range(first, last, block):
            nb = min(block, last - start)
            run_block(ints, fields, p, W, X, values, work, dot_acc, start, nb, exact)
            sum_results(ints, fields, work, G, chunk_acc[c], nb)
        scatter_grids(ints, fields, G, chunk_acc[c])
        c = fetch_add(counter) if counter.shape[0] > 0 else c + 1
    if counter.shape[0] == 0:
        add_in_order(chunk_acc, acc)


def run_rows(counter, ints, fields, p, uniform_value, n_slots, n_rows, block, params, X,
             values, acc, exact):
    """A batch, accumulated results per row (``acc`` has a row per example), chunk by chunk
    as `run_sums` takes them."""
    n = X.shape[0]
    n_chunks = max(1, min(MAX_CHUNKS, n // CHUNK_ROWS))
    W, work = setup(ints, fields, uniform_value, n_slots, params, n_rows, block)
    dot_acc = np.empty(block)
    c = fetch_add(counter) if counter.shape[0] > 0 else 0
    while c < n_chunks:
        first = (c * n // n_chunks) // ALIGN * ALIGN
        last = n if c + 1 == n_chunks else ((c + 1) * n // n_chunks) // ALIGN * ALIGN
        for start in range(first, last, block):
            nb = min(block, last - start)
            run_block(ints, fields, p, W, X, values, work, dot_acc, start, nb, exact)
            row_results(ints, fields, work, acc, start, nb)
        c = fetch_add(counter) if counter.shape[0] > 0 else c + 1


# ---- jobs for helper threads that wait in compiled code (`native_threads`) -----------------------
# A posted job: its kind, four sizes, then each array as (address, rows, columns) from J_ARRAYS
# on, in the order of `run_sums`'s arguments (run_rows has the same ones, less chunk_acc).
J_KIND, J_SIZES, J_ARRAYS = JOB, JOB + 1, JOB + 5
(A_COUNTER, A_INTS, A_FIELDS, A_P, A_UNIFORM, A_PARAMS, A_X, A_VALUES, A_ACC, A_CHUNK_ACC,
 A_EXACT) = range(11)


@register_jitable
def put_array(box, k, a):
    """Array `k` of a job: its address and shape (a 1-D array as one column)."""
    box[J_ARRAYS + 3 * k] = a.ctypes.data
    box[J_ARRAYS + 3 * k + 1] = a.shape[0]
    box[J_ARRAYS + 3 * k + 2] = a.size // max(a.shape[0], 1)


@register_jitable
def floats(box, k):
    """Array `k` of a posted job as 2-D float64."""
    at = J_ARRAYS + 3 * k
    return carray(float_pointer(box[at]), (box[at + 1], box[at + 2]))


@register_jitable
def float_vector(box, k):
    """Array `k` of a posted job as 1-D float64."""
    at = J_ARRAYS + 3 * k
    return carray(float_pointer(box[at]), (box[at + 1] * box[at + 2],))


@register_jitable
def int_vector(box, k):
    """Array `k` of a posted job as 1-D int64."""
    at = J_ARRAYS + 3 * k
    return carray(int_pointer(box[at]), (box[at + 1] * box[at + 2],))


def post(boxes, job, kind, counter, ints, fields, p, uniform_value, n_slots, n_rows, block,
         n_grid, params, X, values, acc, chunk_acc, exact):
    """Post a job to every helper spinning now (claim its box, write the job, publish it)."""
    for h in range(boxes.shape[0]):
        box = boxes[h]
        w = atomic_load(box, STATE)
        if w % 8 != SPINNING or not compare_swap(box, STATE, w, job * 8 + CLAIMED):
            continue
        box[J_KIND] = kind
        box[J_SIZES], box[J_SIZES + 1], box[J_SIZES + 2], box[J_SIZES + 3] = \
            n_slots, n_rows, block, n_grid
        put_array(box, A_COUNTER, counter)
        put_array(box, A_INTS, ints)
        put_array(box, A_FIELDS, fields)
        put_array(box, A_P, p)
        put_array(box, A_UNIFORM, uniform_value)
        put_array(box, A_PARAMS, params)
        put_array(box, A_X, X)
        put_array(box, A_VALUES, values)
        put_array(box, A_ACC, acc)
        put_array(box, A_CHUNK_ACC, chunk_acc)
        put_array(box, A_EXACT, exact)
        atomic_store(box, STATE, job * 8 + POSTED)


def finish(boxes, job, polls):
    """After the caller's own share: withdraw the job from helpers that did not take it, and
    wait up to `polls` polls for those running it; how many still are (a helper can be
    descheduled mid-chunk on a busy machine: the caller then waits without holding the CPU)."""
    running = 0
    for h in range(boxes.shape[0]):
        box = boxes[h]
        compare_swap(box, STATE, job * 8 + POSTED, job * 8 + SPINNING)
        for _ in range(polls):
            if atomic_load(box, STATE) != job * 8 + RUNNING:
                break
        running += atomic_load(box, STATE) == job * 8 + RUNNING
    return running


def run_posted(box):
    """A helper's share of the job posted in `box`."""
    counter, ints, exact = int_vector(box, A_COUNTER), int_vector(box, A_INTS), \
        int_vector(box, A_EXACT)
    fields = int_vector(box, A_FIELDS).reshape((box[J_ARRAYS + 3 * A_FIELDS + 1], 2))
    p, uniform_value = float_vector(box, A_P), float_vector(box, A_UNIFORM)
    params, X = float_vector(box, A_PARAMS), floats(box, A_X)
    values, acc = floats(box, A_VALUES), floats(box, A_ACC)
    n_slots, n_rows, block, n_grid = box[J_SIZES], box[J_SIZES + 1], box[J_SIZES + 2], \
        box[J_SIZES + 3]
    if box[J_KIND] == 0:
        run_sums(counter, ints, fields, p, uniform_value, n_slots, n_rows, block, n_grid,
                 params, X, values, acc, floats(box, A_CHUNK_ACC), exact)
    else:
        run_rows(counter, ints, fields, p, uniform_value, n_slots, n_rows, block, params, X,
                 values, acc, exact)


def serve(box, spin):
    """A helper thread's wait in compiled code: run the jobs posted to `box` as they come;
    return once `spin` polls pass without one (the box then PARKED)."""
    idle = 0
    while True:
        w = atomic_load(box, STATE)
        state = w % 8
        if state == POSTED:
            if compare_swap(box, STATE, w, w - POSTED + RUNNING):
                box[TAKEN] += 1
                run_posted(box)
                atomic_store(box, STATE, w - POSTED + SPINNING)
            idle = 0
        elif state == SPINNING:
            idle += 1
            if idle >= spin and compare_swap(box, STATE, w, w - SPINNING + PARKED):
                return
        elif state == PARKED:
            return

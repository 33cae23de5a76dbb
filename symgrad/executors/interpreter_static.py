"""The tape interpreter's static part: chunks of rows, blocks of examples, fused sums, results.

This file is real code read as text: `interpreter.interpreter_source` appends ``run_block``,
generated from the op table (one branch per op), and the whole module is compiled by Numba (or
run by Python) as one generated module. Nothing imports this file to run it.

Layout: a block of up to ``block`` examples lives in ``work[slot, example]`` (structure of
arrays), so the innermost loops run over examples and vectorise. Arguments: the tape's arrays
(see `symgrad.tape.Tape`), ``params`` (the uniform arguments), ``X`` (one example a row),
``values (N, n_out)`` and ``acc`` (``(1, n_acc)`` summed over the rows, or ``(N, n_acc)`` per
row).
"""

import numpy as np
from numba import prange


def run_block(runs, out, a0, a1, a2, p, ta, tb, tu, work, acc, nb):
    """Placeholder: the generated module defines the real one after this file's text."""
    raise NotImplementedError


def run_dot(k, out, a0, a1, ta, tb, tu, work, acc, nb):
    """Fused sum of products `k`, its terms in the original order: bit for bit the unfused."""
    for t in range(a0[k], a1[k]):
        a = ta[t]
        b = tb[t]
        if tu[t]:  # the same for every example: read it once
            s = work[b, 0]
            if t == a0[k]:
                for e in range(nb):
                    acc[e] = work[a, e] * s
            else:
                for e in range(nb):
                    acc[e] = acc[e] + work[a, e] * s
        elif t == a0[k]:
            for e in range(nb):
                acc[e] = work[a, e] * work[b, e]
        else:
            for e in range(nb):
                acc[e] = acc[e] + work[a, e] * work[b, e]
    o = out[k]
    for e in range(nb):
        work[o, e] = acc[e]


def add_results(start, nb, n_out, result_slots, result_b, work, acc, lanes, per_row):
    """Add a block's accumulated results: per row into ``acc``, else into per-lane sums.

    One partial sum per lane (example slot of a block), summed once per chunk: the lanes are
    independent, so the loop vectorises (a running scalar sum cannot).
    """
    for k in range(result_slots.shape[0] - n_out):
        s = result_slots[n_out + k]
        s2 = result_b[n_out + k]  # >= 0: the result is work[s] * work[s2]
        if per_row:
            if s2 < 0:
                for e in range(nb):
                    acc[start + e, k] += work[s, e]
            else:
                for e in range(nb):
                    acc[start + e, k] += work[s, e] * work[s2, e]
        elif s2 < 0:
            for e in range(nb):
                lanes[k, e] += work[s, e]
        else:
            for e in range(nb):
                lanes[k, e] += work[s, e] * work[s2, e]


def run_chunk(c, chunk_acc, tape_runs, out, a0, a1, a2, p, ta, tb, tu,
              arg_slots, const_slots, const_values, result_slots, result_b,
              n_slots, block, n_chunks, params, X, n_out, values, acc, per_row):
    """Chunk `c` of the rows' blocks; its summed results go to ``chunk_acc[c]``."""
    n = X.shape[0]
    n_blocks = (n + block - 1) // block
    work = np.empty((n_slots, block))
    dot_acc = np.empty(block)
    n_acc = result_slots.shape[0] - n_out
    lanes = np.zeros((0 if per_row else n_acc, block))
    for s in range(const_slots.shape[0]):
        work[const_slots[s], :] = const_values[s]
    for j in range(params.shape[0]):
        work[arg_slots[j], :] = params[j]
    for bi in range(c * n_blocks // n_chunks, (c + 1) * n_blocks // n_chunks):
        start = bi * block
        nb = min(block, n - start)
        for j in range(X.shape[1]):
            s = arg_slots[params.shape[0] + j]
            for e in range(nb):
                work[s, e] = X[start + e, j]
        run_block(tape_runs, out, a0, a1, a2, p, ta, tb, tu, work, dot_acc, nb)
        for k in range(n_out):
            s = result_slots[k]
            for e in range(nb):
                values[start + e, k] = work[s, e]
        add_results(start, nb, n_out, result_slots, result_b, work, acc, lanes, per_row)
    if not per_row:
        for k in range(n_acc):
            t = 0.0
            for e in range(block):
                t += lanes[k, e]
            chunk_acc[c, k] = t


def add_chunks(chunk_acc, acc, per_row):
    """The chunks' sums added in chunk order: the result does not depend on the threads."""
    if not per_row:
        for c in range(chunk_acc.shape[0]):
            for k in range(chunk_acc.shape[1]):
                acc[0, k] += chunk_acc[c, k]


def run_batch(tape_runs, out, a0, a1, a2, p, ta, tb, tu,
              arg_slots, const_slots, const_values, result_slots, result_b,
              n_slots, block, n_chunks, params, X, n_out, values, acc, per_row):
    """Every chunk, one after the other."""
    chunk_acc = np.zeros((n_chunks, result_slots.shape[0] - n_out))
    for c in range(n_chunks):
        run_chunk(c, chunk_acc, tape_runs, out, a0, a1, a2, p, ta, tb, tu,
                  arg_slots, const_slots, const_values, result_slots, result_b,
                  n_slots, block, n_chunks, params, X, n_out, values, acc, per_row)
    add_chunks(chunk_acc, acc, per_row)


def run_batch_parallel(tape_runs, out, a0, a1, a2, p, ta, tb, tu,
                       arg_slots, const_slots, const_values, result_slots, result_b,
                       n_slots, block, n_chunks, params, X, n_out, values, acc, per_row):
    """The chunks on all cores (a function of its own: Numba's disk cache does not tell a
    parallel build of `run_batch` from the serial one)."""
    chunk_acc = np.zeros((n_chunks, result_slots.shape[0] - n_out))
    for c in prange(n_chunks):
        run_chunk(c, chunk_acc, tape_runs, out, a0, a1, a2, p, ta, tb, tu,
                  arg_slots, const_slots, const_values, result_slots, result_b,
                  n_slots, block, n_chunks, params, X, n_out, values, acc, per_row)
    add_chunks(chunk_acc, acc, per_row)

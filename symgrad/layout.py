"""What an executor runs: kernels (an IR function and where its arrays go) and their layouts.

Imports only `ir`. Every compiled object describes its functions as `Kernel`s; every executor
runs them with the same calling convention, ``kernel(*argument arrays, *result arrays)``, single
(one row) or batched over the rows of the per-row arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .ir import Func

__all__ = [
    "ALIGN", "CHUNK_ROWS", "MAX_CHUNKS", "Kernel", "Layout", "chunk_rows", "chunk_sizes",
    "chunk_start", "n_chunks",
]

# The order every exact executor sums a batch in (the exactness contract): the N rows are split
# into n_chunks(N) chunks of consecutive rows (`chunk_rows`: boundaries at multiples of ALIGN);
# each chunk adds its rows' results
# in row order, starting from 0.0, into a buffer of its own; the buffers are then added, in chunk
# order, to the result array. It depends on N only: not on the executor, the lowering or the
# number of threads (chunks are the unit of work a thread takes).
CHUNK_ROWS = 32
MAX_CHUNKS = 16
ALIGN = 16  # chunks start at multiples of this row (whole tiles for blocked kernels)


def n_chunks(n_rows: int) -> int:
    """How many chunks a batch of `n_rows` rows is summed in: one per `CHUNK_ROWS` rows, at most
    `MAX_CHUNKS`, at least one."""
    return max(1, min(MAX_CHUNKS, n_rows // CHUNK_ROWS))


def chunk_start(c: int, n_rows: int, chunks: int) -> int:
    """The first row of chunk `c` of `chunks`: ``c * n_rows // chunks`` rounded down to a
    multiple of `ALIGN` (`n_rows` for ``c == chunks``)."""
    return n_rows if c >= chunks else (c * n_rows // chunks) // ALIGN * ALIGN


def chunk_rows(c: int, n_rows: int, chunks: int) -> range:
    """The rows of chunk `c` of `chunks`."""
    return range(chunk_start(c, n_rows, chunks), chunk_start(c + 1, n_rows, chunks))


def chunk_sizes(n_rows: int) -> tuple[int, ...]:
    """The sizes of the chunks a batch of `n_rows` rows is summed in, in order."""
    k = n_chunks(n_rows)
    return tuple(len(chunk_rows(c, n_rows, k)) for c in range(k))


@dataclass(frozen=True)
class Layout:
    """Where a kernel reads its arguments and writes its results.

    Attributes:
        args: ``(array name, length)`` pairs; the function's arguments are read in this order.
        results: ``(array name, shape)`` pairs; the function's results fill them row-major.
        accumulate: result arrays that are added into instead of assigned.
        per_row: argument arrays that hold one row per example in batches (e.g. "inputs").
    """

    args: tuple[tuple[str, int], ...]
    results: tuple[tuple[str, tuple[int, ...]], ...]
    accumulate: frozenset[str] = field(default_factory=frozenset)
    per_row: frozenset[str] = field(default_factory=frozenset)

    def arrays(self) -> list[str]:
        """The kernel's parameter names, in order."""
        return [a for a, _ in self.args] + [r for r, _ in self.results]

    def n_assigned(self) -> int:
        """How many results are assigned per row (they come before accumulated ones)."""
        cached = self.__dict__.get("_n_assigned")  # asked at every batch: counted once
        if cached is None:
            cached = sum(int(np.prod(s)) for nm, s in self.results if nm not in self.accumulate)
            object.__setattr__(self, "_n_assigned", cached)
        return cached

    def n_uniform(self) -> int:
        """How many leading arguments are the same for every row of a batch."""
        n = 0
        for name, length in self.args:
            if name in self.per_row:
                break
            n += length
        return n

    def first_per_row(self) -> int:
        """The position of the first per-row argument array (batches count rows on it)."""
        cached = self.__dict__.get("_first_per_row")
        if cached is None:
            cached = next(i for i, (nm, _) in enumerate(self.args) if nm in self.per_row)
            object.__setattr__(self, "_first_per_row", cached)
        return cached


@dataclass(frozen=True)
class Kernel:
    """One function of a compiled object: its IR, its name in generated code, its layout."""

    func: Func
    name: str
    layout: Layout

"""The executor interface: how every way of running a lowered program is driven.

Imports `layout` and `tape`. An executor is built from a compiled object's `Kernel`s (optimised
IR plus layout) and runs them with one calling convention, ``kernel(*argument arrays, *result
arrays)``: `call` for one row, `batch` over the rows of the per-row arguments, either summing
accumulated results over the rows ("sum") or keeping them per row ("rows"). Forward-only
variants are kernels of their own. `TapeExecutor` is the common base of executors that run the
levelled tape (`symgrad.tape`) instead of line-by-line code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import numpy as np

from .. import tape
from ..layout import Kernel, Layout

__all__ = ["BatchMode", "Executor", "TapeExecutor"]

BatchMode = Literal["rows", "sum"]


class Executor(ABC):
    """Runs the kernels of one compiled object.

    Class attributes:
        name: the key in the registry (``backend=`` names it, or the automatic choice).
        lowering: how the IR is lowered for it: "lines" (one statement per instruction) or
            "tape" (levelled runs of one op).
        preparing: what `prepare` is doing, for the progress line of a slow compile.

    Attributes:
        kernels: the kernels by name.
        source: what the executor runs, for people (generated source, or a tape listing).
        stats: executor-specific facts for ``f.stats`` (merged in by the compiled object).
    """

    name: ClassVar[str]
    lowering: ClassVar[str]
    preparing: ClassVar[str] = "preparing the executor"  # what a slow `prepare` is doing

    def __init__(self, kernels: Sequence[Kernel], title: str, header: str) -> None:
        self.kernels = {k.name: k for k in kernels}
        self.title = title
        self.header = header
        self.source = ""
        self.stats: dict[str, Any] = {}

    def prepare(self) -> None:  # noqa: B027 (an optional hook: most executors need nothing)
        """Do now what the first call would (e.g. JIT-compile), so compile time is paid here."""

    @property
    def ready(self) -> bool:
        """Whether the compiled code is built (an executor may build it in the background)."""
        return True

    def wait(self) -> None:  # noqa: B027 (an optional hook: most executors build at once)
        """Block until the compiled code is built."""

    @abstractmethod
    def call(self, kernel: str, arrays: Sequence[np.ndarray]) -> None:
        """Run `kernel` once: `arrays` are its argument arrays then its result arrays."""

    def caller(self, kernel: str) -> Callable[..., None]:
        """A function running `kernel` once on its arrays (positional): the hot path of calls."""
        return lambda *arrays: self.call(kernel, arrays)

    @abstractmethod
    def batch(self, kernel: str, arrays: Sequence[np.ndarray], mode: BatchMode,
              n_chunks: int | None = None) -> None:
        """Run `kernel` over the rows of its per-row arguments (2-D in `arrays`).

        Assigned results have a leading row axis. Accumulated results are summed over the rows
        (``mode="sum"``, their arrays without a row axis) or kept per row (``"rows"``). Sums
        are taken in `symgrad.layout`'s chunks: `n_chunks` of them if given (then on one
        thread: a caller splitting a batch itself sums each part as one chunk this way), else
        ``layout.n_chunks(N)``.
        """


class TapeExecutor(Executor):
    """An executor of levelled tapes: each kernel is lowered with `tape.lower` when built.

    Subclasses implement `run_tape`; this class adapts the kernels' calling convention to it:
    uniform arguments (the same for every row) become one vector ``params``, per-row ones the
    columns of ``X``, assigned results ``values (N, n_out)`` and accumulated ones ``acc``.
    """

    lowering = "tape"

    def __init__(self, kernels: Sequence[Kernel], title: str, header: str) -> None:
        super().__init__(kernels, title, header)
        self.tapes = {
            k.name: tape.lower(k.func, k.layout.n_uniform(), k.layout.n_assigned())
            for k in kernels
        }
        self.source = "\n\n".join(f"# {n}\n{tp.describe()}" for n, tp in self.tapes.items())
        self._simple = {k.name: _simple(k.layout) for k in kernels}

    @abstractmethod
    def run_tape(self, kernel: str, params: np.ndarray, X: np.ndarray, n_out: int,
                 values: np.ndarray, acc: np.ndarray, per_row: bool,
                 n_chunks: int | None = None) -> None:
        """Run `kernel`'s tape over the rows of `X`: values ``(N, n_out)`` assigned; acc
        ``(1 or N, n_acc)`` added into (summed over the rows in `n_chunks` chunks, see
        `Executor.batch`, or per row when `per_row`)."""

    def call(self, kernel: str, arrays: Sequence[np.ndarray]) -> None:
        """One row: the kernel's arrays, per-row arguments 1-D."""
        self._with_layout(kernel, None, arrays)

    def batch(self, kernel: str, arrays: Sequence[np.ndarray], mode: BatchMode,
              n_chunks: int | None = None) -> None:
        """Rows of the per-row arguments; see `Executor.batch`."""
        self._with_layout(kernel, mode, arrays, n_chunks)

    def _with_layout(self, kernel: str, mode: BatchMode | None,
                     arrays: Sequence[np.ndarray], n_chunks: int | None = None) -> None:
        tp, layout = self.tapes[kernel], self.kernels[kernel].layout
        if mode is not None and self._simple[kernel]:
            # parameters, one per-row matrix, values, accumulated results: passed as they are
            params, X, values = _plain(arrays[0]), _plain(arrays[1]), arrays[2]
            n, n_out = X.shape[0], layout.n_assigned()
            lead = n if mode == "rows" else 1
            acc = arrays[3].reshape(lead, -1) if len(arrays) > 3 else np.zeros((lead, 0))
            self.run_tape(kernel, params, X, n_out, values.reshape(n, n_out), acc,
                          mode == "rows", n_chunks)
            return
        params, X = _gather_arguments(layout, mode, arrays)
        n = X.shape[0]
        res_arrays = arrays[len(layout.args):]
        pairs = list(zip(layout.results, res_arrays, strict=True))
        assigned = [a for (nm, _), a in pairs if nm not in layout.accumulate]
        accumulated = [a for (nm, _), a in pairs if nm in layout.accumulate]
        n_out = layout.n_assigned()
        per_row = mode == "rows"
        lead = n if per_row else 1
        # with one result array of each kind (as `Compiled` has) the executor writes into it
        values = _direct(assigned, (n, n_out))
        values = np.zeros((n, n_out)) if values is None else values
        acc = _direct(accumulated, (lead, len(tp.result_slots) - n_out))
        acc = np.zeros((lead, len(tp.result_slots) - n_out)) if acc is None else acc
        self.run_tape(kernel, params, X, n_out, values, acc, per_row, n_chunks)
        _scatter(assigned, values, n, mode is not None)
        _scatter(accumulated, acc, lead, True, add=True)


def _plain(a: np.ndarray) -> np.ndarray:
    """`a` as C-contiguous, writeable float64 (copied if need be): compiled code is typed by an
    array's layout and flags, and another layout would mean another compile."""
    if a.flags.c_contiguous and a.flags.writeable:
        return a
    return np.require(a, np.float64, ["C_CONTIGUOUS", "ALIGNED", "WRITEABLE"])


def _simple(layout: Layout) -> bool:
    """Whether a kernel's arrays are exactly what a tape executor runs on: one uniform argument
    array, then one per-row array, then one assigned result array and at most one accumulated
    one (as `Compiled`'s kernels have), so that batches pass them without copies."""
    args, res = layout.args, layout.results
    return (
        len(args) == 2 and args[0][0] not in layout.per_row and args[1][0] in layout.per_row
        and 1 <= len(res) <= 2 and res[0][0] not in layout.accumulate
        and all(r[0] in layout.accumulate for r in res[1:])
    )


def _gather_arguments(layout: Layout, mode: BatchMode | None,
                      arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The uniform arguments as one vector, the per-row ones as the columns of one matrix."""
    names = [nm for nm, _ in layout.args]
    if any(nm in layout.per_row for nm in names[: len(names) - len(layout.per_row)]):
        raise ValueError(f"per-row arguments must come last in a tape layout, got {names}")
    named = list(zip(names, arrays[: len(names)], strict=True))
    fixed = [a.reshape(-1) for nm, a in named if nm not in layout.per_row]
    rows = [a for nm, a in named if nm in layout.per_row]
    if mode is None:
        rows = [r.reshape(1, -1) for r in rows]
    n = rows[0].shape[0] if rows else 1
    params = _plain(np.concatenate(fixed)) if fixed else np.zeros(0)
    X = _plain(np.hstack(rows)) if rows else np.zeros((n, 0))
    return params, X


def _scatter(arrays: list[np.ndarray], block: np.ndarray, lead: int, batched: bool,
             add: bool = False) -> None:
    """Copy (or add) the columns of `block` into the result arrays it was not written into."""
    col = 0
    for a in arrays:
        width = a.size // lead if batched else a.size
        if not np.shares_memory(a, block):
            target = a.reshape(lead, width)
            if add:
                target += block[:, col: col + width]
            else:
                target[:] = block[:, col: col + width]
        col += width


def _direct(arrays: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray | None:
    """The only array of `arrays` viewed as `shape`, when that is a view of float64 memory."""
    if len(arrays) != 1:
        return None
    a = arrays[0]
    if a.dtype != np.float64 or not a.flags.c_contiguous or a.size != shape[0] * shape[1]:
        return None
    return a.reshape(shape)

"""Batches and training over dask arrays: `Compiled.batch` and `fit` beyond one machine.

Imports dask (this module is imported only when a dask object reaches `Compiled.batch`,
`Compiled.batch_forward` or `fit`, so ``import symgrad`` never imports dask), and `compiled`
for `check_columns` (and its types). Every block of rows runs the compiled batch kernel
(``f.batch`` on the block, on whatever scheduler is active: threads, processes or a
``dask.distributed`` cluster). The
compiled function reaches other processes by pickling (its IR; the executor is rebuilt there
through that machine's persistent cache): it is pickled once in this process, travels as one
piece of data a worker fetches once, and is loaded once per process.

The order of a distributed sum: an `X` of one block is summed as ``f.batch`` sums any batch;
otherwise each block of rows is summed as one chunk of `symgrad.layout` (its rows in order,
starting from 0.0, `Compiled.sum_in_chunks`), and the block sums are added by a fixed tree: the
blocks, in block order, are cut into groups of `FAN_IN` consecutive ones, each group added left
to right starting from 0.0, and the same again on the group sums until one is left. The tree
depends only on the number of blocks, never on the workers, so a result is the same bits
wherever its blocks ran. It is the single-machine ``f.batch`` on the same rows bit for bit
when `X` is one block, or when its blocks are the chunks ``f.batch`` sums a batch in:
``X.rechunk({0: symgrad.layout.chunk_sizes(N)})`` (at most 16 chunks, one group of the tree).
Otherwise the same row gradients are added in other groups, and the results agree to rounding.
"""

from __future__ import annotations

import concurrent.futures
import math
import operator
import pickle
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np
from dask.base import is_dask_collection, tokenize
from dask.highlevelgraph import HighLevelGraph

from .compiled import check_columns

if TYPE_CHECKING:
    from .compiled import Compiled

__all__ = ["FAN_IN", "DaskRows", "batch", "batch_forward", "check_array"]

FAN_IN = 16  # block sums added per node of the combining tree (at least MAX_CHUNKS: see above)
_LOADED_MAX = 8  # compiled functions a process keeps loaded (see `_Shipped`)


def batch(f: Compiled, params: Any, X: Any, reduce: str) -> tuple[da.Array, da.Array]:
    """``f.batch(params, X, reduce)`` for a dask array `X`: lazy values and gradient.

    Returns ``(values, grad)`` as dask arrays: values ``(N,)`` (``(N, n_out)``) chunked like the
    rows of `X`; grad ``(len(wrt),)`` (``(n_out, len(wrt))``) in one chunk for "sum" and
    "mean", and ``(N, len(wrt))`` chunked like `X` for "none".
    """
    f._check_reduce(reduce)
    p = _snapshot(f, params)
    check_array(f, X)
    # one block is summed as f.batch sums a batch; several, each as one chunk (see the module)
    mode = "rows" if reduce == "none" else "sum" if X.numblocks[0] > 1 else "whole"
    tok = _token(f, p, X, reduce)
    blocks = f"symgrad-batch-{tok}"
    tasks = _block_tasks(f, p, X, mode, lambda i: (blocks, i))
    values = _per_row(X, tasks, f"symgrad-values-{tok}", blocks, 0, (f.n_out,))
    if reduce == "none":
        grad = _per_row(X, tasks, f"symgrad-grad-{tok}", blocks, 1, f._gshape)
    else:
        grad = _tree_sum(X, tasks, f"symgrad-grad-{tok}", blocks, f, reduce)
    return values, grad


def batch_forward(f: Compiled, params: Any, X: Any) -> da.Array:
    """``f.batch_forward(params, X)`` for a dask array `X`: lazy values chunked like its rows."""
    p = _snapshot(f, params)
    check_array(f, X)
    name = f"symgrad-forward-{_token(f, p, X, 'forward')}"
    tail = 1 if f.n_out > 1 else 0
    tasks = _block_tasks(f, p, X, "forward", lambda i: _out_key(name, i, tail))
    return _array(X, name, tasks, _row_chunks(X, (f.n_out,)))


def _snapshot(f: Compiled, params: Any) -> np.ndarray:
    """The parameters as they are now: a copy, so that a lazy result computed later (after an
    optimiser updated the caller's array in place) is the result of this call. A dask array of
    parameters is computed here (it is one small vector)."""
    if is_dask_collection(params):
        params = dask.compute(params)[0]
    return np.array(f._params(params), dtype=np.float64, copy=True)


def check_array(f: Compiled, X: Any) -> None:
    """Refuse, naming the problem, a dask object that `f`'s batches cannot run on: not a dask
    array, not 2-D, the wrong width, columns split into several chunks, unknown row chunks,
    no rows, or entries that are not real numbers."""
    if not isinstance(X, da.Array):
        raise TypeError(
            f"X: expected a NumPy or dask array, got {type(X).__module__}.{type(X).__name__}; "
            "a dask DataFrame becomes an array with df.to_dask_array(lengths=True)"
        )
    check_columns(X.shape, f.n_inputs)
    if X.dtype.kind not in "iuf":
        what = "booleans (True/False would silently be 1.0/0.0)" if X.dtype.kind == "b" else \
            f"an array of dtype {X.dtype}"
        raise TypeError(f"X: expected real numbers, got {what}")
    if any(math.isnan(c) for c in X.chunks[0]):
        raise ValueError(
            "X: the sizes of its row chunks are unknown (nan), and a batch needs them to order "
            "its sums; call X.compute_chunk_sizes() first"
        )
    if X.numblocks[1] != 1:
        raise ValueError(
            f"X: its columns are split into {X.numblocks[1]} chunks {X.chunks[1]}; every "
            "block must hold whole rows: chunk along rows only, e.g. X.rechunk({1: -1})"
        )
    if X.shape[0] == 0:
        raise ValueError("X: the batch is empty (0 rows)")


# ---- the graph ----------------------------------------------------------------------------------


def _token(f: Compiled, p: np.ndarray, X: da.Array, what: str) -> str:
    """Names a call's tasks: the function, the parameters, the rows and what is computed."""
    return tokenize(_shipped(f).token, p, X.name, what)


def _block_tasks(f: Compiled, p: np.ndarray, X: da.Array, mode: str,
                 key_of: Callable[[int], tuple[Any, ...]]) -> dict[Any, Any]:
    """One task per block of rows (keyed by `key_of`), and the function and the parameters as
    data the tasks share: a worker fetches each once, however many of the blocks it runs."""
    shipped = _shipped(f)
    f_key = f"symgrad-function-{shipped.token}"
    p_key = f"symgrad-params-{tokenize(p)}"
    tasks: dict[Any, Any] = {f_key: shipped, p_key: p}
    for i, x_key in enumerate(_row_keys(X)):
        tasks[key_of(i)] = (_run_block, f_key, p_key, mode, x_key)
    return tasks


def _row_keys(X: da.Array) -> list[tuple[Any, ...]]:
    """The keys of `X`'s blocks, in row order (one block per row chunk)."""
    return [(X.name, i, 0) for i in range(X.numblocks[0])]


def _row_chunks(X: da.Array, shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Chunks of an array with `X`'s rows and, per row, `shape` (a leading 1 dropped)."""
    tail = shape[1:] if shape[0] == 1 else shape
    return (X.chunks[0], *((d,) for d in tail))


def _out_key(name: str, i: int, n_tail: int) -> tuple[Any, ...]:
    return (name, i, *([0] * n_tail))


def _per_row(X: da.Array, tasks: dict[Any, Any], name: str, blocks: str, which: int,
             shape: tuple[int, ...]) -> da.Array:
    """Part `which` of every block task's result (values 0, row gradients 1), as one dask
    array chunked like the rows of `X`."""
    chunks = _row_chunks(X, shape)
    graph = {_out_key(name, i, len(chunks) - 1): (operator.getitem, (blocks, i), which)
             for i in range(X.numblocks[0])}
    return _array(X, name, {**tasks, **graph}, chunks)


def _tree_sum(X: da.Array, tasks: dict[Any, Any], name: str, blocks: str, f: Compiled,
              reduce: str) -> da.Array:
    """The block sums added by the fixed tree (see the module), divided by N for "mean".

    The tree reads each block's summed gradient through a task of its own, so adding the sums
    moves gradients between workers, never the blocks' per-row values."""
    level: list[Any] = []
    graph: dict[Any, Any] = {}
    for i in range(X.numblocks[0]):
        level.append((f"{name}-part", i))
        graph[level[-1]] = (operator.getitem, (blocks, i), 1)
    depth = 0
    while len(level) > 1:
        groups = [level[j: j + FAN_IN] for j in range(0, len(level), FAN_IN)]
        level = [(f"{name}-{depth}", j) for j in range(len(groups))]
        for key, group in zip(level, groups, strict=True):
            graph[key] = (_add_in_order, list(group))
        depth += 1
    divisor = X.shape[0] if reduce == "mean" else 1
    shape = f._gshape[1:] if f.n_out == 1 else f._gshape
    graph[(name, *([0] * len(shape)))] = (_finish, level[0], divisor)
    return _array(X, name, {**tasks, **graph}, tuple((d,) for d in shape))


def _array(X: da.Array, name: str, graph: dict[Any, Any],
           chunks: tuple[tuple[int, ...], ...]) -> da.Array:
    """A dask array named `name` computed by `graph` from the blocks of `X`."""
    hlg = HighLevelGraph.from_collections(name, graph, dependencies=[X])
    return da.Array(hlg, name, chunks, dtype=np.float64)


# ---- what the tasks run -------------------------------------------------------------------------


def _run_block(shipped: _Shipped, params: np.ndarray, mode: str, block: Any) -> Any:
    """One block of rows through the compiled batch kernel: ``(values, summed gradient)`` for
    mode "sum", ``(values, per-row gradients)`` for "rows", values for "forward"."""
    f = shipped.get()
    rows = np.asarray(block)
    if rows.shape[0] == 0:  # dask allows empty blocks; f.batch refuses empty batches
        return _empty(f, mode)
    if mode == "forward":
        return f.batch_forward(params, rows)
    if mode == "rows":
        return f.batch(params, rows, reduce="none")
    if mode == "whole":
        return f.batch(params, rows, reduce="sum")
    return f.sum_in_chunks(params, rows, 1)  # a block is one chunk (see the module)


def _empty(f: Compiled, mode: str) -> Any:
    """What `_run_block` returns for a block of no rows."""
    values = np.empty(0) if f.n_out == 1 else np.empty((0, f.n_out))
    if mode == "forward":
        return values
    grad_shape = f._gshape[1:] if f.n_out == 1 else f._gshape
    return values, np.zeros(((0,) if mode == "rows" else ()) + grad_shape)


def _add_in_order(parts: Sequence[np.ndarray]) -> np.ndarray:
    """``((0.0 + parts[0]) + parts[1]) + ...``: one node of the combining tree (a part is a
    block's summed gradient or a node's sum)."""
    total = np.zeros_like(parts[0])
    for part in parts:
        total += part
    return total


def _finish(total: np.ndarray, divisor: int) -> np.ndarray:
    """The tree's root: the sum, or the mean (``sum / N``, as ``f.batch`` divides)."""
    return total / divisor if divisor != 1 else total


# ---- the compiled function on other processes -----------------------------------------------


class _Shipped:
    """A compiled function as tasks carry it: pickled at most once on the client, loaded at
    most once per process that runs its tasks.

    Pickling gives the token and the pickled function (``pickle.dumps(f)``: the IR, from which
    unpickling rebuilds the executor, loading machine code from that machine's cache); the
    other side keeps the bytes and unpickles them on first use, through a per-process table
    keyed by the token, so a scheduler that only forwards tasks never builds the function and
    a worker builds it once for all the blocks it runs.
    """

    def __init__(self, f: Compiled | None, token: str, payload: bytes | None = None) -> None:
        self._f = f
        self.token = token
        self._payload = payload
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, tuple[str, bytes]]:
        """Pickle as the token and the pickled function (made once)."""
        with self._lock:
            if self._payload is None:
                self._payload = pickle.dumps(self._f, protocol=pickle.HIGHEST_PROTOCOL)
        return (_receive, (self.token, self._payload))

    def __dask_tokenize__(self) -> str:
        """Dask names tasks by the token (hashing the function would cost a pickling)."""
        return self.token

    def get(self) -> Compiled:
        """The compiled function (loaded on first use in this process)."""
        if self._f is None:
            self._f = _load(self.token, self._payload or b"")
        return self._f


_shipped_lock = threading.Lock()
_loaded: OrderedDict[str, Compiled] = OrderedDict()
_loaded_lock = threading.Lock()


def _shipped(f: Compiled) -> _Shipped:
    """The one `_Shipped` of `f` (so `f` is pickled at most once), kept on `f` itself: it goes
    when `f` goes (a table here would keep every function ever shipped alive)."""
    with _shipped_lock:
        s = f.__dict__.get("_symgrad_shipped")
        if s is None:
            s = f.__dict__["_symgrad_shipped"] = _Shipped(f, uuid.uuid4().hex)
        return s


def _receive(token: str, payload: bytes) -> _Shipped:
    """Unpickling a `_Shipped`: the function itself is loaded on first use."""
    with _loaded_lock:
        f = _loaded.get(token)
    return _Shipped(f, token, payload)


def _load(token: str, payload: bytes) -> Compiled:
    """The function pickled as `payload`, unpickled once per process (the last few kept)."""
    with _loaded_lock:
        f = _loaded.get(token)
        if f is None:
            f = pickle.loads(payload)
            _loaded[token] = f
            while len(_loaded) > _LOADED_MAX:
                _loaded.popitem(last=False)
        _loaded.move_to_end(token)
        return f


# ---- training -----------------------------------------------------------------------------------


class DaskRows:
    """The rows of a dask array as `fit` reads them: a full batch is one distributed mean
    gradient per step; minibatches stream the blocks to this process, one at a time.

    Each epoch visits the blocks in an order drawn from the epoch's generator (when there are
    several) and each block's rows in an order drawn from it too; the shuffled rows are cut
    into minibatches of `batch_size` rows in that order, across block boundaries, so every
    minibatch but the epoch's last has `batch_size` rows, as with a NumPy `X`. The next block
    is fetched while this one trains, and only these two are held here. With one block the
    epochs are exactly those of the same rows as a NumPy array.
    """

    def __init__(self, f: Compiled, X: Any) -> None:
        check_array(f, X)
        self.f = f
        self.X: da.Array = X
        self.n_rows = int(X.shape[0])
        self.blocks: tuple[int, ...] = tuple(int(c) for c in X.chunks[0])

    def minibatches(self, rng: np.random.Generator, batch_size: int) -> Iterator[Any]:
        """One epoch's minibatches: NumPy arrays, or `X` itself for a full batch."""
        if batch_size >= self.n_rows:
            yield self.X
            return
        k = len(self.blocks)
        order = [int(i) for i in rng.permutation(k)] if k > 1 else [0]
        order = [i for i in order if self.blocks[i] > 0]
        pending = np.empty((0, self.f.n_inputs))
        with concurrent.futures.ThreadPoolExecutor(1, "symgrad-fetch") as pool:
            ahead = pool.submit(self._fetch, order[0])
            for j in range(len(order)):
                rows = ahead.result()
                if j + 1 < len(order):
                    ahead = pool.submit(self._fetch, order[j + 1])
                rows = rows[rng.permutation(rows.shape[0])]
                rows = rows if pending.shape[0] == 0 else np.concatenate([pending, rows])
                full = rows.shape[0] // batch_size * batch_size
                for start in range(0, full, batch_size):
                    yield rows[start: start + batch_size]
                pending = rows[full:]
        if pending.shape[0]:
            yield pending

    def _fetch(self, i: int) -> np.ndarray:
        """Block `i` of `X`, computed (on the active scheduler) and made a float64 matrix."""
        return self.f._matrix(self.X.blocks[i].compute())

    def mean_batch(self, params: np.ndarray, rows: Any) -> tuple[np.ndarray, np.ndarray]:
        """Values and mean gradient of a minibatch (computed, for the whole of `X`)."""
        if rows is self.X:
            values, grad = dask.compute(*batch(self.f, params, rows, "mean"))
            return values, grad
        return self.f.batch(params, rows, reduce="mean")

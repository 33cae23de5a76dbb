"""Training with a compiled loss: `fit`, minibatch epochs over the rows of a data set.

Imports `compiled` (the `Compiled` object it drives) and `optim` (for types); tqdm lazily, for
the progress bar, and `distributed` lazily, for dask arrays. Everything per example happens in
compiled code (`Compiled.batch` gives the minibatch's values and mean gradient); Python only
slices minibatches and calls the optimiser.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .compiled import Compiled, is_dask
from .optim import Optimizer

__all__ = ["fit"]


def fit(
    f: Compiled,
    params: Any,
    X: Any,
    *,
    optimizer: Optimizer,
    epochs: int,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the mean of a compiled per-example loss over the rows of `X`.

    Each epoch visits every row once, in an order shuffled by a generator seeded with `seed`
    (full batches are not shuffled: their mean gradient is then exactly ``f.batch(params, X,
    reduce="mean")``), in minibatches of `batch_size` rows (the last one may be smaller); each
    minibatch's mean gradient, computed in compiled code, is one ``optimizer.step``. Any
    compiled scalar loss works: an MLP's, a regression's, one compiled from sympy.

    Args:
        f: ``sg.compile(loss, wrt=..., inputs=...)`` of a single output: the loss of one
            example, whose inputs are a row of `X`.
        params: the starting parameters (len(wrt) floats), or None for the wrt leaves' current
            ``.data``. Not modified: training works on a copy.
        X: ``(N, len(inputs))`` data, one example a row; or a dask array chunked along rows
            (`symgrad.distributed.DaskRows`: full batches are distributed gradients,
            minibatches stream the blocks here one at a time, never gathering `X`).
        optimizer: e.g. ``symgrad.optim.Adam(1e-2)``; its state carries over between calls.
        epochs: how many passes over the data.
        batch_size: rows per step; None means all of them (full-batch training).
        seed: seeds the shuffling; the same seed gives the same run, bit for bit.
        progress: show a progress bar (tqdm) with the epoch and the running mean loss.
    Returns:
        ``(params, losses)``: the trained parameters (a new float64 vector; write them into a
        model with `symgrad.nn.vector_to_parameters`) and the mean loss of each epoch, the
        mean over its rows of the loss each row had when its minibatch was evaluated.
    """
    _check_loss(f)
    p = np.array(f._params(params), dtype=np.float64)  # a copy: the caller's array stays
    data = _rows(f, X)
    n = data.n_rows
    epochs = _count("epochs", epochs, minimum=0)
    bs = n if batch_size is None else min(_count("batch_size", batch_size, minimum=1), n)
    if not callable(getattr(optimizer, "step", None)):
        raise TypeError(f"fit: optimizer must have a step(params, grad) method, got "
                        f"{type(optimizer).__name__}")
    rng = np.random.default_rng(seed)
    run = _Run(data, p, optimizer, epochs, _progress_bar(progress, epochs * -(-n // bs), f.name))
    losses = np.empty(epochs)
    try:
        for e in range(epochs):
            losses[e] = run.epoch(e, data.minibatches(rng, bs))
    finally:
        if run.bar is not None:
            run.bar.close()
    return p, losses


class _Matrix:
    """Rows held in memory: each epoch's minibatches are slices of one shuffled copy."""

    def __init__(self, f: Compiled, X: Any) -> None:
        self.f = f
        self.rows = f._matrix(X)
        self.n_rows = self.rows.shape[0]

    def minibatches(self, rng: np.random.Generator, batch_size: int) -> Iterator[np.ndarray]:
        """One epoch's minibatches, in an order drawn from `rng` (none for a full batch)."""
        n = self.n_rows
        rows = self.rows if batch_size == n else self.rows[rng.permutation(n)]
        for start in range(0, n, batch_size):
            yield rows[start: start + batch_size]

    def mean_batch(self, params: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values and mean gradient of one minibatch."""
        return self.f.batch(params, rows, reduce="mean")


def _rows(f: Compiled, X: Any) -> Any:
    """The data `fit` reads: `_Matrix`, or for a dask array `symgrad.distributed.DaskRows`
    (the same two methods)."""
    if is_dask(X):
        from .distributed import DaskRows

        return DaskRows(f, X)
    return _Matrix(f, X)


@dataclass
class _Run:
    """One call of `fit`: what every epoch uses, and whether a non-finite loss was reported."""

    data: Any
    p: np.ndarray
    optimizer: Optimizer
    epochs: int
    bar: Any
    warned: bool = False

    def epoch(self, e: int, minibatches: Iterable[Any]) -> float:
        """One pass over the data in `minibatches`, stepping `p`; returns the mean loss."""
        total = 0.0
        stop = 0
        for rows in minibatches:
            values, grad = self.data.mean_batch(self.p, rows)
            start, stop = stop, stop + values.shape[0]
            batch_total = float(values.sum())
            if not (self.warned or math.isfinite(batch_total)):
                self.warned = True
                warnings.warn(
                    f"fit: the loss is {batch_total} in epoch {e} (rows {start}..{stop - 1}"
                    " of the shuffled data); the parameters will not recover: lower the learning "
                    "rate, or find the row with f.debug(params, row)", RuntimeWarning,
                    stacklevel=3)
            total += batch_total
            self.optimizer.step(self.p, grad)
            if self.bar is not None:
                self.bar.set_postfix_str(f"epoch {e + 1}/{self.epochs}, loss {total / stop:.4g}",
                                         refresh=False)
                self.bar.update(1)
        return total / stop


def _check_loss(f: Any) -> None:
    if not isinstance(f, Compiled):
        raise TypeError(
            f"fit: f must be a compiled loss, sg.compile(loss, wrt=..., inputs=...), got "
            f"{type(f).__name__}"
        )
    if f.n_out != 1:
        raise ValueError(f"fit: the loss must be a single output, {f.name} has {f.n_out}")


def _count(what: str, n: Any, minimum: int) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < minimum:
        raise ValueError(f"fit: {what} must be an int >= {minimum}, got {n!r:.40}")
    return int(n)


def _progress_bar(progress: bool, total: int, name: str) -> Any:
    """A tqdm bar (the notebook one in Jupyter) counting minibatches, or None."""
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"fit {name}", unit="batch", leave=True)

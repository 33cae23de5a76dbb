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
        seed: an int >= 0 that seeds the shuffling; the same seed gives the same run, bit
            for bit.
        progress: show a progress bar (tqdm) with the epoch and the running mean loss, where
            tqdm can show one: on a terminal and in Jupyter, not when stderr is a file or a
            pipe (a log would get a line per update).
    Returns:
        ``(params, losses)``: the trained parameters (a new float64 vector; write them into a
        model with `symgrad.nn.vector_to_parameters`) and the mean loss of each epoch, the
        mean over its rows of the loss each row had when its minibatch was evaluated.
    """
    _check_loss(f)
    _check_optimizer(optimizer)
    p = np.array(f._params(params), dtype=np.float64)  # a copy: the caller's array stays
    data = _rows(f, X)
    n = data.n_rows
    epochs = _count("epochs", epochs, minimum=0)
    bs = n if batch_size is None else min(_count("batch_size", batch_size, minimum=1), n)
    rng = np.random.default_rng(_seed(seed))
    per_epoch = -(-n // bs)
    run = _Run(data, p, optimizer, epochs, per_epoch,
               _progress_bar(progress, epochs * per_epoch, f.name))
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
    per_epoch: int  # minibatches in an epoch
    bar: Any
    warned: bool = False

    def epoch(self, e: int, minibatches: Iterable[Any]) -> float:
        """One pass over the data in `minibatches`, stepping `p`; returns the mean loss."""
        total = 0.0
        stop = 0
        for k, rows in enumerate(minibatches):
            values, grad = self.data.mean_batch(self.p, rows)
            stop += values.shape[0]
            batch_total = float(values.sum())
            if not (self.warned or math.isfinite(batch_total)):
                self.warned = True
                self.warn(e, k, batch_total)
            total += batch_total
            self.optimizer.step(self.p, grad)
            if self.bar is not None:
                self.bar.set_postfix_str(f"epoch {e + 1}/{self.epochs}, loss {total / stop:.4g}",
                                         refresh=False)
                self.bar.update(1)
        return total / stop

    def warn(self, e: int, k: int, loss: float) -> None:
        """Say once that the loss stopped being finite: where (the epoch and minibatch, which
        the user can count; shuffled row numbers they could not map back) and what to check."""
        where = (f"epoch {e + 1} of {self.epochs}" + (
            f", minibatch {k + 1} of {self.per_epoch}" if self.per_epoch > 1 else " (full batch)"))
        warnings.warn(
            f"fit: the loss is {loss} in {where}; the parameters will not recover from it. "
            "Check the data for nan and inf (np.isfinite(X).all()) and lower the learning "
            "rate; f.debug(params, row) shows where a row's nan or inf comes from",
            RuntimeWarning, stacklevel=4)


def _check_loss(f: Any) -> None:
    if not isinstance(f, Compiled):
        raise TypeError(
            f"fit: f must be a compiled loss, sg.compile(loss, wrt=..., inputs=...), got "
            f"{type(f).__name__}"
        )
    if f.n_out != 1:
        raise ValueError(f"fit: the loss must be a single output, {f.name} has {f.n_out}")


def _check_optimizer(optimizer: Any) -> None:
    if isinstance(optimizer, type):
        raise TypeError(
            f"fit: optimizer: expected an optimizer instance such as Adam(1e-3), got the class "
            f"{optimizer.__name__}"
        )
    if not callable(getattr(optimizer, "step", None)):
        raise TypeError(f"fit: optimizer must have a step(params, grad) method, got "
                        f"{type(optimizer).__name__}")


def _seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"fit: seed must be an int, got {type(seed).__name__} {seed!r:.40}")
    if seed < 0:
        raise ValueError(f"fit: seed must be an int >= 0, got {seed!r}")
    return int(seed)


def _count(what: str, n: Any, minimum: int) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < minimum:
        raise ValueError(f"fit: {what} must be an int >= {minimum}, got {n!r:.40}")
    return int(n)


def _progress_bar(progress: bool, total: int, name: str) -> Any:
    """A tqdm bar (the notebook one in Jupyter) counting minibatches, or None.

    ``disable=None`` lets tqdm decide: a bar on a terminal and in Jupyter, nothing when stderr
    is a file or a pipe, where each update would be a line of its own."""
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"fit {name}", unit="batch", leave=True, disable=None)

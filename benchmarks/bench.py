"""Benchmark: symgrad's compiled value-and-gradient against the alternatives.

For each model it times value + gradient of the summed per-example loss ``(out - y)**2`` over a
whole data set, for these contenders:

- ``symgrad``: ``f = sg.compile(loss, wrt=params, inputs=x + [y])`` then
  ``f.batch(params, X, reduce="sum")``; "compile s" is `sg.compile` plus the first call.
- ``interp``: symgrad's interpreted engine used as a micrograd user would: rebuild the graph for
  every example on every call, sum the losses, zero the grads, ``backward()``.
- ``micrograd``: the original package, same protocol. micrograd has no ``tanh`` (nor ``exp``), so it
  runs the same network with ``relu`` in place of every ``tanh``: the same number of nodes, one
  cheap op swapped; the table says so.
- ``numba``: a hand-written Numba kernel (loops over layers, forward with tanh, backward by hand,
  gradient summed over the examples, float64). Its gradient is checked against symgrad's to 1e-9
  before it is timed.
- ``jax``: ``jax.jit(jax.value_and_grad(loss))`` in float64, when ``import jax`` works.
- ``limit`` (on the large model, also under load): the same value and gradient written by hand
  with NumPy matrix products (BLAS, its default threads) and ``np.tanh`` in float64. It adds the
  sums in another order, so it is the practical bound for this computation on this machine, not a
  competitor; its gradient is checked against symgrad's to 1e-9 too.

Models: the lecture's neuron (``tanh(x1*w1 + x2*w2 + b)`` with the lecture's weights) and the
lecture's tanh MLP at two sizes: MLP(2,[16,16,1]) x 100 examples and MLP(16,[64,64,1]) x 1000.
On the large model the interpreted engines run on a subset of the examples (``--subset``) and
their time is extrapolated linearly to the whole data set (marked ``*`` in the table).

Three more workloads:

- ``per-example``: MLP(2,[16,16,1]) x 256 rows, one gradient per row:
  ``f.batch(params, XY, reduce="none")`` (shape (N, P)) against
  ``jax.jit(jax.vmap(jax.value_and_grad(loss_one_row)))`` in float64.
- ``under-load``: the large model (the small one with ``--quick``) timed while ONE other process
  spins ``while True: pass``; it starts before the model's timing rounds and stops after them,
  so every contender (symgrad, jax, the limit) runs under the same load in the same rounds.
- ``cold-start``: ``sg.compile`` of the MLP(2,[16,16,1]) loss plus its first ``f.batch`` call in
  a fresh Python process whose symgrad cache (``SYMGRAD_CACHE_DIR``) and Numba cache
  (``NUMBA_CACHE_DIR``, which also holds the cache of symgrad's own compiled functions) are
  new empty directories; then "warm": the same in a second fresh process, caches now filled.
- ``distributed`` (`distributed_bench.py`): the small model's summed gradient over 1,000,000
  rows held as a dask array, on dask's threaded scheduler and on LocalClusters of 1 and 2
  one-core worker processes, against the local ``f.batch``: rows per second, and the
  overhead of each extra block. Needs dask and distributed (``pip install
  'symgrad[distributed]'``), else it is reported as skipped.

Timings come from ONE run with interleaved repetitions: after a warm-up call, every round calls
each contender in turn (round-robin, starting point rotated each round) and the table reports the
median over the rounds. Fast calls are repeated within a sample so a sample lasts ``--target`` s.
Before each sample the benchmark sleeps `SETTLE` s: thread pools (OpenBLAS's, XLA's) keep their
threads spinning for a while after a call, and without the pause that spin would land on the
next contender's sample.

The last table checks the speed targets: symgrad (the first ``--backend``, numba by default)
against JAX on each workload, as ratios of medians from the same run, and the cold and warm
start times; each says "met" or "NOT met" (or why it was not measured).

Usage::

    python benchmarks/bench.py                  # all workloads (a few minutes)
    python benchmarks/bench.py --quick          # small models, few rounds: about a minute
    python benchmarks/bench.py --skip symgrad@large --skip micrograd --skip cold-start
    python benchmarks/bench.py --backend python
    python benchmarks/bench.py --sizes          # compile-time scaling table only
    python benchmarks/bench.py --sizes 2,4,8    # ... at chosen k for MLP(k, [2k, 2k, 1])

``--skip`` takes a contender (``symgrad``, ``interp``, ``micrograd``, ``numba``, ``jax``,
``limit``), a workload (``neuron``, ``small``, ``large``, ``per-example``, ``under-load``,
``cold-start``, ``distributed``) or ``contender@workload``; it may be repeated or
comma-separated. Progress goes to stderr, the tables to stdout. The exit status is 1 when a
contender failed (an exception, or a gradient that disagrees with symgrad's), else 0: a missed
target is reported, not an error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import importlib.util
import itertools
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import symgrad as sg  # noqa: E402
from symgrad.nn import MLP  # noqa: E402

SUMMED = ("interp", "micrograd", "numba", "jax")  # what the summed-loss workloads run
OTHERS = (*SUMMED, "limit")
CONTENDERS = ("symgrad", *OTHERS)  # "symgrad" stands for one contender per --backend
LABELS = {
    "interp": "symgrad interpreted",
    "micrograd": "micrograd (relu for tanh)",
    "numba": "hand-written numba",
    "jax": "jax.jit value_and_grad",
    "limit": "numpy BLAS limit",
}
MODELS = ("neuron", "small", "large", "per-example", "under-load", "cold-start", "distributed")
LECTURE_NEURON = (-3.0, 1.0, 6.8813735870195432)  # the lecture's w1, w2, b
GRAD_TOL = 1e-9  # relative to the gradient's largest entry


def log(msg: str) -> None:
    """Progress message on stderr (the tables go to stdout)."""
    print(msg, file=sys.stderr, flush=True)


# ---- models and data -----------------------------------------------------------------------------


@dataclass
class Model:
    """One benchmark workload: a network shape, its parameters, a data set and how it is run.

    ``sizes`` is ``[nin, *nouts]``; every layer applies tanh (the lecture's network). ``params``
    is flat in symgrad's order: layer by layer, neuron by neuron, weights then bias.
    """

    key: str
    title: str
    sizes: list[int]
    params: np.ndarray
    X: np.ndarray  # (N, nin)
    Y: np.ndarray  # (N,)
    neuron: bool = False  # the lecture's hand-written neuron instead of symgrad.nn.MLP
    reduce: str = "sum"  # "none": one gradient per row, (N, P)
    busy: bool = False  # timed while one other process spins a core
    others: tuple[str, ...] = SUMMED  # the contenders besides symgrad that run on it

    @property
    def n(self) -> int:
        """Number of examples."""
        return int(self.X.shape[0])

    @property
    def XY(self) -> np.ndarray:
        """The inputs symgrad's batch call takes: one row ``[x0, ..., x_{nin-1}, y]``."""
        return np.ascontiguousarray(np.column_stack([self.X, self.Y]))


def n_params(sizes: Sequence[int]) -> int:
    """Parameters of a dense network with these layer sizes (weights and a bias per neuron)."""
    return sum((a + 1) * b for a, b in itertools.pairwise(sizes))


def make_model(key: str, nin: int, nouts: list[int], n: int, seed: int) -> Model:
    """An MLP(nin, nouts) initialised by symgrad.nn (random.seed(seed)), with n random examples."""
    random.seed(seed)
    mlp = MLP(nin, nouts)
    params = np.array([p.data for p in mlp.parameters()])
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, nin))
    Y = rng.choice([-1.0, 1.0], size=n)
    title = f"MLP({nin},{nouts}) x{n}".replace(" ", "")
    return Model(key, title, [nin, *nouts], params, X, Y)


def make_neuron(n: int, seed: int) -> Model:
    """The lecture's neuron ``tanh(x1*w1 + x2*w2 + b)`` with its weights, n random examples."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 2))
    Y = rng.choice([-1.0, 1.0], size=n)
    return Model("neuron", f"lecture neuron x{n}", [2, 1], np.array(LECTURE_NEURON), X, Y, True)


def workloads(seed: int, quick: bool) -> list[Model]:
    """The timed workloads in run order (the cold start runs apart, see `run_cold_start`).

    ``--quick`` leaves out the large model and runs the under-load workload on the small one.
    """
    small = make_model("small", 2, [16, 16, 1], 100, seed)
    large = make_model("large", 16, [64, 64, 1], 1000, seed)
    out = [make_neuron(100, seed), small]
    if not quick:
        out.append(replace(large, others=OTHERS))
    per = make_model("per-example", 2, [16, 16, 1], 256, seed)
    out.append(replace(per, title=f"{per.title} per-example", reduce="none", others=("jax",)))
    loaded = small if quick else large
    out.append(replace(loaded, key="under-load", title=f"{loaded.title} under load", busy=True,
                       others=("jax", "limit")))
    return out


def layer_blocks(sizes: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(offset, nin, nout)`` of each layer's parameter block: nout rows of nin weights + bias."""
    out, off = [], 0
    for nin, nout in itertools.pairwise(sizes):
        out.append((off, nin, nout))
        off += nout * (nin + 1)
    return out


def build_net(
    value_cls: Any, model: Model, act: str = "tanh"
) -> tuple[Callable[[Sequence[Any]], Any], list[Any]]:
    """A network of `value_cls` nodes (symgrad's or micrograd's Value) at `model.params`.

    Returns ``(net, leaves)``: ``net(x)`` builds the graph for one example; `leaves` are the
    parameter Values in symgrad's order. The MLP sums bias-first like micrograd's Neuron; the
    neuron is written as in the lecture. `act` names the Value method used as the activation.
    """
    flat = [float(v) for v in model.params]
    if model.neuron:
        w1, w2, b = (value_cls(v) for v in flat)

        def neuron(x: Sequence[Any]) -> Any:
            n = x[0] * w1 + x[1] * w2 + b
            return getattr(n, act)()

        return neuron, [w1, w2, b]
    layers: list[list[tuple[list[Any], Any]]] = []
    leaves: list[Any] = []
    it = iter(flat)
    for nin, nout in itertools.pairwise(model.sizes):
        layer = []
        for _ in range(nout):
            w = [value_cls(next(it)) for _ in range(nin)]
            b = value_cls(next(it))
            leaves += [*w, b]
            layer.append((w, b))
        layers.append(layer)

    def net(x: Sequence[Any]) -> Any:
        h: list[Any] = list(x)
        for layer in layers:
            h = [getattr(sum((wi * xi for wi, xi in zip(w, h, strict=True)), b), act)()
                 for w, b in layer]
        return h[0]

    return net, leaves


def symgrad_net(model: Model) -> tuple[Callable[[Sequence[Any]], Any], list[sg.Value]]:
    """The network as a symgrad user writes it: symgrad.nn.MLP (or the lecture's neuron)."""
    if model.neuron:
        w1, w2, b = (sg.Value(v, label=lab) for v, lab in zip(model.params, ("w1", "w2", "b"),
                                                               strict=True))

        def neuron(x: Sequence[Any]) -> sg.Value:
            return (x[0] * w1 + x[1] * w2 + b).tanh()

        return neuron, [w1, w2, b]
    mlp = MLP(model.sizes[0], model.sizes[1:])
    leaves = mlp.parameters()
    for p, v in zip(leaves, model.params, strict=True):
        p.data = float(v)
    return mlp, leaves  # type: ignore[return-value]


# ---- contenders: each setup returns the timed call -----------------------------------------------


Call = Callable[[], tuple[Any, np.ndarray]]  # (value or per-row values, gradient)


def symgrad_loss(model: Model) -> tuple[sg.Value, list[sg.Value], list[sg.Value]]:
    """The per-example loss traced once as a symgrad user writes it: ``(loss, wrt, inputs)``."""
    net, leaves = symgrad_net(model)
    xs = [sg.Value(0.0, label=f"x{i}") for i in range(model.sizes[0])]
    y = sg.Value(0.0, label="y")
    return (net(xs) - y) ** 2, leaves, [*xs, y]


def setup_symgrad(model: Model, backend: str) -> tuple[Call, dict[str, Any]]:
    """Compile the per-example loss; the call is one ``f.batch`` over all rows.

    With ``model.reduce == "sum"`` it returns the summed loss and gradient, with ``"none"`` the
    per-row values (N,) and gradients (N, P).
    """
    loss, leaves, inputs = symgrad_loss(model)
    f = sg.compile(loss, wrt=leaves, inputs=inputs, backend=backend)
    params, XY = model.params.copy(), model.XY

    if model.reduce == "none":
        def call() -> tuple[Any, np.ndarray]:
            return f.batch(params, XY, reduce="none")
    else:
        def call() -> tuple[Any, np.ndarray]:
            # the (n_out,) value as it comes, like the other contenders: converted when checked
            return f.batch(params, XY, reduce="sum")

    return call, {"stats": f.stats, "wait": f.wait}


def setup_interp(model: Model, value_cls: Any, act: str, n_rows: int) -> Call:
    """Rebuild the graph per example per call: forward, sum the losses, zero grads, backward."""
    net, leaves = build_net(value_cls, model, act) if act != "tanh" else symgrad_net(model)
    rows = model.X[:n_rows].tolist()
    ys = model.Y[:n_rows].tolist()
    params = [float(v) for v in model.params]

    def call() -> tuple[float, np.ndarray]:
        for p, v in zip(leaves, params, strict=True):
            p.data = v
            p.grad = 0.0
        loss = sum((net(x) - y) ** 2 for x, y in zip(rows, ys, strict=True))
        loss.backward()
        return float(loss.data), np.array([p.grad for p in leaves], dtype=np.float64)

    return call


def numba_kernel() -> Any:
    """A fresh dispatcher for the hand-written kernel: it compiles on its first call, so each
    model's "compile s" includes it (the kernel is generic: one compile would serve all models).
    Activations `a` and `delta` (dloss/d(pre-activation)) are unit-major over all layers."""
    import numba

    @numba.njit(cache=False, inline="always")
    def forward_row(params: np.ndarray, sizes: np.ndarray, a: np.ndarray) -> int:
        aoff = 0
        poff = 0
        for layer in range(sizes.shape[0] - 1):
            nin, nout = sizes[layer], sizes[layer + 1]
            for j in range(nout):
                base = poff + j * (nin + 1)
                s = params[base + nin]  # bias first, as symgrad's Neuron sums
                for k in range(nin):
                    s += params[base + k] * a[aoff + k]
                a[aoff + nin + j] = np.tanh(s)
            aoff += nin
            poff += nout * (nin + 1)
        return aoff  # where the output is

    @numba.njit(cache=False, inline="always")
    def backward_row(params: np.ndarray, sizes: np.ndarray, a: np.ndarray, delta: np.ndarray,
                     aoff: int, grad: np.ndarray) -> None:
        poff = 0
        for layer in range(sizes.shape[0] - 1):
            poff += sizes[layer + 1] * (sizes[layer] + 1)
        for layer in range(sizes.shape[0] - 2, -1, -1):
            nin, nout = sizes[layer], sizes[layer + 1]
            ooff = aoff
            aoff = ooff - nin
            poff -= nout * (nin + 1)
            if layer > 0:
                for k in range(nin):
                    delta[aoff + k] = 0.0
            for j in range(nout):
                base = poff + j * (nin + 1)
                dj = delta[ooff + j]
                grad[base + nin] += dj
                for k in range(nin):
                    grad[base + k] += dj * a[aoff + k]
                if layer > 0:
                    for k in range(nin):
                        delta[aoff + k] += dj * params[base + k]
            if layer > 0:
                for k in range(nin):
                    delta[aoff + k] *= 1.0 - a[aoff + k] * a[aoff + k]

    @numba.njit(cache=False)
    def mlp_loss_grad(
        params: np.ndarray, sizes: np.ndarray, X: np.ndarray, Y: np.ndarray, grad: np.ndarray
    ) -> float:
        total = 0
        for layer in range(sizes.shape[0]):
            total += sizes[layer]
        a = np.empty(total)
        delta = np.empty(total)
        loss = 0.0
        for i in range(X.shape[0]):
            for k in range(sizes[0]):
                a[k] = X[i, k]
            aoff = forward_row(params, sizes, a)
            out = a[aoff]
            diff = out - Y[i]
            loss += diff * diff
            delta[aoff] = 2.0 * diff * (1.0 - out * out)
            backward_row(params, sizes, a, delta, aoff, grad)
        return loss

    return mlp_loss_grad


def setup_numba(model: Model) -> Call:
    """The hand-written kernel; the call allocates the gradient and loops over all rows."""
    kernel = numba_kernel()
    sizes = np.array(model.sizes, dtype=np.int64)
    params = model.params.copy()
    X = np.ascontiguousarray(model.X)
    Y = np.ascontiguousarray(model.Y)
    npar = params.shape[0]

    def call() -> tuple[float, np.ndarray]:
        grad = np.zeros(npar)
        return float(kernel(params, sizes, X, Y, grad)), grad

    return call


def _jax() -> tuple[Any, Any]:
    """``(jax, jax.numpy)`` with float64 enabled."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    return jax, jnp


def setup_jax(model: Model) -> Call:
    """``jax.jit(jax.value_and_grad(loss))`` in float64 over a flat parameter vector."""
    jax, jnp = _jax()
    blocks = layer_blocks(model.sizes)

    def loss(flat: Any, X: Any, Y: Any) -> Any:
        h = X
        for off, nin, nout in blocks:
            blk = flat[off: off + nout * (nin + 1)].reshape(nout, nin + 1)
            h = jnp.tanh(h @ blk[:, :nin].T + blk[:, nin])
        return jnp.sum((h[:, 0] - Y) ** 2)

    return _jax_call(jax.jit(jax.value_and_grad(loss)), model)


def setup_jax_vmap(model: Model) -> Call:
    """Per-example: ``jax.jit(jax.vmap(jax.value_and_grad(loss_one_row)))`` in float64."""
    jax, jnp = _jax()
    blocks = layer_blocks(model.sizes)

    def loss_one_row(flat: Any, x: Any, y: Any) -> Any:
        h = x
        for off, nin, nout in blocks:
            blk = flat[off: off + nout * (nin + 1)].reshape(nout, nin + 1)
            h = jnp.tanh(blk[:, :nin] @ h + blk[:, nin])
        return (h[0] - y) ** 2

    fn = jax.jit(jax.vmap(jax.value_and_grad(loss_one_row), in_axes=(None, 0, 0)))
    return _jax_call(fn, model)


def _jax_call(fn: Any, model: Model) -> Call:
    params = model.params.copy()
    X, Y = np.ascontiguousarray(model.X), np.ascontiguousarray(model.Y)

    def call() -> tuple[Any, np.ndarray]:
        v, g = fn(params, X, Y)
        g.block_until_ready()
        return v, g  # converted to numpy only when checked, not inside the timing

    return call


def setup_limit(model: Model) -> Call:
    """The summed loss's value and gradient by hand: NumPy matrix products and ``np.tanh``.

    Forward ``h = tanh(h @ W.T + b)`` layer by layer; backward with ``delta = dloss/dz``:
    ``dW = delta.T @ h_prev``, ``db = delta.sum(0)``,
    ``delta_prev = (delta @ W) * (1 - h_prev**2)``.
    """
    blocks = layer_blocks(model.sizes)
    params = model.params.copy()
    X, Y = np.ascontiguousarray(model.X), np.ascontiguousarray(model.Y)

    def call() -> tuple[float, np.ndarray]:
        hs, ws = [X], []
        for off, nin, nout in blocks:
            blk = params[off: off + nout * (nin + 1)].reshape(nout, nin + 1)
            z = hs[-1] @ blk[:, :nin].T
            z += blk[:, nin]
            hs.append(np.tanh(z, out=z))
            ws.append(blk[:, :nin])
        diff = hs[-1][:, 0] - Y
        grad = np.empty(params.shape[0])
        delta = (2.0 * diff)[:, None] * (1.0 - hs[-1] * hs[-1])
        for i in range(len(blocks) - 1, -1, -1):
            off, nin, nout = blocks[i]
            g = grad[off: off + nout * (nin + 1)].reshape(nout, nin + 1)
            g[:, :nin] = delta.T @ hs[i]
            g[:, nin] = delta.sum(axis=0)
            if i:
                delta = (delta @ ws[i]) * (1.0 - hs[i] * hs[i])
        return float(diff @ diff), grad

    return call


def have_module(name: str) -> bool:
    """Whether `import name` works."""
    try:
        __import__(name)
    except Exception:  # an optional package may fail to import in many ways
        return False
    return True


# ---- measurement ---------------------------------------------------------------------------------


@dataclass
class Result:
    """What one contender did on one model."""

    contender: str
    label: str
    compile_s: float | None = None
    samples: list[float] = field(default_factory=list)  # seconds per call, one per round
    number: int = 1  # calls per sample
    scale: float = 1.0  # extrapolation factor (whole data set / rows timed)
    note: str = ""
    skipped: str = ""
    error: str = ""
    call: Call | None = None
    wait: Callable[[], None] | None = None  # blocks until the compiled code is ready
    first: tuple[float, np.ndarray] | None = None

    @property
    def per_call(self) -> float | None:
        """Median seconds per call, extrapolated to the whole data set."""
        return statistics.median(self.samples) * self.scale if self.samples else None


def contenders(backends: Sequence[str]) -> list[tuple[str, str]]:
    """``(name, label)`` of every contender: one ``symgrad:BACKEND`` per backend, the others."""
    many = len(backends) > 1
    sym = [(f"symgrad:{b}", f"symgrad compiled [{b}]" if many else "symgrad compiled")
           for b in backends]
    return [*sym, *((c, LABELS[c]) for c in OTHERS)]


def skip_reason(skips: set[str], contender: str, model: Model) -> str:
    """'--skip ...' when the user skipped this contender on this model, else ''.

    ``symgrad`` (or ``symgrad@model``) skips every symgrad backend; ``symgrad:tape`` one.
    """
    base = contender.partition(":")[0]
    for s in dict.fromkeys((contender, base, model.key, f"{contender}@{model.key}",
                            f"{base}@{model.key}")):
        if s in skips:
            return f"--skip {s}"
    return ""


def run_model(
    model: Model, args: argparse.Namespace, skips: set[str], rounds: int
) -> list[Result]:
    """Set up, verify and time every contender on `model`, interleaving the repetitions."""
    log(f"\n== {model.title}: {n_params(model.sizes)} parameters, {model.n} examples")
    subset = min(model.n, args.subset) if model.key == "large" else model.n
    results: list[Result] = []
    for name, label in contenders(args.backends):
        if not name.startswith("symgrad:") and name not in model.others:
            continue
        res = Result(name, label_of(name, model) if name in LABELS else label)
        results.append(res)
        res.skipped = why_skipped(skips, name, model)
        if not res.skipped:
            prepare(res, model, subset)
    verify(model, results, subset)
    timed = [r for r in results if r.call is not None]
    if model.busy and timed:
        with busy_process() as busy:
            time_rounds(timed, args.target, rounds)
        for r in timed:
            r.note = _join(r.note, "; ".join(busy.trouble))
    else:
        time_rounds(timed, args.target, rounds)
    for r in results:
        r.call = None  # let the graphs and kernels go
    return results


def label_of(name: str, model: Model) -> str:
    """The table's name for a contender other than symgrad on `model`."""
    if name == "jax" and model.reduce == "none":
        return "jax.jit vmap value_and_grad"
    return LABELS[name]


def why_skipped(skips: set[str], name: str, model: Model) -> str:
    """Why `name` does not run on `model` ('' when it runs): --skip or a missing package."""
    if reason := skip_reason(skips, name, model):
        return reason
    if name == "micrograd" and not have_module("micrograd"):
        return "micrograd not installed (pip install micrograd)"
    if name == "jax" and not have_module("jax"):
        return "jax not installed (pip install jax; optional)"
    return ""


def prepare(res: Result, model: Model, subset: int) -> None:
    """Set up one contender and make its first call ("compile s" for the compiled ones).

    A failure is recorded in ``res.error`` (the other contenders still run).
    """
    backend = res.contender.partition(":")[2]
    if backend and n_params(model.sizes) > 1000:
        log("   (if a backend compiles the large model line by line, Numba takes minutes; "
            f"--skip {res.contender}@{model.key} skips it)")
    log(f"   setting up {res.label} ...")
    t0 = time.perf_counter()
    try:
        res.call = make_call(res, model, subset)
        res.first = res.call()
        if backend or res.contender in ("numba", "jax"):
            res.compile_s = time.perf_counter() - t0
        if res.wait is not None:  # a first-ever build continues in the background: time the
            res.wait()  # compiled code, not the plain-Python stand-in of the first calls
    except Exception as e:  # a broken contender is reported, the others still run
        res.error = f"{type(e).__name__}: {e}"
        res.call = None
        log(f"   {res.label} FAILED: {res.error}")
        return
    if res.compile_s is not None:
        log(f"   ... compiled + first call in {res.compile_s:.2f} s")


def make_call(res: Result, model: Model, subset: int) -> Call:
    """The timed call of contender ``res.contender`` on `model`; sets its note and scale."""
    name = res.contender
    backend = name.partition(":")[2]
    if backend:
        call, info = setup_symgrad(model, backend)
        res.wait = info["wait"]
        st = info["stats"]
        lowering = st.get("lowering", backend)
        how = backend if lowering == backend else f"{backend}: {lowering}"
        res.note = f"{how}, {_instructions(st)} instrs"
        return call
    if name in ("interp", "micrograd"):
        if subset < model.n:
            res.scale = model.n / subset
            res.note = f"* {subset} of {model.n} rows, x{res.scale:g}"
        if name == "interp":
            return setup_interp(model, sg.Value, "tanh", subset)
        from micrograd.engine import Value as MgValue

        return setup_interp(model, MgValue, "relu", subset)
    if name == "numba":
        return setup_numba(model)
    if name == "limit":
        return setup_limit(model)
    return setup_jax_vmap(model) if model.reduce == "none" else setup_jax(model)


SETTLE = 0.15  # s of quiet before each sample: longer than the thread pools' spin after a call


def time_rounds(timed: list[Result], target: float, rounds: int) -> None:
    """Calibrate each call to samples of at least `target` s, then run the interleaved rounds
    (each sample after `SETTLE` s of sleep, so no contender's spinning threads remain)."""
    for r in timed:
        t = _time_once(r.call)  # type: ignore[arg-type]
        r.number = max(1, min(100_000, math.ceil(target / max(t, 1e-9))))
    log(f"   timing {len(timed)} contender(s), {rounds} interleaved rounds ...")
    for k in range(rounds):
        order = timed[k % len(timed):] + timed[: k % len(timed)] if timed else []
        for r in order:
            time.sleep(SETTLE)
            t0 = time.perf_counter()
            for _ in range(r.number):
                r.call()  # type: ignore[misc]
            r.samples.append((time.perf_counter() - t0) / r.number)


BUSY = "print('spinning', flush=True)\nwhile True:\n    pass\n"


@dataclass
class Busy:
    """The busy process and what went wrong with it (empty when it spun throughout)."""

    proc: subprocess.Popen[str]
    trouble: list[str] = field(default_factory=list)


@contextlib.contextmanager
def busy_process() -> Iterator[Busy]:
    """ONE other process spinning ``while True: pass`` (one core's worth) while the block runs."""
    busy = Busy(subprocess.Popen([sys.executable, "-c", BUSY], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, text=True))
    try:
        assert busy.proc.stdout is not None
        if busy.proc.stdout.readline().strip() != "spinning":  # wait until it spins
            busy.trouble.append("the busy process did not start")
        log(f"   one busy process (pid {busy.proc.pid}) spinning")
        yield busy
        if busy.proc.poll() is not None:
            busy.trouble.append("the busy process ended early")
    finally:
        busy.proc.kill()
        busy.proc.wait()
        log("   busy process stopped")


def _time_once(call: Call) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def _instructions(stats: dict[str, Any]) -> str:
    nodes = stats.get("nodes", {})
    n = nodes.get("final", nodes.get("dce"))
    return str(n) if n is not None else "?"


def _max_rel_diff(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def _value(v: Any, model: Model) -> Any:
    """A contender's value as compared: the summed loss as one float, per-example values as
    they are."""
    return float(np.sum(np.asarray(v))) if model.reduce == "sum" else v


def verify(model: Model, results: list[Result], subset: int) -> None:
    """Check values and gradients against symgrad's (or, without symgrad, jax's) before timing.

    The hand-written kernel and the NumPy limit must match to 1e-9 or they are not timed (and
    the run fails); the interpreted engine is compared when it ran on the whole data set; jax is
    compared the same way. Per-example workloads compare every row's value and gradient.
    """
    ref = next((r for r in results if r.first is not None and r.contender.startswith("symgrad")),
               None)
    jax = next((r for r in results if r.contender == "jax"), None)
    if ref is None and jax is not None and jax.first is not None:
        ref = jax
    several = sum(r.contender.startswith("symgrad:") for r in results) > 1
    refname = ref.contender if ref is not None and several else "symgrad"
    for r in results:
        if r.first is None or r is ref or r.contender == "micrograd":
            continue
        if r.contender == "interp" and subset < model.n:
            continue
        if ref is None:
            r.note = _join(r.note, "unverified")
            continue
        d = _max_rel_diff(r.first[1], ref.first[1])  # type: ignore[index]
        dv = _max_rel_diff(*(_value(x.first[0], model) for x in (r, ref)))  # type: ignore[index]
        ok = d <= GRAD_TOL and dv <= GRAD_TOL
        r.note = _join(r.note, f"grad ~ {refname} {d:.0e}" if ok else "")
        if not ok:
            r.error = (f"value/gradient differ from {ref.contender}'s: value {dv:.2e}, "
                       f"gradient {d:.2e} (max relative; tolerance {GRAD_TOL:g})")
            log(f"   {r.label}: {r.error}")
            r.call = None


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a and b else a or b


# ---- cold start ----------------------------------------------------------------------------------


BENCH_DIR = Path(__file__).resolve().parent
COLD_CHILD = (  # argv: benchmarks directory, backend, seed
    "import sys, time\n"
    "t0 = time.perf_counter()\n"
    "import symgrad\n"
    "t_import = time.perf_counter() - t0\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "import bench\n"
    "bench.cold_child(sys.argv[2], int(sys.argv[3]), t_import)\n"
)


@dataclass
class ColdResult:
    """Cold and warm starts of one backend in fresh processes, seconds per round."""

    backend: str
    cold: list[float] = field(default_factory=list)  # sg.compile + first batch, empty caches
    warm: list[float] = field(default_factory=list)  # the same, caches filled
    import_s: list[float] = field(default_factory=list)  # `import symgrad`, cold process
    process_cold: list[float] = field(default_factory=list)  # whole process, as seen outside
    process_warm: list[float] = field(default_factory=list)
    lowering: str = ""
    diff: float = 0.0  # largest difference from NumPy's value and gradient (max relative)
    skipped: str = ""
    error: str = ""


def cold_model(seed: int) -> Model:
    """The cold-start workload: the MLP(2,[16,16,1]) loss over the small model's 100 rows."""
    small = make_model("cold-start", 2, [16, 16, 1], 100, seed)
    return replace(small, title=f"{small.title} cold start")


def cold_child(backend: str, seed: int, import_s: float) -> None:
    """Inside a fresh process: time `sg.compile` + the first batch call; print one JSON line."""
    model = cold_model(seed)
    loss, leaves, inputs = symgrad_loss(model)
    params, XY = model.params.copy(), model.XY
    t0 = time.perf_counter()
    f = sg.compile(loss, wrt=leaves, inputs=inputs, backend=backend)
    values, grad = f.batch(params, XY, reduce="sum")
    compile_s = time.perf_counter() - t0
    print(json.dumps({"import_s": import_s, "compile_s": compile_s,
                      "lowering": str(f.stats.get("lowering", backend)),
                      "value": float(np.sum(values)), "grad": grad.tolist()}), flush=True)


def run_cold_start(args: argparse.Namespace, skips: set[str]) -> list[ColdResult]:
    """Cold and warm start of every backend, `args.cold_rounds` times each.

    Results are checked against the NumPy value and gradient (an independent computation).
    """
    model = cold_model(args.seed)
    log(f"\n== {model.title}: fresh processes, empty caches, {args.cold_rounds} round(s)")
    ref = setup_limit(model)()
    out: list[ColdResult] = []
    for backend in args.backends:
        res = ColdResult(backend)
        out.append(res)
        res.skipped = skip_reason(skips, f"symgrad:{backend}", model)
        if res.skipped:
            continue
        for k in range(args.cold_rounds):
            log(f"   backend={backend}: round {k + 1}, a cold process then a warm one ...")
            try:
                cold_round(res, args.seed, ref)
            except Exception as e:  # reported in the table; the run's exit status says it
                res.error = f"{type(e).__name__}: {e}"
                log(f"   cold start [{backend}] FAILED: {res.error}")
                break
            log(f"   ... cold {res.cold[-1]:.2f} s, warm {res.warm[-1]:.2f} s")
    return out


def cold_round(res: ColdResult, seed: int, ref: tuple[float, np.ndarray]) -> None:
    """One cold process and one warm one sharing a new pair of cache directories."""
    with tempfile.TemporaryDirectory(prefix="symgrad-bench-cold-") as tmp:
        env = {**os.environ, "SYMGRAD_CACHE_DIR": os.path.join(tmp, "symgrad"),
               "NUMBA_CACHE_DIR": os.path.join(tmp, "numba")}
        env.pop("SYMGRAD_CACHE", None)  # the cache must be on for a warm start
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        for kind in ("cold", "warm"):
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", COLD_CHILD, str(BENCH_DIR), res.backend, str(seed)],
                cwd=tmp, env=env, capture_output=True, text=True, timeout=600, check=False)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
                raise RuntimeError(f"{kind} process exit {proc.returncode}: {last[-200:]}")
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            d = max(_max_rel_diff(got["value"], ref[0]), _max_rel_diff(got["grad"], ref[1]))
            if d > GRAD_TOL:
                raise ValueError(f"{kind} start: value/gradient differ from NumPy's by {d:.2e}")
            res.diff = max(res.diff, d)
            res.lowering = got["lowering"]
            getattr(res, kind).append(got["compile_s"])
            getattr(res, f"process_{kind}").append(wall)
            if kind == "cold":
                res.import_s.append(got["import_s"])


# ---- reporting -----------------------------------------------------------------------------------


def fmt_time(s: float | None) -> str:
    """Seconds with a readable unit: '812 ns', '12.3 us', '4.56 ms', '1.23 s'."""
    if s is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def fmt_ratio(x: float) -> str:
    """A ratio as '0.63x', '4.3x', '538x', '24,300x'."""
    if x >= 1000:
        return f"{float(f'{x:.3g}'):,.0f}x"
    return f"{x:.2g}x" if x < 10 else f"{x:.0f}x"


def versions() -> str:
    """Versions of the packages that take part."""
    out = [f"python {platform.python_version()}"]
    for dist in ("symgrad", "numpy", "numba", "jax", "micrograd"):
        try:
            out.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{dist} {sg.__version__} (checkout)" if dist == "symgrad" else f"{dist} -")
    return ", ".join(out)


def blas() -> str:
    """NumPy's BLAS and the thread settings it read at start (the limit's threads): read at
    import, since starting a dask cluster sets them to 1 in this process's environment."""
    return _BLAS


def _blas_at_start() -> str:
    try:
        info = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        name = f"{info.get('name', '?')} {info.get('version', '')}".strip()
    except Exception:  # the layout of show_config differs between NumPy versions
        name = "unknown"
    env = [f"{v}={os.environ[v]}" for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                            "MKL_NUM_THREADS") if v in os.environ]
    return f"{name}, threads: {', '.join(env) if env else 'default (no *_NUM_THREADS set)'}"


_BLAS = _blas_at_start()


def header(args: argparse.Namespace, rounds: int) -> str:
    """Machine, date and settings."""
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return "\n".join([
        f"# symgrad benchmark, {now}",
        f"# machine: {platform.platform()}, {platform.machine()}, "
        f"os.cpu_count()={os.cpu_count()}",
        f"# {versions()}",
        f"# numpy BLAS: {blas()}",
        f"# symgrad backend={','.join(args.backends)}, rounds={rounds} (median, interleaved), "
        f"sample >= {args.target:g} s, seed={args.seed}, cold-start rounds={args.cold_rounds}",
        "# load average before the run: "
        + (" ".join(f"{x:.2f}" for x in args.loadavg) if args.loadavg else "unknown"),
        "# symgrad cache: " + ("as configured (--warm-cache)" if args.warm_cache
                               else "cold (a fresh temporary SYMGRAD_CACHE_DIR)"),
    ])


RIGHT = {"compile s", "per call", "vs symgrad", "measured", "cold s", "warm s", "import s",
         "cold process s", "warm process s"}  # right-aligned columns


def table(rows: list[list[str]], head: list[str]) -> str:
    """A plain-text table with left-aligned text and right-aligned numbers."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    right = {i for i, h in enumerate(head) if h in RIGHT}

    def line(r: list[str]) -> str:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in
                 enumerate(zip(r, widths, strict=True))]
        return "  ".join(cells).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


def report(all_results: list[tuple[Model, list[Result]]]) -> str:
    """The main table and the list of skipped contenders."""
    rows: list[list[str]] = []
    skipped: dict[tuple[str, str], list[str]] = {}  # (contender, reason) -> models
    extrapolated = False
    for model, results in all_results:
        ref = next((r for r in results if r.contender.startswith("symgrad") and r.per_call),
                   None)
        base = ref.per_call if ref is not None else None
        for r in results:
            if r.skipped:
                skipped.setdefault((r.contender, r.skipped), []).append(model.key)
                continue
            if r.error:
                rows.append([model.title, r.label, "-", "FAILED", "-", r.error[:70]])
                continue
            pc = r.per_call
            ratio = fmt_ratio(pc / base) if pc is not None and base else "n/a"
            if r is ref:
                ratio = "1 (ref)"
            extrapolated |= r.scale != 1.0
            comp = f"{r.compile_s:.2f}" if r.compile_s is not None else "-"
            rows.append([model.title, r.label, comp, fmt_time(pc), ratio, r.note])
    out = table(rows, ["model", "contender", "compile s", "per call", "vs symgrad", "note"])
    out += ("\n\nper call: value + gradient of the summed loss over the whole data set (median);"
            "\n  per-example: the N values and the (N, P) per-row gradients."
            "\nvs symgrad: per-call time / symgrad's (above 1: slower than symgrad)."
            "\ncompile s: compile plus the first call; '-' for the interpreted engines and the"
            "\n  NumPy limit. One-off costs (a JIT done once per process) land on the first"
            "\n  contender needing them."
            "\nmicrograd runs the same network with relu in place of tanh (it has no tanh)."
            "\nnumpy BLAS limit: the same computation as NumPy matrix products (sums in another"
            "\n  order): the practical bound on this machine, not a competitor. It runs with"
            "\n  BLAS's default threads, which lose badly when other work holds the cores:"
            "\n  OPENBLAS_NUM_THREADS=1 in the environment shows the one-thread bound."
            "\nunder load: timed while one other process spins `while True: pass`, started before"
            "\n  the timing rounds and stopped after them (every contender in the same rounds).")
    if extrapolated:
        out += ("\n* timed on a subset of the rows and extrapolated linearly to the whole data "
                "set.")
    if skipped:
        out += "\n\nskipped:\n" + "\n".join(
            f"  {c} on {', '.join(ms)}: {why}" for (c, why), ms in skipped.items())
    return out


def cold_report(cold: list[ColdResult]) -> str:
    """The cold/warm start table: medians over the rounds, seconds."""
    head = ["backend", "lowering", "cold s", "warm s", "import s", "cold process s",
            "warm process s", "note"]

    def med(xs: list[float]) -> str:
        return f"{statistics.median(xs):.2f}" if xs else "-"

    rows = []
    for c in cold:
        if c.skipped or c.error:
            rows.append([c.backend, "-", "-", "-", "-", "-", "-",
                         "skipped: " + c.skipped if c.skipped else "FAILED " + c.error[:90]])
            continue
        rows.append([c.backend, c.lowering, med(c.cold), med(c.warm), med(c.import_s),
                     med(c.process_cold), med(c.process_warm),
                     f"{len(c.cold)} round(s); grad ~ numpy {c.diff:.0e}"])
    return (table(rows, head) + "\n\ncold s: sg.compile of the loss + its first f.batch call in "
            "a fresh process whose SYMGRAD_CACHE_DIR and\n  NUMBA_CACHE_DIR are new empty "
            "directories (median over rounds); warm s: the same in a second\n  fresh process, "
            "caches now filled. import s: `import symgrad` in the cold process; process s:\n  "
            "the whole child process seen from outside (interpreter start, imports, model, "
            "compile).")


# ---- targets -------------------------------------------------------------------------------------


RATIO_TARGETS = (  # (workload, the workload it is defined on, symgrad time / jax time at most)
    ("neuron", "lecture neuron x100", 0.3),
    ("small", "MLP(2,[16,16,1])x100", 0.6),
    ("large", "MLP(16,[64,64,1])x1000", 1.0),
    ("per-example", "MLP(2,[16,16,1])x256 per-example", 1.0),
    ("under-load", "MLP(16,[64,64,1])x1000 under load", 1.5),
)
START_TARGETS = (("cold", 3.0), ("warm", 0.5))  # seconds, less than


def _median_of(results: list[Result], name: str, label: str) -> tuple[float | None, str]:
    """Contender `name`'s median per call, or None and why it has none."""
    r = next((r for r in results if r.contender == name), None)
    if r is None:
        return None, f"{label} not run"
    if r.skipped:
        return None, f"{r.label}: {r.skipped}"
    if r.error:
        return None, f"{r.label} FAILED"
    return (r.per_call, "") if r.per_call else (None, f"{r.label} not timed")


def ratio_target(
    entry: tuple[Model, list[Result]] | None, title: str, limit: float, backend: str
) -> list[str]:
    """One target row: symgrad's median over jax's on one workload (the same run)."""
    what = f"{title}: symgrad [{backend}] / jax"
    thr = f"<= {limit:.1f}x"
    if entry is None:
        return [what, "-", thr, "not measured", "workload not run (--quick)"]
    model, results = entry
    sym, why_sym = _median_of(results, f"symgrad:{backend}", f"symgrad [{backend}]")
    jax, why_jax = _median_of(results, "jax", "jax")
    if sym is None or jax is None:
        return [what, "-", thr, "not measured", why_sym or why_jax]
    if model.title != title:
        return [what, "-", thr, "not measured",
                f"--quick ran {model.title} instead: {sym / jax:.3g}x"]
    if model.busy and any("busy process" in r.note for r in results):
        return [what, "-", thr, "not measured", "the busy process did not spin throughout"]
    lim, _ = _median_of(results, "limit", "limit")
    note = "" if lim is None else (f"limit (numpy BLAS) {lim / jax:.3g}x jax; "
                                   f"symgrad {sym / lim:.3g}x limit")
    return [what, f"{sym / jax:.3g}x", thr, "met" if sym / jax <= limit else "NOT met", note]


def start_target(cold: list[ColdResult], kind: str, limit: float, backend: str) -> list[str]:
    """One target row: the median cold (or warm) start of `backend`, seconds."""
    what = (f"{kind} start [{backend}]: sg.compile + 1st batch, MLP(2,[16,16,1]), "
            + ("empty caches" if kind == "cold" else "caches filled"))
    thr = f"< {limit:.1f} s"
    c = next((c for c in cold if c.backend == backend), None)
    if c is None or c.skipped or c.error:
        why = "not run" if c is None else c.skipped or "FAILED"
        return [what, "-", thr, "not measured", why]
    t = statistics.median(getattr(c, kind))
    proc = statistics.median(getattr(c, f"process_{kind}"))
    note = f"median of {len(c.cold)}; whole process {proc:.2f} s"
    return [what, f"{t:.2f} s", thr, "met" if t < limit else "NOT met", note]


def targets_report(
    all_results: list[tuple[Model, list[Result]]], cold: list[ColdResult], backend: str
) -> str:
    """The targets table: each target, what was measured, the threshold and met / NOT met."""
    by_key = {m.key: (m, rs) for m, rs in all_results}
    rows = [ratio_target(by_key.get(key), title, limit, backend)
            for key, title, limit in RATIO_TARGETS]
    rows += [start_target(cold, kind, limit, backend) for kind, limit in START_TARGETS]
    counts = {s: sum(r[3] == s for r in rows) for s in ("met", "NOT met", "not measured")}
    return (table(rows, ["target", "measured", "threshold", "status", "note"])
            + "\n\nratios: symgrad's median per-call time / jax's, from the same interleaved "
            "rounds;\n  symgrad is the first --backend. "
            + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".")


# ---- compile-time scaling ------------------------------------------------------------------------


def sizes_table(ks: list[int], backend: str, args: argparse.Namespace, skips: set[str]) -> str:
    """Compile time and instruction counts for MLP(k, [2k, 2k, 1]) at each k.

    Growth exponents compare each row with the previous one: log(t2/t1) / log(n2/n1), with n the
    final instruction count and t either the Python-side stages (trace to codegen) or the total;
    about 1 is linear, above 1 superlinear.
    """
    stages = ("trace", "autodiff", "passes", "codegen", "jit")
    head = ["k", "params", "traced", "final", "lowering", *[f"{s} s" for s in stages],
            "1st batch s", "total s", "exp(py)", "exp(total)"]
    rows: list[list[str]] = []
    prev: tuple[int, float, float] | None = None
    for k in ks:
        model = make_model(f"k{k}", k, [2 * k, 2 * k, 1], 100, args.seed)
        if reason := skip_reason(skips, f"symgrad:{backend}", model):
            rows.append([str(k), str(n_params(model.sizes)), "skipped", reason])
            continue
        log(f"   compiling MLP({k},[{2 * k},{2 * k},1]) with backend={backend} ...")
        try:
            t0 = time.perf_counter()
            call, info = setup_symgrad(model, backend)
            t_compile = time.perf_counter() - t0
            t1 = time.perf_counter()
            call()
            t_first = time.perf_counter() - t1
        except Exception as e:
            rows.append([str(k), str(n_params(model.sizes)), "FAILED", f"{type(e).__name__}: {e}"])
            continue
        st = info["stats"]
        nodes, secs = st.get("nodes", {}), st.get("seconds", {})
        final = int(nodes.get("final", 0))
        total = t_compile + t_first
        py = sum(secs.get(s, 0.0) for s in stages[:-1])
        exps = ["-", "-"]
        if prev is not None and final > prev[0] > 0:
            exps = [f"{math.log(a / b) / math.log(final / prev[0]):.2f}" if a > 0 and b > 0
                    else "-" for a, b in ((py, prev[1]), (total, prev[2]))]
        prev = (final, py, total)
        rows.append([
            str(k), str(n_params(model.sizes)), str(nodes.get("trace", "?")), str(final),
            str(st.get("lowering", "-")),
            *[f"{secs[s]:.3f}" if s in secs else "-" for s in stages],
            f"{t_first:.3f}", f"{total:.2f}", *exps,
        ])
        log(f"   ... {final} instructions, {total:.2f} s")
    return (table(rows, head) + "\n\ntraced/final: IR instructions after tracing / after "
            "autodiff and the passes (f.stats['nodes']).\nstage seconds: f.stats['seconds']; "
            "total = sg.compile + the first f.batch call.\nexp(py), exp(total): growth exponent "
            "of trace..codegen seconds / of the total against the previous row (1 = linear).")


# ---- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small models only (the under-load workload on the small model), few "
                        "rounds, one cold-start round (about a minute)")
    p.add_argument("--backend", default="numba",
                   help="symgrad backend, or a comma list to compare several in the same "
                        "interleaved run (the first is the reference); default: numba")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds per model (default 7, --quick 3)")
    p.add_argument("--target", type=float, default=None,
                   help="seconds a sample lasts at least (default 0.2, --quick 0.05)")
    p.add_argument("--cold-rounds", type=int, default=None,
                   help="cold/warm start pairs of fresh processes (default 3, --quick 1)")
    p.add_argument("--subset", type=int, default=10,
                   help="rows the interpreted engines run on the large model (default 10)")
    p.add_argument("--skip", action="append", default=[], metavar="WHAT",
                   help="contender, model or contender@model to skip (repeatable, comma list)")
    p.add_argument("--sizes", nargs="?", const="2,4,8,12", default=None, metavar="K,K,...",
                   help="only the compile-time scaling table for MLP(k,[2k,2k,1]) "
                        "(default k = 2,4,8,12)")
    p.add_argument("--warm-cache", action="store_true",
                   help="use symgrad's persistent cache as configured (default: a fresh empty "
                        "cache directory, so compile times are cold)")
    p.add_argument("--seed", type=int, default=1337)
    args = p.parse_args(argv)
    args.loadavg = os.getloadavg() if hasattr(os, "getloadavg") else None
    if args.rounds is None:
        args.rounds = 3 if args.quick else 7
    if args.target is None:
        args.target = 0.05 if args.quick else 0.2
    if args.cold_rounds is None:
        args.cold_rounds = 1 if args.quick else 3
    args.backends = list(dict.fromkeys(b.strip() for b in args.backend.split(",") if b.strip()))
    if not args.backends:
        p.error("--backend: name at least one backend")
    if args.rounds < 1 or args.subset < 1 or args.cold_rounds < 1:
        p.error("--rounds, --cold-rounds and --subset must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the tables; 1 if a contender failed."""
    args = parse_args(argv)
    skips = {s.strip() for item in args.skip for s in item.split(",") if s.strip()}
    names = list(dict.fromkeys([*CONTENDERS, *(c for c, _ in contenders(args.backends))]))
    for s in sorted(skips):
        c, _, m = s.partition("@")
        if c not in [*names, *MODELS] or (m and (m not in MODELS or c in MODELS)):
            print(f"bench.py: unknown --skip {s!r}; use a contender ({', '.join(names)}), "
                  f"a workload ({', '.join(MODELS)}) or contender@workload", file=sys.stderr)
            return 2
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))  # micrograd's recursive topo sort
    tmp_cache = None
    if not args.warm_cache:  # compile times from a cold persistent cache, not a previous run's
        tmp_cache = tempfile.mkdtemp(prefix="symgrad-bench-cache-")
        os.environ["SYMGRAD_CACHE_DIR"] = tmp_cache
    try:
        return _run(args, skips)
    finally:
        if tmp_cache is not None:
            shutil.rmtree(tmp_cache, ignore_errors=True)


def _run(args: argparse.Namespace, skips: set[str]) -> int:
    if args.sizes is not None:
        return _run_sizes(args, skips)
    all_results = [(m, run_model(m, args, skips, args.rounds))
                   for m in workloads(args.seed, args.quick)]
    cold = run_cold_start(args, skips)
    dist_report, dist_failed = run_distributed(args, skips)
    print(header(args, args.rounds))
    print()
    print(report(all_results), flush=True)
    print(f"\ncold start, backend={','.join(args.backends)}\n")
    print(cold_report(cold), flush=True)
    print("\ndistributed (dask)\n")
    print(dist_report, flush=True)
    print("\ntargets\n")
    print(targets_report(all_results, cold, args.backends[0]), flush=True)
    failed = any(r.error for _, rs in all_results for r in rs) or any(c.error for c in cold)
    return 1 if failed or dist_failed else 0


def run_distributed(args: argparse.Namespace, skips: set[str]) -> tuple[str, bool]:
    """The distributed workload (`distributed_bench.py`): its report and whether it failed."""
    spec = importlib.util.spec_from_file_location("distributed_bench",
                                                  BENCH_DIR / "distributed_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run(args, skips, sys.modules[__name__])


def _run_sizes(args: argparse.Namespace, skips: set[str]) -> int:
    try:
        ks = [int(k) for k in args.sizes.split(",")]
    except ValueError:
        print(f"bench.py: --sizes expects integers like 2,4,8,12, got {args.sizes!r}",
              file=sys.stderr)
        return 2
    print(header(args, args.rounds))
    failed = False
    for backend in args.backends:
        print(f"\ncompile-time scaling, MLP(k,[2k,2k,1]), backend={backend}\n")
        text = sizes_table(ks, backend, args, skips)
        failed |= "FAILED" in text
        print(text, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

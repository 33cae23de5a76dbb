"""`compile` and the `Compiled` object users hold: calls, batch, forward, ir, source, stats.

Imports `engine`, `ir`, `layout`, `autodiff`, `passes`, `pipeline`, `cache`, `jit` and the
`executors` registry (never a concrete executor). Arguments are validated here, before any
compiled code runs, so a user sees a clear ValueError/TypeError naming the argument, never a
Numba typing error; the executor the registry chose runs the kernels. Compiled objects pickle
as their IR, leaves' labels and values (`Program.__reduce__`); `Compiled.save` writes a
standalone module through `export`, imported when first used.
"""

from __future__ import annotations

import copy
import html
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import cache, executors, jit
from .autodiff import name_gradients, value_and_grad
from .engine import Value
from .ir import Atom, Const, Func, Instr, Var, atom_text, evaluate, instr_text, names, verify
from .layout import Kernel, Layout
from .passes import optimize as run_passes
from .pipeline import back_end, compiling, debug, debug_level, front_end, record_stage, stage
from .trace import Traced

_PICKLE_FORMAT = 1  # the layout of a pickled compiled object's state (`Program.__reduce__`)

__all__ = ["Compiled", "Program", "compile", "is_dask"]

REDUCTIONS = ("sum", "mean", "none")
_PREPARING = {
    "lines": "Numba is compiling the generated code (kept in the disk cache for next time)",
    "tape": "loading the tape interpreter (compiled once per machine, then cached)",
}
_F64 = np.dtype(np.float64)


def compile(
    outputs: Value | Iterable[Value],
    wrt: Sequence[Value] | None = None,
    inputs: Sequence[Value] = (),
    *,
    backend: str = "numba",
    optimize: bool = True,
    name: str | None = None,
) -> Compiled:
    """Compile a Value graph into one function returning its value and gradient.

    Args:
        outputs: a Value, or a list of Values (then the gradient is the Jacobian).
        wrt: the leaves to differentiate by, in order (the ``params`` of each call). By default
            every leaf that is not in `inputs` and was not made from a Python number.
        inputs: leaves whose value changes per call (the ``inputs`` of each call).
        backend: "numba" (the default): JIT-compiled line by line, or, for graphs of more than
            `LINE_LIMIT` instructions, lowered to a tape run by an interpreter compiled once;
            "tape": always the tape; "vector": the tape run by NumPy a whole batch at a time,
            with each dense layer as one matrix product (BLAS): the fastest on large batches
            of big models, but sums may be added in another order, so results agree with the
            other backends to rounding (a few 1e-15 of the largest term) rather than exactly;
            "python": the line-by-line source, not JIT'd (readable, debuggable); "lines": always
            line by line under Numba. ``f.stats["lowering"]`` says which lowering was used and
            ``f.stats["executor"]`` which executor runs it (``f.executor``).
        optimize: run the passes (folding, simplification, CSE, DCE) before generating code.
        name: the generated function's name (sanitised); default "f".
    Returns:
        a `Compiled` function object. Leaves in neither `wrt` nor `inputs` are frozen constants.
    """
    with compiling():
        traced, stats, t0 = front_end(outputs, wrt, inputs, backend, name)
        t = time.perf_counter()
        stage(f"differentiating {len(traced.func.body):,} instructions (reverse mode)")
        grad_func = value_and_grad(traced.func, len(traced.wrt))
        record_stage(stats, "autodiff", grad_func, t)
        grad_func = back_end(grad_func, stats, optimize)
        grad_func = verify(name_gradients(grad_func, len(traced.outputs), len(traced.wrt)))
        fwd_func = verify(run_passes(traced.func)[0] if optimize else traced.func)
        return Compiled(traced, grad_func, fwd_func, backend, stats, t0)


class Program:
    """What every compiled function object shares: its leaves, validation, module and stats.

    Subclasses (`Compiled`, and the higher-order objects) choose the kernels and the call API.
    """

    def __init__(
        self, traced: Traced, kernels: list[Kernel], backend: str, stats: dict[str, Any],
        t0: float,
    ) -> None:
        self.backend = backend
        self.traced_ir = traced.func
        self._wrt = traced.wrt
        self._inputs = traced.inputs
        self.n_params = len(traced.wrt)
        self.n_inputs = len(traced.inputs)
        self.n_out = len(traced.outputs)
        self._pshape, self._ishape = (self.n_params,), (self.n_inputs,)
        self._gshape = (self.n_out, self.n_params)
        self._callers: dict[str, Callable[..., None]] = {}
        self.stats = stats
        self.name = traced.func.name
        header = (
            f"generated by symgrad from {self.name}: {self.n_params} parameter(s), "
            f"{self.n_inputs} input(s), {self.n_out} output(s)"
        )
        t = time.perf_counter()
        kind = executors.select(backend, kernels)
        how = kind.lowering if kind.name == kind.lowering else f"{kind.lowering} ({kind.name})"
        stage(f"lowering {len(kernels[0].func.body):,} instructions to {how}")
        self.executor: executors.Executor = kind(kernels, self.name, header)
        self.lowering = kind.lowering
        stats["lowering"] = kind.lowering
        stats["executor"] = kind.name
        self.source = self.executor.source
        stats["seconds"]["codegen"] = time.perf_counter() - t
        if debug_level() >= 2:
            debug(f"generated source of {self.name} ({self.lowering})", self.source)
        t = time.perf_counter()
        before = jit.CACHE_EVENTS.copy()
        stage(_PREPARING.get(kind.name, "preparing the executor"))
        self.executor.prepare()  # JIT what the first call needs now: compile time is paid here
        stats["seconds"]["jit"] = time.perf_counter() - t
        stats.update(self.executor.stats)
        d = cache.cache_dir()
        stats["cache"] = {"dir": str(d) if d else None, **(jit.CACHE_EVENTS - before)}
        stats["seconds"]["total"] = time.perf_counter() - t0

    @property
    def ready(self) -> bool:
        """Whether the compiled code is built. Big graphs' interpreter is built in the
        background the first time (Numba compiles it for seconds, once per machine); until
        then small calls run the same kernels as plain Python, with the same results."""
        return self.executor.ready

    def wait(self) -> None:
        """Block until the compiled code is built (see `ready`); benchmarks call this first."""
        self.executor.wait()

    @property
    def wrt(self) -> tuple[Value, ...]:
        """The `wrt` leaves (the parameters), in parameter order."""
        return self._wrt

    @property
    def inputs(self) -> tuple[Value, ...]:
        """The `inputs` leaves, in input order."""
        return self._inputs

    @property
    def wrt_names(self) -> list[str]:
        """Labels of the `wrt` leaves, in parameter order."""
        return [v.label for v in self._wrt]

    @property
    def input_names(self) -> list[str]:
        """Labels of the `inputs` leaves, in input order."""
        return [v.label for v in self._inputs]

    def current_params(self) -> np.ndarray:
        """The `wrt` leaves' current ``.data``, the default `params`."""
        return np.array([v.data for v in self._wrt], dtype=np.float64)

    def current_inputs(self) -> np.ndarray:
        """The `inputs` leaves' current ``.data``, the default `inputs`."""
        return np.array([v.data for v in self._inputs], dtype=np.float64)

    # ---- persistence: pickle and copy ----------------------------------------------------------

    def _ir_funcs(self) -> tuple[Func, ...]:
        """The IR functions the constructor takes after the traced graph."""
        return (self.ir,)  # type: ignore[attr-defined]  # every subclass sets `ir`

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as what the object was built from: the IR, the leaves' labels and current
        values, the backend and the stats. Generated code, Numba's machine code and the
        Value graph do not travel: loading rebuilds the executor from the IR, through the
        persistent cache when it is on (no JIT when this machine compiled the same model)."""
        leaves = {k: [(v.label, v.data) for v in vs]
                  for k, vs in (("wrt", self._wrt), ("inputs", self._inputs))}
        state = {"format": _PICKLE_FORMAT, "traced_ir": self.traced_ir, "ir": self._ir_funcs(),
                 "backend": self.backend, "stats": self.stats, "n_out": self.n_out, **leaves}
        return (_restore, (type(self), state))

    def __copy__(self) -> Program:
        """A shallow copy: the same leaves, IR and compiled code."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__.pop("_symgrad_shipped", None)  # symgrad.distributed's handle is per object
        new._callers = dict(self._callers)
        return new

    def __deepcopy__(self, memo: dict[int, Any]) -> Program:
        """A copy with leaves of its own and its own stats, sharing the IR and the compiled
        code, which never change. The leaves are copied through `memo`: in a deepcopy of a
        structure holding the model too (``copy.deepcopy((model, f))``), the copy's `wrt` and
        `inputs` are the copied model's leaves, in either order; alone, new leaves with the
        labels and current values (and grads) of these."""
        new = self.__copy__()
        memo[id(self)] = new
        new._wrt = tuple(copy.deepcopy(v, memo) for v in self._wrt)
        new._inputs = tuple(copy.deepcopy(v, memo) for v in self._inputs)
        new.stats = copy.deepcopy(self.stats, memo)
        return new

    def _run(self, kernel: str, batch: executors.BatchMode | None, *arrays: np.ndarray) -> None:
        try:
            if batch is not None:  # the common case first
                self.executor.batch(kernel, arrays, batch)
                return
            self._dispatch(kernel, batch, arrays)
        except TypeError:
            # float64 arrays of the right shape are passed as they are; a compiled kernel refuses
            # strided or read-only ones (a TypeError before anything runs): pass copies
            ready = tuple(_kernel_ready(a) for a in arrays)
            if all(r is a for r, a in zip(ready, arrays, strict=True)):
                raise
            self._dispatch(kernel, batch, ready)

    def _dispatch(self, kernel: str, batch: executors.BatchMode | None,
                  arrays: tuple[np.ndarray, ...]) -> None:
        if batch is not None:
            self.executor.batch(kernel, arrays, batch)
            return
        fn = self._callers.get(kernel)
        if fn is None:
            fn = self._callers[kernel] = self.executor.caller(kernel)
        fn(*arrays)

    def _params(self, params: Any, what: str = "params") -> np.ndarray:
        if type(params) is np.ndarray and params.dtype is _F64 and params.shape == self._pshape:
            return params  # the common case, checked cheaply: see _run
        if params is None:
            return self.current_params()
        return _vector(params, self.n_params, what, "len(wrt)")

    def _row(self, inputs: Any) -> np.ndarray:
        if type(inputs) is np.ndarray and inputs.dtype is _F64 and inputs.shape == self._ishape:
            return inputs
        if inputs is None:
            return self.current_inputs()
        return _vector(inputs, self.n_inputs, "inputs", "len(inputs)")

    def _matrix(self, X: Any) -> np.ndarray:
        if (type(X) is np.ndarray and X.dtype is _F64 and X.ndim == 2
                and X.shape[1] == self.n_inputs and X.shape[0] > 0):
            return X
        if is_dask(X):  # Compiled.batch and batch_forward take dask arrays before this
            raise TypeError(
                f"X: {type(self).__name__} takes dask arrays in batch and batch_forward only "
                "(here it would gather every block into this process): pass a NumPy array, "
                "e.g. X.compute()"
            )
        a = _floats(X, "X")
        if a.ndim != 2:
            raise ValueError(
                f"X: expected a 2-D array of shape (N, {self.n_inputs}), got shape {a.shape}"
            )
        if a.shape[1] != self.n_inputs:
            raise ValueError(
                f"X: expected {self.n_inputs} column(s) (one per input), got shape {a.shape}"
            )
        if a.shape[0] == 0:
            raise ValueError("X: the batch is empty (0 rows)")
        return _kernel_ready(a)

    @staticmethod
    def _check_reduce(reduce: str) -> None:
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")

    def __repr__(self) -> str:
        """One line: name, outputs, parameters and inputs (by IR name), instructions, backend
        and lowering, compile seconds."""
        outs, params, ins = self._names()
        n = self.stats["nodes"].get("final", 0)
        sec = self.stats["seconds"].get("total", 0.0)
        return (
            f"<{type(self).__name__} {self.name}: {_listing('output', outs)}, "
            f"{_listing('param', params)}, {_listing('input', ins)}, {n:,} instructions, "
            f"backend {self.backend}, lowering {self.lowering}, compiled in {sec:.2f} s>"
        )

    def _repr_html_(self) -> str:
        """For notebooks: the summary as a table, the IR and the generated source folded (for a
        big model, their first and last lines: ``print(f.ir)`` and ``print(f.source)`` show
        all of them)."""
        outs, params, ins = self._names()
        stats = self.stats
        rows = [
            ("outputs", _listing("output", outs, 20)),
            ("parameters (wrt)", _listing("param", params, 20)),
            ("inputs", _listing("input", ins, 20)),
            ("instructions", f"{stats['nodes'].get('trace', 0):,} traced, "
                             f"{stats['nodes'].get('final', 0):,} after differentiation and "
                             "the passes"),
            ("backend", f"{self.backend} (lowering {self.lowering}, executor "
                        f"{stats.get('executor', '?')})"),
            ("compiled in", f"{stats['seconds'].get('total', 0.0):.2f} s"),
        ]
        table = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                        f"<td style='text-align:left'>{html.escape(v)}</td></tr>" for k, v in rows)
        parts = [f"<b>{html.escape(type(self).__name__)} {html.escape(self.name)}</b>",
                 f"<table>{table}</table>"]
        for title, text, attr in (("IR", str(getattr(self, "ir", "")), "ir"),
                                  ("generated source", self.source, "source")):
            shown, note = _excerpt(text, f"print(f.{attr})")
            parts.append(f"<details><summary>{title}{html.escape(note)}</summary>"
                         f"<pre>{html.escape(shown)}</pre></details>")
        return "\n".join(parts)

    def _names(self) -> tuple[list[str], list[str], list[str]]:
        """The outputs', parameters' and inputs' names, as the printed IR has them."""
        func = self.traced_ir
        nm = names(func)
        outs = [atom_text(r, nm) for r in func.results]
        args = [nm[a] for a in func.args]
        return outs, args[: self.n_params], args[self.n_params:]


def _restore(cls: type[Program], state: dict[str, Any]) -> Program:
    """A pickled compiled object, rebuilt (see `Program.__reduce__`).

    Its `wrt` and `inputs` are fresh leaves carrying the labels and the values they had when
    it was pickled, so ``params=None`` and ``inputs=None`` mean those values; they belong to
    no Value graph (the model's own leaves stay in the process that compiled it).
    """
    if not isinstance(state, dict) or state.get("format") != _PICKLE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"cannot load a pickled {cls.__name__}: its state has format "
                         f"{found!r}, this symgrad reads format {_PICKLE_FORMAT}")
    wrt = tuple(Value(d, label=lab) for lab, d in state["wrt"])
    inputs = tuple(Value(d, label=lab) for lab, d in state["inputs"])
    # the constructors read only how many outputs there are
    outputs = tuple(Value(math.nan) for _ in range(state["n_out"]))
    traced = Traced(state["traced_ir"], wrt, inputs, outputs)
    stats = state["stats"]
    seconds = dict(stats["seconds"])
    t0 = time.perf_counter()
    with compiling():
        stage("loading a pickled compiled function", traced.func.name)
        obj = cls(traced, *state["ir"], state["backend"], stats, t0)  # type: ignore[call-arg]
    # the compile's own seconds, and this load's; stats["cache"] says how the load went
    obj.stats["seconds"] = {**seconds, "load": time.perf_counter() - t0}
    return obj


# a notebook keeps what a cell displays: a big model's IR or source (megabytes) is shown as
# its first and last lines
HTML_HEAD, HTML_TAIL = 300, 100


def _excerpt(text: str, how: str) -> tuple[str, str]:
    """`text` whole when short, else its first `HTML_HEAD` and last `HTML_TAIL` lines around a
    line saying how many are left out and that `how` shows them; and a note for the title."""
    lines = text.splitlines()
    if len(lines) <= HTML_HEAD + HTML_TAIL:
        return text, ""
    left = len(lines) - HTML_HEAD - HTML_TAIL
    gap = f"... {left:,} lines not shown here: {how} shows all {len(lines):,} ..."
    shown = "\n".join([*lines[:HTML_HEAD], gap, *lines[-HTML_TAIL:]])
    return shown, f" ({len(lines):,} lines: the first {HTML_HEAD} and the last {HTML_TAIL})"


def _listing(what: str, items: list[str], show: int = 4) -> str:
    """``3 params (w1, w2, b)``: the count and the first names."""
    head = f"{len(items)} {what}{'' if len(items) == 1 else 's'}"
    if not items:
        return head
    shown = ", ".join(items[:show]) + (", ..." if len(items) > show else "")
    return f"{head} ({shown})"


class Compiled(Program):
    """A compiled value-and-gradient function of a Value graph.

    Call it as ``value, grad = f(params, inputs)``; see `compile`. Attributes: `ir` (the optimised
    IR, printable), `forward_ir`, `traced_ir`, `source` (the generated Python module), `stats`,
    `backend`, `wrt_names`, `input_names`, `n_out`.

    It pickles and deep-copies (the IR travels, and the executor is rebuilt through the
    persistent cache; see `Program.__reduce__`), and `save` writes it as a standalone module.
    """

    def __init__(
        self, traced: Traced, grad_func: Func, fwd_func: Func, backend: str,
        stats: dict[str, Any], t0: float,
    ) -> None:
        self.ir = grad_func
        self.forward_ir = fwd_func
        P, n_in, n_out = len(traced.wrt), len(traced.inputs), len(traced.outputs)
        args = (("params", P), ("inputs", n_in))
        self._vg = f"{traced.func.name}_value_and_grad"
        self._fw = f"{traced.func.name}_forward"
        grad_layout = Layout(
            args, (("out", (n_out,)), ("grad", (n_out, P))),
            accumulate=frozenset({"grad"}), per_row=frozenset({"inputs"}),
        )
        fwd_layout = Layout(args, (("out", (n_out,)),), per_row=frozenset({"inputs"}))
        kernels = [Kernel(grad_func, self._vg, grad_layout),
                   Kernel(fwd_func, self._fw, fwd_layout)]
        super().__init__(traced, kernels, backend, stats, t0)

    def _ir_funcs(self) -> tuple[Func, ...]:
        return (self.ir, self.forward_ir)

    def save(self, path: str | os.PathLike[str], params: Any = None) -> Path:
        """Write this function as one standalone Python module that needs numpy and numba only.

        The module defines ``value_and_grad(params, inputs)``, ``forward(params, inputs)``,
        ``batch(params, X, reduce="sum")`` and ``batch_forward(params, X)``, which check their
        arguments as this object does and give its results bit for bit, and ``WRT``,
        ``INPUTS`` (the argument names), ``PARAMS`` and ``INPUT_VALUES`` (the defaults of
        ``params`` and ``inputs``). It is symgrad's own code for this lowering (the generated
        kernels, or the tape interpreter and the model's plans), copied in; see
        `symgrad.export`.

        Args:
            path: the file to write; its name must end in ``.py`` and the rest be a module name
                ``import`` takes that hides no module (not a keyword, not ``numpy``, not a
                standard library module such as ``base64``): a ValueError otherwise.
            params: the values the module holds as ``PARAMS`` (its default `params`), e.g.
                trained ones; default: the `wrt` leaves' current ``.data``.
        Returns:
            the path written.
        """
        from .export import save

        return save(self, path, self._params(params))

    def debug(self, params: Any = None, inputs: Any = None) -> str:
        """Where nan and inf come from at `params`/`inputs`, as a readable report.

        Runs the IR with the reference rules (no compiled code). Names the params and inputs
        that are not finite (by label), then for the forward pass and for the value and gradient:
        the first instruction that made a nan or inf from finite operands, the first that turned
        an inf into a nan (``inf * 0``, ``inf - inf``), and the results that are not finite.
        Says "all values finite" only when every argument, instruction and result is.
        """
        p = self._params(params)
        x = self._row(inputs)
        lines = [
            _nonfinite_leaves(what, leaves, values)
            for what, leaves, values in (("params", self._wrt, p), ("inputs", self._inputs, x))
        ]
        lines = [line for line in lines if line]
        args = [*p.tolist(), *x.tolist()]
        one = self.n_out == 1
        values = ["value" if one else f"value[{k}]" for k in range(self.n_out)]
        grads = [f"d/d({w})" if one else f"d(output {k})/d({w})"
                 for k in range(self.n_out) for w in self._debug_labels(self._wrt, "params")]
        for what, func, roles in (("forward", self.forward_ir, values),
                                  ("value and gradient", self.ir, values + grads)):
            story = _nonfinite_story(func, args, roles)
            lines.append(f"{what}: {story[0]}")
            lines += [f"  {s}" for s in story[1:]]
        return "\n".join(lines)

    @staticmethod
    def _debug_labels(leaves: Sequence[Value], what: str) -> list[str]:
        return [v.label or f"{what}[{i}]" for i, v in enumerate(leaves)]

    def __call__(self, params: Any = None, inputs: Any = None) -> tuple[Any, np.ndarray]:
        """Value and gradient at `params` and `inputs` (each defaults to the leaves' ``.data``).

        Returns:
            ``(value, grad)``: a float and a ``(len(wrt),)`` array for one output; an
            ``(n_out,)`` array and the ``(n_out, len(wrt))`` Jacobian for several.
        """
        # the common case inline (float64 arrays of the right shapes): this is the hot path
        p = params if (type(params) is np.ndarray and params.dtype is _F64
                       and params.shape == self._pshape) else self._params(params)
        x = inputs if (type(inputs) is np.ndarray and inputs.dtype is _F64
                       and inputs.shape == self._ishape) else self._row(inputs)
        out = np.empty(self.n_out)
        grad = np.zeros(self._gshape)
        fn = self._callers.get(self._vg)
        try:
            fn(p, x, out, grad)  # type: ignore[misc]
        except TypeError:  # not built yet (None), or arrays a kernel refuses: see _run
            self._run(self._vg, None, p, x, out, grad)
        if self.n_out == 1:
            return float(out[0]), grad[0]
        return out, grad

    def forward(self, params: Any = None, inputs: Any = None) -> Any:
        """The value only (a float, or an ``(n_out,)`` array for several outputs)."""
        p = self._params(params)
        x = self._row(inputs)
        out = np.empty(self.n_out)
        self._run(self._fw, None, p, x, out)
        return float(out[0]) if self.n_out == 1 else out

    def batch(self, params: Any, X: Any, reduce: str = "sum") -> tuple[np.ndarray, np.ndarray]:
        """Values and gradients over the rows of `X`, looping (in parallel) inside compiled code.

        Args:
            params: ``len(wrt)`` floats, or None for the leaves' current ``.data``.
            X: an ``(N, len(inputs))`` array, one example a row; or a dask array chunked
                along rows only (see `symgrad.distributed`).
            reduce: "sum" (gradients summed over rows), "mean" (averaged) or "none" (one per
                row). "sum" and "mean" use memory proportional to the parameters, not to N.
        Returns:
            ``(values, grad)``: values ``(N,)`` (``(N, n_out)`` for several outputs); grad
            ``(len(wrt),)`` for "sum"/"mean", ``(N, len(wrt))`` for "none" (with an ``n_out`` axis
            after N for several outputs). For a dask `X` both are lazy dask arrays: nothing
            runs until ``dask.compute(values, grad)``, on the active dask scheduler.
        """
        if type(X) is not np.ndarray and is_dask(X):
            from . import distributed

            return distributed.batch(self, params, X, reduce)
        if reduce != "sum":
            self._check_reduce(reduce)
        p = self._params(params)
        Xa = self._matrix(X)
        n = Xa.shape[0]
        values = np.empty((n, self.n_out))
        if reduce == "none":
            grads = np.zeros((n, self.n_out, self.n_params))
            self._run(self._vg, "rows", p, Xa, values, grads)
            g = grads[:, 0, :] if self.n_out == 1 else grads
        else:
            acc = np.zeros(self._gshape)
            self._run(self._vg, "sum", p, Xa, values, acc)
            if reduce == "mean":
                acc /= n
            g = acc[0] if self.n_out == 1 else acc
        return (values[:, 0] if self.n_out == 1 else values), g

    def sum_in_chunks(self, params: Any, X: Any, n_chunks: int) -> tuple[np.ndarray, np.ndarray]:
        """``batch(params, X, "sum")`` with the rows summed in `n_chunks` chunks (of
        `symgrad.layout.chunk_rows`) instead of ``layout.n_chunks(N)``, on one thread.

        For callers that split a batch themselves (`symgrad.distributed`): each part summed as
        one chunk, the parts' sums then added in order, is ``batch`` on the whole when the parts
        are its chunks (`symgrad.layout.chunk_sizes`).
        """
        if isinstance(n_chunks, bool) or not isinstance(n_chunks, int) or n_chunks < 1:
            raise ValueError(f"n_chunks: expected a positive int, got {n_chunks!r}")
        p = self._params(params)
        Xa = self._matrix(X)
        values = np.empty((Xa.shape[0], self.n_out))
        acc = np.zeros(self._gshape)
        arrays = _ready(p, Xa, values, acc)
        self.executor.batch(self._vg, arrays, "sum", n_chunks)
        return (values[:, 0] if self.n_out == 1 else values), (acc[0] if self.n_out == 1 else acc)

    def batch_forward(self, params: Any, X: Any) -> np.ndarray:
        """Values only over the rows of `X`: ``(N,)``, or ``(N, n_out)`` for several outputs.

        A dask array `X` gives a lazy dask array, as `batch` does."""
        if type(X) is not np.ndarray and is_dask(X):
            from . import distributed

            return distributed.batch_forward(self, params, X)
        p = self._params(params)
        Xa = self._matrix(X)
        values = np.empty((Xa.shape[0], self.n_out))
        self._run(self._fw, "rows", p, Xa, values)
        return values[:, 0] if self.n_out == 1 else values


def is_dask(X: Any) -> bool:
    """Whether `X` is a dask object (checked by its class's module: dask is not imported)."""
    return type(X).__module__.startswith("dask")


def _nonfinite_leaves(what: str, leaves: Sequence[Value], values: np.ndarray) -> str:
    """``params: not finite: w1 = nan, ...`` (by index and label), or "" when all are finite."""
    bad = [f"[{i}] {v.label or '(unlabelled)'} = {float(values[i])!r}"
           for i, v in enumerate(leaves) if not np.isfinite(values[i])]
    return f"{what}: not finite: {', '.join(bad)}" if bad else ""


def _nonfinite_story(func: Func, args: Sequence[float], roles: Sequence[str]) -> list[str]:
    """Where `func`'s nan and inf come from at `args`: the first instruction that makes one from
    finite operands, the first that turns an inf into a nan, the non-finite arguments it reads
    and its non-finite results (named by `roles`). "all values finite" only when nothing is."""
    env: dict[Var, float] = {}
    evaluate(func, args, env)
    nm = names(func)

    def val(a: Atom) -> float:
        return a.value if isinstance(a, Const) else env[a]

    def operands(ins: Instr) -> str:
        return ", ".join(f"{atom_text(a, nm)} = {val(a)!r}" for a in ins.args)

    facts: list[str] = []
    born = inf_to_nan = False
    for i, ins in enumerate(func.body):
        v = env[ins.out]
        if math.isfinite(v):
            continue
        xs = [val(a) for a in ins.args]
        where = f"instruction {i} `{instr_text(ins, nm)}`"
        if not born and all(math.isfinite(x) for x in xs):
            born = True
            facts.append(f"{where} gives {v!r} from {operands(ins)}")
        elif not inf_to_nan and math.isnan(v) and not any(math.isnan(x) for x in xs):
            inf_to_nan = True
            facts.append(f"{where} turns inf into nan: gives {v!r} from {operands(ins)}")
    used = {a for ins in func.body for a in ins.args} | set(func.results)
    bad_args = [f"{nm[a]} = {env[a]!r}" for a in func.args
                if a in used and not math.isfinite(env[a])]
    if bad_args:
        facts.append(f"non-finite arguments read: {', '.join(bad_args)}")
    bad = [f"{role} = {val(r)!r}" for role, r in zip(roles, func.results, strict=True)
           if not math.isfinite(val(r))]
    if bad:
        facts.append(f"results not finite: {', '.join(bad)}")
    elif facts:
        facts.append("every result is finite")
    return facts or ["all values finite"]


def _floats(a: Any, what: str) -> np.ndarray:
    if isinstance(a, (str, bytes)):
        raise TypeError(f"{what}: expected numbers, got {type(a).__name__} {a!r:.40}")
    if isinstance(a, Mapping):
        raise TypeError(
            f"{what}: expected a sequence of floats, got a {type(a).__name__}; pass a list of "
            "floats in the order of the leaves"
        )
    if isinstance(a, (set, frozenset)):
        raise TypeError(f"{what}: expected a sequence of floats, got a {type(a).__name__}, "
                        "which has no order; pass a list")
    if _has_bool(a):
        raise TypeError(
            f"{what}: expected floats, got booleans (True/False would silently be 1.0/0.0); "
            "convert them explicitly, e.g. np.asarray(x, dtype=float)"
        )
    if isinstance(a, Value) or (
        isinstance(a, (list, tuple)) and any(isinstance(v, Value) for v in a)
    ):
        raise TypeError(f"{what}: expected floats, got Value objects (pass their .data)")
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what}: could not read as an array of floats ({e})") from None
    if arr.dtype.kind not in "iuf":
        example = f" (e.g. {arr.flat[0]!r:.40})" if arr.size else ""
        raise TypeError(
            f"{what}: expected real numbers, got an array of dtype {arr.dtype}{example}"
        )
    return np.asarray(arr, dtype=np.float64)


def _has_bool(a: Any) -> bool:
    """A bool array, or a bool among a list's items (or its rows' items)."""
    if isinstance(a, (bool, np.bool_)):
        return True
    if isinstance(a, np.ndarray):
        return a.dtype.kind == "b"
    if isinstance(a, (list, tuple)):
        return any(_has_bool(v) if isinstance(v, (list, tuple, np.ndarray))
                   else isinstance(v, (bool, np.bool_)) for v in a)
    return False


def _vector(a: Any, n: int, what: str, expected: str) -> np.ndarray:
    arr = _floats(a, what)
    if arr.ndim != 1:
        raise ValueError(
            f"{what}: expected a 1-D sequence of {n} floats ({expected}), got shape {arr.shape}"
        )
    if arr.shape[0] != n:
        raise ValueError(f"{what}: expected {n} value(s) ({expected}), got {arr.shape[0]}")
    return _kernel_ready(arr)


def _ready(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Arrays as every executor takes them (see `_kernel_ready`)."""
    return tuple(_kernel_ready(a) for a in arrays)


def _kernel_ready(a: np.ndarray) -> np.ndarray:
    """C-contiguous, aligned and writeable (Numba's signatures take only writeable arrays, and
    read-only ones, e.g. from np.frombuffer or a memory map, are common): copied if need be."""
    return np.require(a, np.float64, ["C_CONTIGUOUS", "ALIGNED", "WRITEABLE"])

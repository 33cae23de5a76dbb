"""`compile` and the `Compiled` object users hold: calls, batch, forward, ir, source, stats.

Imports every stage above it: trace -> autodiff -> passes -> codegen. Arguments are validated
here, before any compiled code runs, so a user sees a clear ValueError/TypeError naming the
argument, never a Numba typing error.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from . import cache, codegen, tape, vector
from .autodiff import name_gradients, value_and_grad
from .engine import Value, topological_order
from .ir import Const, Func, Var, atom_text, evaluate, first_nonfinite, instr_text, names, verify
from .passes import optimize as run_passes
from .trace import Traced, as_outputs, trace

__all__ = ["Compiled", "Program", "compile"]

REDUCTIONS = ("sum", "mean", "none")


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
            "python": the line-by-line source, not JIT'd (readable, debuggable).
            ``f.stats["lowering"]`` says which lowering was used.
        optimize: run the passes (folding, simplification, CSE, DCE) before generating code.
        name: the generated function's name (sanitised); default "f".
    Returns:
        a `Compiled` function object. Leaves in neither `wrt` nor `inputs` are frozen constants.
    """
    with gc_paused():
        traced, stats, t0 = front_end(outputs, wrt, inputs, backend, name)
        t = time.perf_counter()
        grad_func = value_and_grad(traced.func, len(traced.wrt))
        _stage(stats, "autodiff", grad_func, t)
        grad_func = back_end(grad_func, stats, optimize)
        grad_func = verify(name_gradients(grad_func, len(traced.outputs), len(traced.wrt)))
        fwd_func = verify(run_passes(traced.func)[0] if optimize else traced.func)
        return Compiled(traced, grad_func, fwd_func, backend, stats, t0)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: compiling allocates many small objects and no
    cycles, and collections triggered by the allocations made the passes superlinear."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def front_end(
    outputs: Value | Iterable[Value], wrt: Sequence[Value] | None, inputs: Sequence[Value],
    backend: str, name: str | None,
) -> tuple[Traced, dict[str, Any], float]:
    """Validate what every compiling entry point takes, pick the default `wrt`, and trace.

    Returns:
        the traced graph, a fresh `stats` dict (with the trace stage) and the start time.
    """
    if backend not in codegen.BACKENDS:
        raise ValueError(f"backend must be one of {codegen.BACKENDS}, got {backend!r}")
    outs = as_outputs(outputs)
    inputs = _leaf_list(inputs, "inputs")
    if wrt is None:
        given = {id(v) for v in inputs}
        wrt = [
            v for v in topological_order(outs)
            if not v._prev and not v._lit and id(v) not in given
        ]
    wrt = _leaf_list(wrt, "wrt")
    stats: dict[str, Any] = {"backend": backend, "nodes": {}, "seconds": {}}
    t0 = time.perf_counter()
    traced = trace(outs, wrt, inputs, name=_func_name(name))
    _stage(stats, "trace", traced.func, t0)
    return traced, stats, t0


def back_end(func: Func, stats: dict[str, Any], optimize: bool) -> Func:
    """Run the passes (when `optimize`), recording instruction counts and seconds in `stats`."""
    if debug_level() >= 1:
        _debug(f"before the passes ({len(func.body)} instructions)", func)
    if optimize:
        t = time.perf_counter()
        hook = (lambda name, f: _debug(f"after {name}", f)) if debug_level() >= 1 else None
        func, log = run_passes(func, on_pass=hook)
        for pname, n, _sec in log:
            stats["nodes"].setdefault(pname, n)  # after the first round of each pass
        stats["passes"] = log
        stats["seconds"]["passes"] = time.perf_counter() - t
    stats["nodes"]["final"] = len(func.body)
    return verify(func)


def debug_level() -> int:
    """``SYMGRAD_DEBUG``: 1 prints the IR after every pass, 2 also the generated source."""
    try:
        return int(os.environ.get("SYMGRAD_DEBUG", "0"))
    except ValueError:
        return 0


def _debug(title: str, text: object) -> None:
    print(f"# symgrad: {title}\n{text}\n", file=sys.stderr)


def _stage(stats: dict[str, Any], stage: str, func: Func, t0: float) -> None:
    stats["nodes"][stage] = len(func.body)
    stats["seconds"][stage] = time.perf_counter() - t0


def _func_name(name: str | None) -> str:
    from .ir import sanitize

    if name is None:
        return "f"
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    return sanitize(name) or "f"


def _leaf_list(leaves: Any, what: str) -> list[Value]:
    if isinstance(leaves, Value):
        return [leaves]
    if isinstance(leaves, (str, bytes)) or not isinstance(leaves, Iterable):
        raise TypeError(f"{what}: expected a list of Value leaves, got {type(leaves).__name__}")
    return list(leaves)


# graphs with more instructions than this are not compiled line by line (Numba's compile time
# grows faster than linearly with function length) but lowered to a tape
LINE_LIMIT = 1500


def _lowering(backend: str, func: Func) -> str:
    if backend in ("tape", "vector"):
        return "tape"
    if backend == "numba" and len(func.body) > LINE_LIMIT:
        return "tape"
    return "lines"


class Program:
    """What every compiled function object shares: its leaves, validation, module and stats.

    Subclasses (`Compiled`, and the higher-order objects) choose the kernels and the call API.
    """

    def __init__(
        self, traced: Traced, kernels: list[tuple[Func, str, codegen.Layout]], backend: str,
        stats: dict[str, Any], t0: float,
    ) -> None:
        self.backend = backend
        self.traced_ir = traced.func
        self._wrt = traced.wrt
        self._inputs = traced.inputs
        self.n_params = len(traced.wrt)
        self.n_inputs = len(traced.inputs)
        self.n_out = len(traced.outputs)
        self.stats = stats
        self.name = traced.func.name
        self.lowering = _lowering(backend, kernels[0][0])
        stats["lowering"] = self.lowering
        self._layouts = {name: lay for _, name, lay in kernels}
        t = time.perf_counter()
        if self.lowering == "tape":
            self._module: codegen.Module | None = None
            counts = {name: (tape.n_uniform(lay), tape.n_assigned(lay)) for _, name, lay in kernels}
            self._tapes = {name: tape.lower(func, *counts[name]) for func, name, _ in kernels}
            if backend == "vector":  # plan now (inside compile's gc pause), not on first call
                extra = [vector.plan(tp, *counts[n]).describe() for n, tp in self._tapes.items()]
            else:
                extra = [tape.interpreter_source()]
            self.source = "\n\n".join(
                [f"# {name}\n{tp.describe()}" for name, tp in self._tapes.items()] + extra
            )
        else:
            header = (
                f"generated by symgrad from {self.name}: {self.n_params} parameter(s), "
                f"{self.n_inputs} input(s), {self.n_out} output(s)"
            )
            self.source = codegen.module_source(header, kernels)
        stats["seconds"]["codegen"] = time.perf_counter() - t
        if debug_level() >= 2:
            _debug(f"generated source of {self.name} ({self.lowering})", self.source)
        t = time.perf_counter()
        before = codegen.CACHE_EVENTS.copy()
        if self.lowering == "tape":
            if backend != "vector":
                tape.interpreter(self._jit_backend)  # compiled once per process
        else:
            self._module = codegen.Module(self.source, self.name, backend, self._layouts)
            self._module.get(kernels[0][1])  # JIT the main kernel now: compile time is paid here
        stats["seconds"]["jit"] = time.perf_counter() - t
        d = cache.cache_dir()
        stats["cache"] = {"dir": str(d) if d else None, **(codegen.CACHE_EVENTS - before)}
        stats["seconds"]["total"] = time.perf_counter() - t0

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

    @property
    def _jit_backend(self) -> str:
        return "python" if self.backend == "python" else "numba"

    def _run(self, kernel: str, batch: str | None, *arrays: np.ndarray) -> None:
        if self._module is None:
            with np.errstate(all="ignore"):
                tp, layout = self._tapes[kernel], self._layouts[kernel]
                if self.backend == "vector":
                    vector.run_layout(tp, layout, batch, arrays)
                else:
                    tape.run_layout(tp, layout, self._jit_backend, batch, arrays)
            return
        parallel = False
        if batch is not None:  # rows are counted on the first per-row argument
            layout = self._layouts[kernel]
            first = next(i for i, (nm, _) in enumerate(layout.args) if nm in layout.per_row)
            parallel = arrays[first].shape[0] >= codegen.PARALLEL_ROWS
        fn = self._module.get(kernel, batch, parallel)
        if self.backend == "python":
            with np.errstate(all="ignore"):  # IEEE results, as Numba's error_model="numpy"
                fn(*arrays)
        else:
            fn(*arrays)

    def _params(self, params: Any, what: str = "params") -> np.ndarray:
        if params is None:
            return self.current_params()
        return _vector(params, self.n_params, what, "len(wrt)")

    def _row(self, inputs: Any) -> np.ndarray:
        if inputs is None:
            return self.current_inputs()
        return _vector(inputs, self.n_inputs, "inputs", "len(inputs)")

    def _matrix(self, X: Any) -> np.ndarray:
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
        sec = self.stats["seconds"].get("total", 0.0)
        n = self.stats["nodes"].get("final", 0)
        return (
            f"<{type(self).__name__} {self.name}: {self.n_params} param(s), "
            f"{self.n_inputs} input(s), {self.n_out} output(s), {n} instructions, "
            f"backend={self.backend}, compiled in {sec:.3f}s>"
        )


class Compiled(Program):
    """A compiled value-and-gradient function of a Value graph.

    Call it as ``value, grad = f(params, inputs)``; see `compile`. Attributes: `ir` (the optimised
    IR, printable), `forward_ir`, `traced_ir`, `source` (the generated Python module), `stats`,
    `backend`, `wrt_names`, `input_names`, `n_out`.
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
        grad_layout = codegen.Layout(
            args, (("out", (n_out,)), ("grad", (n_out, P))),
            accumulate=frozenset({"grad"}), per_row=frozenset({"inputs"}),
        )
        fwd_layout = codegen.Layout(args, (("out", (n_out,)),), per_row=frozenset({"inputs"}))
        super().__init__(
            traced, [(grad_func, self._vg, grad_layout), (fwd_func, self._fw, fwd_layout)],
            backend, stats, t0,
        )

    def debug(self, params: Any = None, inputs: Any = None) -> str:
        """Where a nan or inf first appears at `params`/`inputs`, as a readable report.

        Runs the IR with the reference rules (no compiled code) and names the first instruction,
        in the forward pass and in the gradient, that made a non-finite number from finite
        operands, with those operands. Returns "all values finite ..." when there is none.
        """
        p = self._params(params)
        x = self._row(inputs)
        args = [*p.tolist(), *x.tolist()]
        lines = []
        for what, func in (("forward", self.forward_ir), ("value and gradient", self.ir)):
            hit = first_nonfinite(func, args)
            if hit is None:
                lines.append(f"{what}: all values finite")
                continue
            i, ins, v = hit
            nm = names(func)
            env: dict[Var, float] = {}
            evaluate(func, args, env)
            operands = ", ".join(
                f"{atom_text(a, nm)} = {a.value if isinstance(a, Const) else env[a]!r}"
                for a in ins.args
            )
            lines.append(
                f"{what}: instruction {i} `{instr_text(ins, nm)}` gives {v!r} from {operands}"
            )
        return "\n".join(lines)

    def __call__(self, params: Any = None, inputs: Any = None) -> tuple[Any, np.ndarray]:
        """Value and gradient at `params` and `inputs` (each defaults to the leaves' ``.data``).

        Returns:
            ``(value, grad)``: a float and a ``(len(wrt),)`` array for one output; an
            ``(n_out,)`` array and the ``(n_out, len(wrt))`` Jacobian for several.
        """
        p = self._params(params)
        x = self._row(inputs)
        out = np.zeros(self.n_out)
        grad = np.zeros((self.n_out, self.n_params))
        self._run(self._vg, None, p, x, out, grad)
        if self.n_out == 1:
            return float(out[0]), grad[0]
        return out, grad

    def forward(self, params: Any = None, inputs: Any = None) -> Any:
        """The value only (a float, or an ``(n_out,)`` array for several outputs)."""
        p = self._params(params)
        x = self._row(inputs)
        out = np.zeros(self.n_out)
        self._run(self._fw, None, p, x, out)
        return float(out[0]) if self.n_out == 1 else out

    def batch(self, params: Any, X: Any, reduce: str = "sum") -> tuple[np.ndarray, np.ndarray]:
        """Values and gradients over the rows of `X`, looping (in parallel) inside compiled code.

        Args:
            params: ``len(wrt)`` floats, or None for the leaves' current ``.data``.
            X: an ``(N, len(inputs))`` array, one example a row.
            reduce: "sum" (gradients summed over rows), "mean" (averaged) or "none" (one per
                row). "sum" and "mean" use memory proportional to the parameters, not to N.
        Returns:
            ``(values, grad)``: values ``(N,)`` (``(N, n_out)`` for several outputs); grad
            ``(len(wrt),)`` for "sum"/"mean", ``(N, len(wrt))`` for "none" (with an ``n_out`` axis
            after N for several outputs).
        """
        self._check_reduce(reduce)
        p = self._params(params)
        Xa = self._matrix(X)
        n = Xa.shape[0]
        values = np.zeros((n, self.n_out))
        if reduce == "none":
            grads = np.zeros((n, self.n_out, self.n_params))
            self._run(self._vg, "rows", p, Xa, values, grads)
            g = grads[:, 0, :] if self.n_out == 1 else grads
        else:
            acc = np.zeros((self.n_out, self.n_params))
            self._run(self._vg, "sum", p, Xa, values, acc)
            if reduce == "mean":
                acc /= n
            g = acc[0] if self.n_out == 1 else acc
        return (values[:, 0] if self.n_out == 1 else values), g

    def batch_forward(self, params: Any, X: Any) -> np.ndarray:
        """Values only over the rows of `X`: ``(N,)``, or ``(N, n_out)`` for several outputs."""
        p = self._params(params)
        Xa = self._matrix(X)
        values = np.zeros((Xa.shape[0], self.n_out))
        self._run(self._fw, "rows", p, Xa, values)
        return values[:, 0] if self.n_out == 1 else values


def _floats(a: Any, what: str) -> np.ndarray:
    if isinstance(a, (str, bytes)):
        raise TypeError(f"{what}: expected numbers, got {type(a).__name__} {a!r:.40}")
    if isinstance(a, Value) or (
        isinstance(a, (list, tuple)) and any(isinstance(v, Value) for v in a)
    ):
        raise TypeError(f"{what}: expected floats, got Value objects (pass their .data)")
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what}: could not read as an array of floats ({e})") from None
    if arr.dtype.kind not in "biuf":
        example = f" (e.g. {arr.flat[0]!r:.40})" if arr.size else ""
        raise TypeError(
            f"{what}: expected real numbers, got an array of dtype {arr.dtype}{example}"
        )
    return np.asarray(arr, dtype=np.float64)


def _vector(a: Any, n: int, what: str, expected: str) -> np.ndarray:
    arr = _floats(a, what)
    if arr.ndim != 1:
        raise ValueError(
            f"{what}: expected a 1-D sequence of {n} floats ({expected}), got shape {arr.shape}"
        )
    if arr.shape[0] != n:
        raise ValueError(f"{what}: expected {n} value(s) ({expected}), got {arr.shape[0]}")
    return _kernel_ready(arr)


def _kernel_ready(a: np.ndarray) -> np.ndarray:
    """C-contiguous, aligned and writeable (Numba's signatures take only writeable arrays, and
    read-only ones, e.g. from np.frombuffer or a memory map, are common): copied if need be."""
    return np.require(a, np.float64, ["C_CONTIGUOUS", "ALIGNED", "WRITEABLE"])

"""Higher-order compiled functions of a Value graph: `jvp`, `hvp` and `hessian`.

Imports `engine`, `trace`, `autodiff`, `ir`, `layout`, `pipeline` (the front and back
ends every compiling entry point shares) and `compiled` (the `Program` base class). Each traces
the graph, applies IR transforms from `autodiff` (forward mode; forward-over-reverse for second
derivatives), optimises the result and builds a `Program` with its own kernel layout, so
backends, argument validation, ``ir``, ``source`` and ``stats`` work as they do for `compile`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np

from .autodiff import hvp as hvp_transform
from .autodiff import jvp as jvp_transform
from .autodiff import value_grad_and_hessian
from .compiled import Program
from .engine import Value
from .ir import Func
from .layout import Kernel, Layout
from .pipeline import back_end, compiling, front_end, record_stage, stage
from .trace import Traced

__all__ = ["Hessian", "Hvp", "Jvp", "hessian", "hvp", "jvp"]

ProgramT = TypeVar("ProgramT", bound=Program)


@compiling()
def jvp(
    outputs: Value | Iterable[Value],
    wrt: Sequence[Value] | None = None,
    inputs: Sequence[Value] = (),
    *,
    backend: str = "numba",
    optimize: bool = True,
    name: str | None = None,
) -> Jvp:
    """Compile the forward-mode derivative of a Value graph: ``value, tangent_out = j(params, t)``.

    Args:
        outputs: a Value, or a list of Values (then value and tangent_out are arrays).
        wrt, inputs, backend, optimize, name: as for `symgrad.compile`.
    Returns:
        a `Jvp`: ``j(params, tangent, inputs)`` gives the value and the directional derivative
        ``J @ tangent`` in one forward pass, without forming J.
    """
    return _build(Jvp, jvp_transform, "jvp", outputs, wrt, inputs, backend, optimize, name)


@compiling()
def hvp(
    out: Value,
    wrt: Sequence[Value] | None = None,
    inputs: Sequence[Value] = (),
    *,
    backend: str = "numba",
    optimize: bool = True,
    name: str | None = None,
) -> Hvp:
    """Compile the Hessian-vector product of a scalar Value: ``grad, hv = h(params, v)``.

    Forward-over-reverse: forward mode applied to the gradient's IR. One call costs a small
    multiple of one gradient, whatever the number of parameters; the Hessian is never built.

    Args:
        out: a single Value.
        wrt, inputs, backend, optimize, name: as for `symgrad.compile`.
    Returns:
        an `Hvp`: ``h(params, v, inputs)`` gives the gradient and ``H @ v``.
    """
    return _build(Hvp, hvp_transform, "hvp", out, wrt, inputs, backend, optimize, name)


@compiling()
def hessian(
    out: Value,
    wrt: Sequence[Value] | None = None,
    inputs: Sequence[Value] = (),
    *,
    backend: str = "numba",
    optimize: bool = True,
    name: str | None = None,
) -> Hessian:
    """Compile the value, gradient and Hessian of a scalar Value: ``value, grad, hess = H(params)``.

    One reverse pass, then one forward sweep over it per parameter (forward-over-reverse with
    basis tangents), so the cost is about ``len(wrt)`` gradients.

    Args:
        out: a single Value.
        wrt, inputs, backend, optimize, name: as for `symgrad.compile`.
    Returns:
        a `Hessian`: ``H(params, inputs)`` and ``H.batch(params, X, reduce)``.
    """
    return _build(Hessian, value_grad_and_hessian, "hessian", out, wrt, inputs, backend,
                  optimize, name)


# ---- the shared front and back ends ---------------------------------------------------------


def _build(
    cls: type[ProgramT], transform: Callable[[Func, int], Func], what: str,
    outputs: Value | Iterable[Value], wrt: Sequence[Value] | None, inputs: Sequence[Value],
    backend: str, optimize: bool, name: str | None,
) -> ProgramT:
    """Validate and trace as `compile` does, apply the IR `transform`, optimise, build `cls`.

    Second-order transforms (anything but "jvp") take a single output.
    """
    traced, stats, t0 = front_end(outputs, wrt, inputs, backend, name)
    if what != "jvp" and len(traced.outputs) != 1:
        raise ValueError(
            f"{what}: takes a single output Value, got {len(traced.outputs)} (a Hessian of "
            "several outputs is a 3-D array: compile one per output)"
        )
    t = time.perf_counter()
    stage(f"differentiating {len(traced.func.body):,} instructions ({what})")
    func = transform(traced.func, len(traced.wrt))
    record_stage(stats, what, func, t)
    return cls(traced, back_end(func, stats, optimize), backend, stats, t0)


def _program_args(
    obj: Program, params: Any, direction: Any, inputs: Any, what: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if direction is None:
        raise ValueError(f"{what}: required, {obj.n_params} float(s) (len(wrt))")
    return obj._params(params), obj._params(direction, what), obj._row(inputs)


class Jvp(Program):
    """A compiled Jacobian-vector product: ``value, tangent_out = j(params, tangent, inputs)``.

    Attributes: `ir` (the optimised IR: arguments params, their tangents ``{label}_dot``,
    inputs), `traced_ir`, `source`, `stats`, `backend`, `wrt_names`, `input_names`, `n_out`.
    """

    def __init__(
        self, traced: Traced, func: Func, backend: str, stats: dict[str, Any], t0: float
    ) -> None:
        P, n_in, n_out = len(traced.wrt), len(traced.inputs), len(traced.outputs)
        layout = Layout(
            (("params", P), ("params_dot", P), ("inputs", n_in)),
            (("out", (n_out,)), ("out_dot", (n_out,))),
            per_row=frozenset({"inputs"}),
        )
        self.ir = func
        self._kernel = f"{traced.func.name}_jvp"
        super().__init__(traced, [Kernel(self.ir, self._kernel, layout)], backend, stats, t0)

    def __call__(
        self, params: Any = None, tangent: Any = None, inputs: Any = None
    ) -> tuple[Any, Any]:
        """Value and directional derivative at `params` along `tangent` (required).

        Args:
            params: ``len(wrt)`` floats, or None for the leaves' current ``.data``.
            tangent: ``len(wrt)`` floats, the direction in parameter space.
            inputs: ``len(inputs)`` floats, or None for the leaves' current ``.data``.
        Returns:
            ``(value, tangent_out)``: two floats for one output, two ``(n_out,)`` arrays for
            several (``tangent_out = J @ tangent``).
        """
        p, t, x = _program_args(self, params, tangent, inputs, "tangent")
        out, out_dot = np.zeros(self.n_out), np.zeros(self.n_out)
        self._run(self._kernel, None, p, t, x, out, out_dot)
        if self.n_out == 1:
            return float(out[0]), float(out_dot[0])
        return out, out_dot


class Hvp(Program):
    """A compiled Hessian-vector product: ``grad, hv = h(params, v, inputs)``.

    Attributes as for `Jvp`; `ir`'s results are the gradient, then ``H @ v``.
    """

    def __init__(
        self, traced: Traced, func: Func, backend: str, stats: dict[str, Any], t0: float
    ) -> None:
        P, n_in = len(traced.wrt), len(traced.inputs)
        layout = Layout(
            (("params", P), ("params_dot", P), ("inputs", n_in)),
            (("grad", (P,)), ("grad_dot", (P,))),
            per_row=frozenset({"inputs"}),
        )
        self.ir = func
        self._kernel = f"{traced.func.name}_hvp"
        super().__init__(traced, [Kernel(self.ir, self._kernel, layout)], backend, stats, t0)

    def __call__(
        self, params: Any = None, v: Any = None, inputs: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Gradient and Hessian-vector product at `params`, `inputs` along `v` (required).

        Returns:
            ``(grad, hv)``: two ``(len(wrt),)`` arrays, ``hv = H @ v``.
        """
        p, t, x = _program_args(self, params, v, inputs, "v")
        grad, hv = np.zeros(self.n_params), np.zeros(self.n_params)
        self._run(self._kernel, None, p, t, x, grad, hv)
        return grad, hv


class Hessian(Program):
    """A compiled value, gradient and Hessian: ``value, grad, hess = H(params, inputs)``.

    Attributes as for `Jvp`; `ir`'s results are the value, the gradient, then the Hessian
    row-major (row ``j`` from the forward sweep along parameter ``j``; not symmetrised).
    """

    def __init__(
        self, traced: Traced, func: Func, backend: str, stats: dict[str, Any], t0: float
    ) -> None:
        P, n_in = len(traced.wrt), len(traced.inputs)
        layout = Layout(
            (("params", P), ("inputs", n_in)),
            (("out", (1,)), ("grad", (P,)), ("hess", (P, P))),
            accumulate=frozenset({"grad", "hess"}), per_row=frozenset({"inputs"}),
        )
        self.ir = func
        self._kernel = f"{traced.func.name}_hessian"
        super().__init__(traced, [Kernel(self.ir, self._kernel, layout)], backend, stats, t0)

    def __call__(
        self, params: Any = None, inputs: Any = None
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """Value, gradient ``(len(wrt),)`` and Hessian ``(len(wrt), len(wrt))``."""
        p, x = self._params(params), self._row(inputs)
        out, grad = np.zeros(1), np.zeros(self.n_params)
        hess = np.zeros((self.n_params, self.n_params))
        self._run(self._kernel, None, p, x, out, grad, hess)
        return float(out[0]), grad, hess

    def batch(
        self, params: Any, X: Any, reduce: str = "sum"
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Values, gradients and Hessians over the rows of `X`, looping inside compiled code.

        Args:
            params: ``len(wrt)`` floats, or None for the leaves' current ``.data``.
            X: an ``(N, len(inputs))`` array, one example a row.
            reduce: "sum" (gradient and Hessian summed over rows), "mean" (averaged) or "none"
                (one per row).
        Returns:
            ``(values, grad, hess)``: values ``(N,)``; grad ``(P,)`` and hess ``(P, P)`` for
            "sum"/"mean", ``(N, P)`` and ``(N, P, P)`` for "none".
        """
        self._check_reduce(reduce)
        p = self._params(params)
        Xa = self._matrix(X)
        n, P = Xa.shape[0], self.n_params
        values = np.zeros((n, 1))
        if reduce == "none":
            grad, hess = np.zeros((n, P)), np.zeros((n, P, P))
            self._run(self._kernel, "rows", p, Xa, values, grad, hess)
        else:
            grad, hess = np.zeros(P), np.zeros((P, P))
            self._run(self._kernel, "sum", p, Xa, values, grad, hess)
            if reduce == "mean":
                grad /= n
                hess /= n
        return values[:, 0], grad, hess

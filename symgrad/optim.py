"""Optimisers for a flat float64 parameter vector: `SGD` and `Adam`, updating it in place.

Imports numpy only. ``opt.step(params, grad)`` updates `params` (a 1-D float64 array: what
`symgrad.fit` trains, or what `symgrad.nn.parameters_to_vector` returns) in place with whole-vector
NumPy operations, never a Python loop over parameters. An optimiser keeps its state (momentum,
moment estimates, the step count) for one vector; `reset` forgets it. The update rules follow
PyTorch's definitions of ``torch.optim.SGD`` and ``torch.optim.Adam`` (default flags: no weight
decay, no dampening, no Nesterov, no AMSGrad), each operation in the order of PyTorch's scalar
code, so the same gradients give the same steps to rounding: PyTorch's vectorised CPU kernels
may fuse a multiply and an add (one rounding instead of two), which no NumPy operation does, so
bit-for-bit equality is not promised.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

__all__ = ["SGD", "Adam", "Optimizer"]


class Optimizer:
    """Base class: validates ``step``'s arrays and holds the state of one parameter vector."""

    def __init__(self) -> None:
        self.t = 0  # steps taken since the last reset
        self._size: int | None = None

    def reset(self) -> None:
        """Forget the state (momentum, moment estimates, step count): the next step is a first."""
        self.t = 0
        self._size = None

    def step(self, params: np.ndarray, grad: Any) -> None:
        """Update `params` in place, one step along `grad`.

        Args:
            params: a writeable 1-D float64 array, updated in place.
            grad: the gradient at `params`, one float per parameter.
        """
        g = self._check(params, grad)
        self.t += 1
        with np.errstate(all="ignore"):  # IEEE results (inf - inf is nan), as compiled code
            self._update(params, g)

    def _update(self, params: np.ndarray, g: np.ndarray) -> None:
        raise NotImplementedError

    def _check(self, params: Any, grad: Any) -> np.ndarray:
        if not isinstance(params, np.ndarray) or params.dtype != np.float64 or params.ndim != 1:
            raise TypeError(
                f"{type(self).__name__}.step: params must be a 1-D float64 numpy array (it is "
                f"updated in place), got {_describe(params)}"
            )
        if not params.flags.writeable:
            raise ValueError(f"{type(self).__name__}.step: params is read-only")
        try:
            g = np.asarray(grad, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{type(self).__name__}.step: grad is not numeric ({e})") from None
        if g.shape != params.shape:
            raise ValueError(
                f"{type(self).__name__}.step: grad has shape {g.shape}, params {params.shape}"
            )
        if self._size is None:
            self._size = params.shape[0]
            self._init_state(self._size)
        elif self._size != params.shape[0]:
            raise ValueError(
                f"{type(self).__name__}.step: this optimiser holds state for {self._size} "
                f"parameters, got {params.shape[0]} (use one optimiser per model, or reset())"
            )
        return g

    def _init_state(self, n: int) -> None:
        pass


class SGD(Optimizer):
    """Stochastic gradient descent, with optional momentum (PyTorch's ``torch.optim.SGD``).

    ``b = momentum * b + grad`` (``b = grad`` on the first step), then ``params -= lr * b``;
    with ``momentum=0`` simply ``params -= lr * grad``.

    Args:
        lr: the learning rate.
        momentum: the momentum factor, in [0, 1).
    """

    def __init__(self, lr: float, momentum: float = 0.0) -> None:
        super().__init__()
        self.lr = _number("SGD: lr", lr, 0.0, math.inf)
        self.momentum = _number("SGD: momentum", momentum, 0.0, 1.0, open_hi=True)
        self.buf = np.zeros(0)
        self._tmp = np.zeros(0)

    def _init_state(self, n: int) -> None:
        self.buf = np.zeros(n)
        self._tmp = np.empty(n)

    def _update(self, params: np.ndarray, g: np.ndarray) -> None:
        if self.momentum != 0.0:
            if self.t == 1:
                self.buf[:] = g
            else:
                self.buf *= self.momentum
                self.buf += g
            g = self.buf
        np.multiply(g, -self.lr, out=self._tmp)  # PyTorch's params.add_(g, alpha=-lr)
        params += self._tmp

    def __repr__(self) -> str:
        return f"SGD(lr={self.lr!r}, momentum={self.momentum!r})"


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015) as PyTorch's ``torch.optim.Adam`` computes it, to rounding.

    ``m = lerp(m, grad, 1 - beta1)``, ``v = v * beta2 + ((1 - beta2) * grad) * grad``, then
    ``params += (-lr / (1 - beta1**t) * m) / (sqrt(v) / sqrt(1 - beta2**t) + eps)``, each in
    the order of PyTorch's scalar code (its ``lerp_``, ``addcmul_`` and ``addcdiv_``); its
    vectorised kernels may fuse a multiply and an add, so results agree to rounding.

    Args:
        lr: the learning rate.
        betas: the decay rates of the first and second moment estimates, each in [0, 1).
        eps: added to the denominator.
    """

    def __init__(
        self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        super().__init__()
        self.lr = _number("Adam: lr", lr, 0.0, math.inf)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"Adam: betas must be a pair of floats, got {betas!r:.40}")
        self.betas = (
            _number("Adam: betas[0]", betas[0], 0.0, 1.0, open_hi=True),
            _number("Adam: betas[1]", betas[1], 0.0, 1.0, open_hi=True),
        )
        self.eps = _number("Adam: eps", eps, 0.0, math.inf)
        self.m = np.zeros(0)
        self.v = np.zeros(0)
        self._tmp = np.zeros(0)
        self._den = np.zeros(0)

    def _init_state(self, n: int) -> None:
        self.m, self.v = np.zeros(n), np.zeros(n)
        self._tmp, self._den = np.empty(n), np.empty(n)

    def _update(self, params: np.ndarray, g: np.ndarray) -> None:
        b1, b2 = self.betas
        m, v, tmp, den = self.m, self.v, self._tmp, self._den
        # first moment: PyTorch's lerp(m, g, w), which for |w| < 0.5 is m + w * (g - m), else
        # g - (g - m) * (1 - w), the form that rounds better there
        w = 1.0 - b1
        np.subtract(g, m, out=tmp)
        if abs(w) < 0.5:
            tmp *= w
            m += tmp
        else:
            tmp *= 1.0 - w
            np.subtract(g, tmp, out=m)
        # second moment: PyTorch's v.mul_(b2).addcmul_(g, g, value=1 - b2), v + ((1 - b2) * g) * g
        v *= b2
        np.multiply(g, 1.0 - b2, out=tmp)
        tmp *= g
        v += tmp
        step_size = self.lr / (1.0 - b1**self.t)
        np.sqrt(v, out=den)
        den /= math.sqrt(1.0 - b2**self.t)
        den += self.eps
        np.multiply(m, -step_size, out=tmp)
        tmp /= den
        params += tmp

    def __repr__(self) -> str:
        return f"Adam(lr={self.lr!r}, betas={self.betas!r}, eps={self.eps!r})"


def _number(what: str, x: Any, lo: float, hi: float, open_hi: bool = False) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{what} must be a number, got {type(x).__name__} {x!r:.40}")
    v = float(x)
    ok = lo <= v < hi if open_hi else lo <= v <= hi and math.isfinite(v)
    if not ok:
        bound = f"[{lo:g}, {hi:g})" if open_hi else f">= {lo:g} and finite"
        raise ValueError(f"{what} must be {bound}, got {v!r}")
    return v


def _describe(a: Any) -> str:
    if isinstance(a, np.ndarray):
        return f"an array of dtype {a.dtype} and shape {a.shape}"
    return f"{type(a).__name__}"

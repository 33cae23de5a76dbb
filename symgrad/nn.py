"""Module, Neuron, Layer and MLP: the lecture's neural network library, built on `Value`.

Imports only `symgrad.engine` (and numpy). Initialisation draws from Python's `random` in the
lecture's order (each neuron's weights w0..wn-1, then its bias), so `random.seed(s)` rebuilds the
lecture's model. `parameters_to_vector` and `vector_to_parameters` (PyTorch's names) carry
parameter values between a model's leaves and the float64 vector compiled code trains.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .engine import Value

__all__ = [
    "ACTIVATIONS", "MLP", "Layer", "Module", "Neuron", "parameters_to_vector",
    "vector_to_parameters",
]

# activation name -> the repr prefix micrograd uses ("TanhNeuron(3)", "ReLUNeuron(3)", ...)
ACTIVATIONS: dict[str, str] = {
    "tanh": "Tanh",
    "relu": "ReLU",
    "sigmoid": "Sigmoid",
    "linear": "Linear",
}


def _check_activation(activation: Any) -> str:
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        allowed = ", ".join(repr(a) for a in ACTIVATIONS)
        raise ValueError(f"activation must be one of {allowed}; got {activation!r}")
    return activation


def _check_count(what: str, n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{what} must be a positive int, got {n!r}")
    return n


def _inputs(owner: str, nin: int, x: Any) -> list[Any]:
    """`x` as a list of `nin` inputs (floats or Values), or a clear error."""
    if isinstance(x, (Value, str, bytes)) or not isinstance(x, Iterable):
        raise TypeError(
            f"{owner} expects a sequence of {nin} inputs (floats or Values), "
            f"got {type(x).__name__}"
        )
    xs = list(x)
    if len(xs) != nin:
        raise ValueError(f"{owner} expects {nin} inputs, got {len(xs)}")
    return xs


def _name(prefix: str, part: str) -> str:
    return f"{prefix}.{part}" if prefix else part


class Module:
    """Base class: something with parameters (leaf Values that training updates)."""

    def parameters(self) -> list[Value]:
        """The trainable leaves, in a fixed order (the order `compile(wrt=...)` expects)."""
        return []

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to 0.0 (``backward()`` accumulates)."""
        for p in self.parameters():
            p.grad = 0.0


class Neuron(Module):
    """One neuron: ``activation(b + w0*x0 + w1*x1 + ...)``.

    Args:
        nin: number of inputs.
        activation: ``"tanh"`` (the lecture's), ``"relu"``, ``"sigmoid"`` or ``"linear"`` (none).
        name: prefix for the parameter labels: ``"L0.N1"`` gives ``"L0.N1.w0"``, ``"L0.N1.b"``.
    """

    def __init__(self, nin: int, activation: str = "tanh", *, name: str = "") -> None:
        nin = _check_count("Neuron: nin", nin)
        self.activation = _check_activation(activation)
        # the lecture's draw order: all weights, then the bias
        self.w = [Value(random.uniform(-1, 1), label=_name(name, f"w{i}")) for i in range(nin)]
        self.b = Value(random.uniform(-1, 1), label=_name(name, "b"))

    def __call__(self, x: Iterable[float | Value]) -> Value:
        """The neuron's output for inputs `x` (floats or Values, one per weight)."""
        xs = _inputs("Neuron", len(self.w), x)
        # what sum((wi * xi for ...), self.b) does: the bias first, then one add per input
        act = self.b
        for wi, xi in zip(self.w, xs, strict=True):
            act = act + wi * xi
        if self.activation == "tanh":
            return act.tanh()
        if self.activation == "relu":
            return act.relu()
        if self.activation == "sigmoid":
            return act.sigmoid()
        return act  # linear

    def parameters(self) -> list[Value]:
        """The weights, then the bias."""
        return [*self.w, self.b]

    def __repr__(self) -> str:
        return f"{ACTIVATIONS[self.activation]}Neuron({len(self.w)})"


class Layer(Module):
    """`nout` neurons reading the same `nin` inputs.

    Calling it returns a list of `nout` Values, or a single Value when ``nout == 1``
    (as in the lecture, so a network ending in one neuron outputs a Value).
    """

    def __init__(self, nin: int, nout: int, activation: str = "tanh", *, name: str = "") -> None:
        nin = _check_count("Layer: nin", nin)
        nout = _check_count("Layer: nout", nout)
        activation = _check_activation(activation)
        self.nin = nin
        self.neurons = [
            Neuron(nin, activation, name=_name(name, f"N{j}")) for j in range(nout)
        ]

    def __call__(self, x: Iterable[float | Value]) -> Value | list[Value]:
        """The neurons' outputs for inputs `x`: a list, or one Value for a one-neuron layer."""
        xs = _inputs("Layer", self.nin, x)
        outs = [n(xs) for n in self.neurons]
        return outs[0] if len(outs) == 1 else outs

    def parameters(self) -> list[Value]:
        """Every neuron's parameters, neuron by neuron."""
        return [p for n in self.neurons for p in n.parameters()]

    def __repr__(self) -> str:
        return f"Layer of [{', '.join(str(n) for n in self.neurons)}]"


class MLP(Module):
    """A multi-layer perceptron: ``MLP(3, [4, 4, 1])`` is the lecture's 41-parameter network.

    Args:
        nin: number of inputs.
        nouts: the width of each layer, first to last.
        activation: the hidden layers' activation (see `Neuron`).
        output_activation: the last layer's activation; None means the same as `activation`
            (the lecture's tanh network). micrograd's demo model is
            ``MLP(2, [16, 16, 1], activation="relu", output_activation="linear")``.

    Parameter labels name their place: ``"L0.N1.w2"`` is layer 0, neuron 1, weight 2.
    """

    def __init__(
        self,
        nin: int,
        nouts: Iterable[int],
        activation: str = "tanh",
        output_activation: str | None = None,
    ) -> None:
        nin = _check_count("MLP: nin", nin)
        if isinstance(nouts, (str, bytes)) or not isinstance(nouts, Iterable):
            raise ValueError(f"MLP: nouts must be a list of layer widths, got {nouts!r}")
        widths = [_check_count("MLP: each layer width", n) for n in nouts]
        if not widths:
            raise ValueError("MLP: nouts must name at least one layer")
        activation = _check_activation(activation)
        last = activation if output_activation is None else _check_activation(output_activation)
        sizes = [nin, *widths]
        self.nin = nin
        self.layers = [
            Layer(
                sizes[i],
                sizes[i + 1],
                last if i == len(widths) - 1 else activation,
                name=f"L{i}",
            )
            for i in range(len(widths))
        ]

    def __call__(self, x: Iterable[float | Value]) -> Value | list[Value]:
        """The network's output for inputs `x`: a Value when the last layer has one neuron."""
        out: Any = _inputs("MLP", self.nin, x)
        for layer in self.layers:
            out = layer(out if isinstance(out, list) else [out])
        return out

    def parameters(self) -> list[Value]:
        """Every layer's parameters, layer by layer (41 for ``MLP(3, [4, 4, 1])``)."""
        return [p for layer in self.layers for p in layer.parameters()]

    def __repr__(self) -> str:
        return f"MLP of [{', '.join(str(layer) for layer in self.layers)}]"


# ---- parameters <-> one vector ------------------------------------------------------------------


def _parameter_list(params: Iterable[Value] | Module, what: str) -> list[Value]:
    """`params` as a list of leaf Values, in order; a set or a dict (no fixed order, or keys
    where values were meant) and a non-leaf (the result of an operation) are refused."""
    if isinstance(params, Module):
        params = params.parameters()
    if isinstance(params, Mapping):
        raise TypeError(
            f"{what}: params must be a list of Values, got a {type(params).__name__} (iterating "
            "it gives its keys); pass list(d.values()), or model.parameters()"
        )
    if isinstance(params, (set, frozenset)):
        raise TypeError(
            f"{what}: params must be a list of Values, got a {type(params).__name__}, which has "
            "no order; pass a list (the order is the vector's), e.g. model.parameters()"
        )
    if isinstance(params, (Value, str, bytes)) or not isinstance(params, Iterable):
        raise TypeError(
            f"{what}: params must be a list of Values (e.g. model.parameters()), "
            f"got {type(params).__name__}"
        )
    out = list(params)
    for i, p in enumerate(out):
        if not isinstance(p, Value):
            raise TypeError(f"{what}: params[{i}] is {type(p).__name__} {p!r:.40}, not a Value")
        if p._prev:
            raise TypeError(
                f"{what}: params[{i}] ({p.label or 'unlabelled'}) is the result of an operation "
                f"({p._op}), not a leaf: a parameter is a leaf Value, e.g. a weight"
            )
    return out


def parameters_to_vector(params: Iterable[Value] | Module) -> np.ndarray:
    """The parameters' ``.data`` as one float64 vector, in their order (PyTorch's name).

    Args:
        params: a list of leaf Values, e.g. ``model.parameters()`` (a `Module` itself is
            taken too); a set, a dict or a non-leaf is a TypeError.
    Returns:
        a new 1-D float64 array: what ``sg.compile(loss, wrt=params)`` takes as ``params``.
    """
    ps = _parameter_list(params, "parameters_to_vector")
    return np.array([p.data for p in ps], dtype=np.float64)


def vector_to_parameters(vec: Any, params: Iterable[Value] | Module) -> None:
    """Write a vector back into the parameters' ``.data``, in order (PyTorch's name).

    After training with compiled code (``sg.fit``, an optimiser, scipy), this puts the trained
    values into the model, so ``model(x)`` and a new ``sg.compile`` use them.

    Args:
        vec: ``len(params)`` real numbers.
        params: the leaf Values to update, e.g. ``model.parameters()`` (or the `Module`); a
            set, a dict or a non-leaf is a TypeError.
    """
    ps = _parameter_list(params, "vector_to_parameters")
    try:
        v = np.asarray(vec)
    except (TypeError, ValueError) as e:
        raise TypeError(f"vector_to_parameters: vec is not an array of numbers ({e})") from None
    if v.dtype.kind not in "iuf":
        raise TypeError(f"vector_to_parameters: vec must hold real numbers, got dtype {v.dtype}")
    if v.ndim != 1 or v.shape[0] != len(ps):
        raise ValueError(
            f"vector_to_parameters: vec must be a 1-D vector of {len(ps)} value(s) (one per "
            f"parameter), got shape {v.shape}"
        )
    for p, x in zip(ps, v.tolist(), strict=True):
        p.data = float(x)

"""The neural network library against the lecture: shapes, initialisation order, training.

Oracles: hand computations of a neuron, Python's `random` drawn directly in the lecture's order,
and the lecture's own training loop reaching a small loss.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from symgrad.engine import Value
from symgrad.nn import MLP, Layer, Module, Neuron

XS = [[2.0, 3.0, -1.0], [3.0, -1.0, 0.5], [0.5, 1.0, 1.0], [1.0, 1.0, -1.0]]
YS = [1.0, -1.0, -1.0, 1.0]


def test_mlp_has_41_parameters() -> None:
    model = MLP(3, [4, 4, 1])
    params = model.parameters()
    assert len(params) == 41  # (3+1)*4 + (4+1)*4 + (4+1)*1
    assert len({id(p) for p in params}) == 41
    assert all(isinstance(p, Value) and not p._prev for p in params)


def test_parameter_labels_name_their_place() -> None:
    labels = [p.label for p in MLP(3, [4, 4, 1]).parameters()]
    assert labels[:5] == ["L0.N0.w0", "L0.N0.w1", "L0.N0.w2", "L0.N0.b", "L0.N1.w0"]
    assert "L1.N3.w2" in labels
    assert labels[-1] == "L2.N0.b"
    assert len(set(labels)) == len(labels)


def test_one_neuron_layer_returns_a_value() -> None:
    out = MLP(3, [4, 4, 1])([2.0, 3.0, -1.0])
    assert isinstance(out, Value)
    outs = MLP(3, [4, 2])([2.0, 3.0, -1.0])
    assert isinstance(outs, list) and len(outs) == 2
    assert isinstance(Layer(2, 1)([1.0, 2.0]), Value)
    assert isinstance(Layer(2, 3)([1.0, 2.0]), list)


def test_seed_reproduces_the_lecture_draw_order() -> None:
    random.seed(7)
    model = MLP(3, [4, 4, 1])
    # the lecture: neuron by neuron, layer by layer; in each neuron w0..wn-1, then b
    random.seed(7)
    expected = [random.uniform(-1, 1) for _ in range(41)]
    assert [p.data for p in model.parameters()] == expected
    random.seed(7)
    again = MLP(3, [4, 4, 1])
    assert [p.data for p in again.parameters()] == expected


def test_neuron_output_is_tanh_of_bias_plus_weighted_sum() -> None:
    n = Neuron(3)
    x = [0.5, -1.25, 2.0]
    w, b = [p.data for p in n.w], n.b.data
    expected = math.tanh(b + w[0] * x[0] + w[1] * x[1] + w[2] * x[2])
    assert n(x).data == expected  # same operations in the same order: bit-identical
    assert n([Value(v) for v in x]).data == expected


def test_neuron_graph_has_the_lecture_shape() -> None:
    # sum((wi * xi for ...), self.b) builds ((b + w0*x0) + w1*x1) + w2*x2: the bias first,
    # each product as (weight, input); the compiled IR and drawings follow this shape
    n = Neuron(3, "linear")
    x = [Value(0.5), Value(-1.0), Value(2.0)]
    node = n(x)
    for i in reversed(range(3)):
        assert node._op == "+"
        node, prod = node._prev
        assert prod._op == "*" and prod._prev == (n.w[i], x[i])
    assert node is n.b


@pytest.mark.parametrize(
    ("activation", "fn"),
    [
        ("tanh", math.tanh),
        ("relu", lambda s: max(s, 0.0)),
        ("sigmoid", lambda s: 1.0 / (1.0 + math.exp(-s))),
        ("linear", lambda s: s),
    ],
)
def test_activations(activation: str, fn: Callable[[float], float]) -> None:
    n = Neuron(2, activation)
    x = [0.75, -0.5]
    s = n.b.data + n.w[0].data * x[0] + n.w[1].data * x[1]
    assert math.isclose(n(x).data, fn(s), rel_tol=1e-15)


def test_neuron_grads_match_hand_derivative() -> None:
    n = Neuron(2)
    x = [Value(0.3), Value(-0.7)]
    out = n(x)
    out.backward()
    dact = 1 - out.data**2
    assert math.isclose(n.b.grad, dact, rel_tol=1e-12)
    for wi, xi in zip(n.w, x, strict=True):
        assert math.isclose(wi.grad, dact * xi.data, rel_tol=1e-12)
        assert math.isclose(xi.grad, dact * wi.data, rel_tol=1e-12)


def test_output_activation() -> None:
    model = MLP(2, [16, 16, 1], activation="relu", output_activation="linear")
    assert [n.activation for n in model.layers[0].neurons] == ["relu"] * 16
    assert model.layers[-1].neurons[0].activation == "linear"
    assert repr(model).startswith("MLP of [Layer of [ReLUNeuron(2), ")
    assert repr(model).endswith("Layer of [LinearNeuron(16)]]")
    # None means "like the hidden layers" (the lecture's all-tanh network)
    assert MLP(3, [4, 1]).layers[-1].neurons[0].activation == "tanh"


def test_reprs() -> None:
    assert repr(Neuron(3)) == "TanhNeuron(3)"
    assert repr(Layer(3, 2, "sigmoid")) == "Layer of [SigmoidNeuron(3), SigmoidNeuron(3)]"
    assert repr(MLP(3, [4, 1])) == (
        "MLP of [Layer of [TanhNeuron(3), TanhNeuron(3), TanhNeuron(3), TanhNeuron(3)], "
        "Layer of [TanhNeuron(4)]]"
    )


def test_zero_grad_zeroes_every_parameter() -> None:
    model = MLP(3, [4, 4, 1])
    model([2.0, 3.0, -1.0]).backward()
    assert any(p.grad != 0.0 for p in model.parameters())
    model.zero_grad()
    assert all(p.grad == 0.0 for p in model.parameters())
    assert Module().parameters() == []


def _train(seed: int, steps: int = 100, lr: float = 0.1) -> float:
    """The lecture's loop; returns the loss after the last update."""
    random.seed(seed)
    model = MLP(3, [4, 4, 1])
    for _ in range(steps):
        loss = sum((model(x) - y) ** 2 for x, y in zip(XS, YS, strict=True))
        model.zero_grad()
        loss.backward()
        for p in model.parameters():
            p.data += -lr * p.grad
    return sum((model(x) - y) ** 2 for x, y in zip(XS, YS, strict=True)).data


def test_lecture_training_reaches_a_small_loss() -> None:
    losses = [_train(seed) for seed in range(10)]
    assert sum(loss < 0.05 for loss in losses) >= 7, losses


@pytest.mark.parametrize(
    "build",
    [
        lambda: Neuron(3, "gelu"),
        lambda: Layer(3, 2, activation="Tanh"),
        lambda: MLP(3, [4, 1], activation="softmax"),
        lambda: MLP(3, [4, 1], output_activation="none"),
    ],
)
def test_unknown_activation_is_a_value_error(build: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match="'tanh', 'relu', 'sigmoid', 'linear'"):
        build()


@pytest.mark.parametrize(
    ("module", "x", "message"),
    [
        (Neuron(3), [1.0, 2.0], "Neuron expects 3 inputs, got 2"),
        (Layer(3, 2), [1.0, 2.0, 3.0, 4.0], "Layer expects 3 inputs, got 4"),
        (MLP(3, [4, 1]), [], "MLP expects 3 inputs, got 0"),
    ],
)
def test_wrong_input_length_is_a_value_error(module: Module, x: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        module(x)


def test_bad_sizes_and_inputs() -> None:
    with pytest.raises(ValueError, match="nin"):
        Neuron(0)
    with pytest.raises(ValueError, match="width"):
        MLP(3, [4, 0])
    with pytest.raises(ValueError, match="at least one layer"):
        MLP(3, [])
    with pytest.raises(TypeError, match="sequence of 3 inputs"):
        Neuron(3)(2.0)

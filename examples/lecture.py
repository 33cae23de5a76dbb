"""The micrograd lecture, replayed with symgrad: interpreted first, then compiled.

Follows the notebook part by part: a numerical derivative, d = a*b + c and its gradients, one
tanh neuron (checked against finite differences), then training the 41-parameter MLP on the
notebook's four examples. Drawings of d and o are written as SVG when graphviz's `dot` exists.
Then the compiler: the neuron's IR and generated source, its gradient checked against sympy,
and the same training run with one compiled batch gradient per step, which must end with the
interpreted loop's parameters to rounding (the batch adds the examples' gradients in its own
documented order, the engine's backward() in reverse).

Run: python examples/lecture.py [--out-dir DIR] [--no-draw]
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

import symgrad as sg
from symgrad.engine import Value
from symgrad.nn import MLP
from symgrad.viz import draw_dot, render

SEED = 1337  # any seed works (see tests/test_nn.py); this one is fixed so runs are comparable

# the notebook's training set: four inputs and their targets
XS = [
    [2.0, 3.0, -1.0],
    [3.0, -1.0, 0.5],
    [0.5, 1.0, 1.0],
    [1.0, 1.0, -1.0],
]
YS = [1.0, -1.0, -1.0, 1.0]


# ---- part 1: a numerical derivative -------------------------------------------------------------


def f(x: float) -> float:
    """The notebook's example function, 3x^2 - 4x + 5."""
    return 3 * x**2 - 4 * x + 5


def numerical_derivative(x: float = 3.0, h: float = 0.0001) -> float:
    """The limit definition with a small h: (f(x + h) - f(x)) / h, about 14 at x = 3."""
    slope = (f(x + h) - f(x)) / h
    print(f"f({x}) = {f(x)}")
    print(f"f'({x}) ~= {slope:.4f}   (exact: 6x - 4 = {6 * x - 4})")
    return slope


# ---- parts 2-5: d = a*b + c, backpropagated -----------------------------------------------------


def expression() -> tuple[Value, Value, Value, Value]:
    """Build d = a*b + c with a=2, b=-3, c=10, backpropagate, print the gradients."""
    a = Value(2.0, label="a")
    b = Value(-3.0, label="b")
    c = Value(10.0, label="c")
    e = a * b
    e.label = "e"
    d = e + c
    d.label = "d"
    d.backward()
    print(f"d = a*b + c = {d.data}")
    print(f"  a.grad = {a.grad}   (expected: b = -3)")
    print(f"  b.grad = {b.grad}   (expected: a = 2)")
    print(f"  c.grad = {c.grad}   (expected: 1)")
    return a, b, c, d


# ---- part 6: a neuron ---------------------------------------------------------------------------

NEURON = {"x1": 2.0, "x2": 0.0, "w1": -3.0, "w2": 1.0, "b": 6.8813735870195432}


def neuron_value(x1: float, x2: float, w1: float, w2: float, b: float) -> float:
    """The neuron on plain floats: tanh(x1*w1 + x2*w2 + b)."""
    return math.tanh(x1 * w1 + x2 * w2 + b)


def neuron() -> tuple[dict[str, Value], Value]:
    """Build o = tanh(x1*w1 + x2*w2 + b) as in the notebook, backpropagate, print it."""
    v = {name: Value(x, label=name) for name, x in NEURON.items()}
    x1w1 = v["x1"] * v["w1"]
    x1w1.label = "x1*w1"
    x2w2 = v["x2"] * v["w2"]
    x2w2.label = "x2*w2"
    x1w1x2w2 = x1w1 + x2w2
    x1w1x2w2.label = "x1*w1 + x2*w2"
    n = x1w1x2w2 + v["b"]
    n.label = "n"
    o = n.tanh()
    o.label = "o"
    o.backward()
    print(f"o = tanh(n) = {o.data:.4f}")
    for name in ("x1", "x2", "w1", "w2"):
        print(f"  {name}.grad = {v[name].grad:.4f}")
    return v, o


def finite_differences(
    fn: Callable[..., float], point: dict[str, float], h: float = 1e-6
) -> dict[str, float]:
    """Central differences (fn(x + h) - fn(x - h)) / 2h of fn(**point), one per argument."""
    grads = {}
    for name, x in point.items():
        up, down = dict(point), dict(point)
        up[name], down[name] = x + h, x - h
        grads[name] = (fn(**up) - fn(**down)) / (2 * h)
    return grads


def check_neuron(values: dict[str, Value]) -> float:
    """Compare backward()'s gradients with finite differences; return the largest gap."""
    numeric = finite_differences(neuron_value, NEURON)
    worst = max(abs(values[name].grad - g) for name, g in numeric.items())
    print(f"finite differences agree with backward() to {worst:.1e}")
    return worst


# ---- parts 7-8: an MLP, trained -----------------------------------------------------------------


def loss_of(model: MLP) -> Value:
    """The notebook's loss: the sum of squared errors over the four examples."""
    ypred = [model(x) for x in XS]
    return sum((yout - ygt) ** 2 for ygt, yout in zip(YS, ypred, strict=True))


def train(seed: int = SEED, steps: int = 100, lr: float = 0.1) -> tuple[MLP, float]:
    """The notebook's training loop; returns the model and its loss after the last step."""
    random.seed(seed)
    model = MLP(3, [4, 4, 1])
    print(f"{model!r}: {len(model.parameters())} parameters, seed {seed}")
    for k in range(steps):
        loss = loss_of(model)  # forward
        model.zero_grad()  # backward() accumulates, so clear the last step's grads
        loss.backward()
        for p in model.parameters():  # update
            p.data += -lr * p.grad
        if k % 10 == 0:
            print(f"step {k:3d}: loss = {loss.data:.4f}")
    final = loss_of(model).data
    print(f"final loss = {final:.4f}")
    print("final predictions:")
    for x, y in zip(XS, YS, strict=True):
        print(f"  input {x} -> pred {model(x).data:+.4f}, target {y:+.1f}")
    return model, final


# ---- drawings -----------------------------------------------------------------------------------


def draw(graphs: dict[str, Value], out_dir: Path) -> list[Path]:
    """Write each graph as <out_dir>/<name>.svg, or explain why not."""
    if shutil.which("dot") is None:
        print(
            "graphviz's `dot` program is not installed (Debian package `graphviz`), "
            "so the drawings of d and o were skipped"
        )
        return []
    paths = [render(draw_dot(v), out_dir / name, format="svg") for name, v in graphs.items()]
    for p in paths:
        print(f"wrote {p}")
    return paths


# ---- the compiler --------------------------------------------------------------------------------


def compiled_neuron(values: dict[str, Value], o: Value) -> sg.Compiled:
    """Compile the neuron, print its IR and source, and check it against sympy."""
    v = values
    f = sg.compile(o, wrt=[v["w1"], v["w2"], v["b"]], inputs=[v["x1"], v["x2"]], name="neuron")
    print("the IR (value and gradient):")
    print(f.ir)
    print("\nthe generated source (Numba compiles this):")
    print(f.source.split("\n\n\n")[1])
    value, grad = f()
    print(f"compiled: o = {value:.4f}, (w1, w2, b).grad = {np.round(grad, 4).tolist()}")
    report = sg.check(o, wrt=[v["w1"], v["w2"], v["b"]], inputs=[v["x1"], v["x2"]])
    print(f"sympy agrees at {len(report.points)} points "
          f"(largest relative difference {report.max_rel_error:.1e})")
    return f


def train_compiled(seed: int = SEED, steps: int = 100, lr: float = 0.1) -> np.ndarray:
    """The training loop with one compiled batch gradient per step; returns the parameters."""
    random.seed(seed)
    model = MLP(3, [4, 4, 1])
    x = [Value(0.0, label=f"x{i}") for i in range(3)]
    y = Value(0.0, label="y")
    per_example = (model(x) - y) ** 2
    f = sg.compile(per_example, wrt=model.parameters(), inputs=[*x, y], name="mlp_loss")
    data = np.array([[*xi, yi] for xi, yi in zip(XS, YS, strict=True)])
    params = f.current_params()
    for k in range(steps):
        losses, grad = f.batch(params, data, reduce="sum")  # the loss is summed over examples
        params -= lr * grad
        if k % 10 == 0:
            print(f"step {k:3d}: loss = {losses.sum():.4f}")
    print(f"final loss = {f.batch_forward(params, data).sum():.4f} "
          f"({f.stats['nodes']['final']} instructions, compiled in "
          f"{f.stats['seconds']['total']:.2f}s)")
    return params


def main(argv: list[str] | None = None) -> int:
    """Run the whole lecture; returns 0 (the exit status)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out-dir", type=Path, default=Path(__file__).resolve().parent,
        help="where to write d.svg and o.svg (default: next to this script)",
    )
    parser.add_argument("--no-draw", action="store_true", help="skip the drawings")
    args = parser.parse_args(argv)

    print("== part 1: a numerical derivative ==")
    numerical_derivative()
    print("\n== parts 2-5: d = a*b + c ==")
    *_, d = expression()
    print("\n== part 6: a neuron ==")
    values, o = neuron()
    check_neuron(values)
    print("\n== parts 7-8: training MLP(3, [4, 4, 1]) ==")
    model, _ = train()
    if not args.no_draw:
        print("\n== drawings ==")
        draw({"d": d, "o": o}, args.out_dir)

    # ---- compiled ----
    print("\n== compiled: the neuron ==")
    compiled_neuron(values, o)
    print("\n== compiled: training MLP(3, [4, 4, 1]) with f.batch ==")
    params = train_compiled()
    interpreted = np.array([p.data for p in model.parameters()])
    diff = float(np.max(np.abs(params - interpreted)))
    print(f"compiled and interpreted training end with the same parameters to rounding: "
          f"max difference {diff:.1e}")
    if diff > 1e-8:
        raise SystemExit("compiled and interpreted training disagree")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

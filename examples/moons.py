"""micrograd's moons demo, trained with `sg.fit` and the compiled batch gradient.

The demo (micrograd's ``demo.ipynb``): two interleaved half-moons, 100 points, labels -1/+1; a
MLP(2, [16, 16, 1]) with relu hidden layers and a linear output, and the SVM max-margin loss
``relu(1 - y * score)`` per example. The per-example loss is traced once from symgrad's `Value`
graph and compiled (``inputs = x0, x1, y``); `sg.fit` then runs Adam over shuffled minibatches,
each step one compiled ``f.batch(params, rows, reduce="mean")``. (micrograd's demo takes 100
full-batch steps of decaying SGD with L2 regularisation; Adam on minibatches gets there without.)

Before training, one epoch of the interpreted engine (micrograd's way: rebuild the graph, sum,
``backward()``) is timed and its loss and gradient are checked against the compiled ones. After
training the trained vector is written back into the model (`vector_to_parameters`), and the
accuracy is that of the interpreted model, ``model(x)``, on the data. It prints the time per
epoch of both engines, and saves the decision boundary as a PNG when matplotlib is installed (it
is optional).

Run: python examples/moons.py [--epochs N] [--batch-size B] [--lr LR] [--no-plot] [--out moons.png]
     [--seed S]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import symgrad as sg  # noqa: E402
from symgrad.nn import MLP, vector_to_parameters  # noqa: E402
from symgrad.optim import Adam  # noqa: E402


def make_moons(
    n_samples: int = 100, noise: float = 0.1, seed: int = 1337
) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles, like ``sklearn.datasets.make_moons`` (shuffled).

    Returns:
        ``(X, y)``: points ``(n_samples, 2)`` and labels ``(n_samples,)`` in {-1.0, +1.0}
        (-1 for the upper moon, +1 for the lower one).
    """
    rng = np.random.default_rng(seed)
    n_out = n_samples // 2
    n_in = n_samples - n_out
    t_out = np.linspace(0.0, math.pi, n_out)
    t_in = np.linspace(0.0, math.pi, n_in)
    X = np.vstack([
        np.column_stack([np.cos(t_out), np.sin(t_out)]),
        np.column_stack([1.0 - np.cos(t_in), 0.5 - np.sin(t_in)]),
    ])
    y = np.concatenate([-np.ones(n_out), np.ones(n_in)])
    X += rng.normal(scale=noise, size=X.shape)
    order = rng.permutation(n_samples)
    return X[order], y[order]


def make_model(seed: int) -> MLP:
    """micrograd's demo network: relu hidden layers, linear output (337 parameters)."""
    random.seed(seed)
    return MLP(2, [16, 16, 1], activation="relu", output_activation="linear")


def compile_loss(model: MLP) -> sg.Compiled:
    """The per-example max-margin loss ``relu(1 - y * score)``, inputs (x0, x1, y)."""
    x = [sg.Value(0.0, label="x0"), sg.Value(0.0, label="x1")]
    y = sg.Value(0.0, label="y")
    score = model(x)
    loss = (1 + -y * score).relu()
    return sg.compile(loss, wrt=model.parameters(), inputs=[*x, y], name="svm_loss")


def data_loss(f: sg.Compiled, params: np.ndarray, data: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean loss and mean gradient over the data, compiled."""
    values, grad = f.batch(params, data, reduce="mean")
    return float(values.mean()), grad


def interpreted_loss(model: MLP, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """The same as micrograd's demo computes it: build the graph, average, backward."""
    model.zero_grad()
    scores = [model(list(map(sg.Value, xrow))) for xrow in X.tolist()]
    losses = [(1 + -yi * si).relu() for yi, si in zip(y.tolist(), scores, strict=True)]
    total = sum(losses) * (1.0 / len(losses))
    total.backward()
    return total.data, np.array([p.grad for p in model.parameters()])


def interpreted_accuracy(model: MLP, X: np.ndarray, y: np.ndarray) -> float:
    """The share of points the interpreted model, ``model(x)``, puts on the right side."""
    right = [(model(list(map(sg.Value, xrow))).data > 0) == (yi > 0)
             for xrow, yi in zip(X.tolist(), y.tolist(), strict=True)]
    return sum(right) / len(right)


def plot_boundary(model: MLP, X: np.ndarray, y: np.ndarray, out: Path) -> bool:
    """Save the decision boundary (score > 0) of the model's current values with the data as a
    PNG; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no decision-boundary plot "
              "(pip install matplotlib to get one; --no-plot silences this)")
        return False
    x = [sg.Value(0.0, label="x0"), sg.Value(0.0, label="x1")]
    f_score = sg.compile(model(x), wrt=model.parameters(), inputs=x, name="score")
    h = 0.02
    x_min, x_max = X[:, 0].min() - 1, X[:, 0].max() + 1
    y_min, y_max = X[:, 1].min() - 1, X[:, 1].max() + 1
    xx, yy = np.meshgrid(np.arange(x_min, x_max, h), np.arange(y_min, y_max, h))
    grid = np.column_stack([xx.ravel(), yy.ravel()])
    scores = f_score.batch_forward(None, grid)  # params default to the model's .data
    Z = (scores > 0).reshape(xx.shape)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.contourf(xx, yy, Z, cmap=plt.cm.Spectral, alpha=0.8)
    ax.scatter(X[:, 0], X[:, 1], c=y, s=40, cmap=plt.cm.Spectral, edgecolors="k")
    ax.set_xlim(xx.min(), xx.max())
    ax.set_ylim(yy.min(), yy.max())
    ax.set_title("moons: MLP(2, [16, 16, 1]) trained with symgrad")
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"decision boundary saved to {out}")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Train on the moons, print progress and timings, plot; 1 if the engines disagree."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=60, help="passes over the data (default 60)")
    ap.add_argument("--batch-size", type=int, default=10, help="rows per step (default 10)")
    ap.add_argument("--lr", type=float, default=0.01, help="Adam's learning rate (default 0.01)")
    ap.add_argument("--no-plot", action="store_true", help="do not draw the decision boundary")
    ap.add_argument("--out", type=Path, default=Path("moons.png"),
                    help="where to save the plot (default moons.png)")
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        ap.error("--epochs and --batch-size must be at least 1")

    X, y = make_moons(100, noise=0.1, seed=args.seed)
    data = np.column_stack([X, y])
    model = make_model(args.seed)
    print(f"moons: {len(y)} points; MLP(2, [16, 16, 1]), relu hidden, linear output, "
          f"{len(model.parameters())} parameters")

    t0 = time.perf_counter()
    f = compile_loss(model)
    compiled_first = data_loss(f, f.current_params(), data)
    t_compile = time.perf_counter() - t0
    print(f"compiled the per-example loss in {t_compile:.2f} s "
          f"({f.stats['nodes'].get('final', '?')} instructions, {f.lowering})")

    t0 = time.perf_counter()
    interp = interpreted_loss(model, X, y)
    t_interp = time.perf_counter() - t0
    dv = abs(interp[0] - compiled_first[0])
    dg = float(np.max(np.abs(interp[1] - compiled_first[1])))
    print(f"interpreted engine, one epoch: {t_interp * 1e3:.1f} ms; agrees with compiled: "
          f"|loss diff| {dv:.1e}, max |grad diff| {dg:.1e}")
    if dv > 1e-9 or dg > 1e-9:
        print("error: the compiled and interpreted engines disagree", file=sys.stderr)
        return 1

    t0 = time.perf_counter()
    params, losses = sg.fit(f, None, data, optimizer=Adam(args.lr), epochs=args.epochs,
                            batch_size=args.batch_size, seed=args.seed)
    t_train = time.perf_counter() - t0
    # the trained values go back into the model: model(x), the interpreted engine, uses them
    vector_to_parameters(params, model.parameters())
    accuracy = interpreted_accuracy(model, X, y)
    every = max(1, args.epochs // 5)
    for e in [*range(0, args.epochs, every), args.epochs - 1][:6]:
        print(f"epoch {e + 1:4d}/{args.epochs}: mean loss {losses[e]:.4f}")
    print(f"final: loss {data_loss(f, params, data)[0]:.4f}, accuracy {accuracy:.1%} "
          "(the interpreted model, with the trained values written back)")
    per_epoch = t_train / args.epochs
    print(f"time per epoch: compiled {per_epoch * 1e6:.0f} us ({-(-len(y) // args.batch_size)} "
          f"Adam steps), interpreted {t_interp * 1e3:.1f} ms for one gradient; compile "
          f"{t_compile:.2f} s")

    if not args.no_plot:
        plot_boundary(model, X, y, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""micrograd's moons demo, trained with symgrad's compiled batch gradient.

The demo (micrograd's ``demo.ipynb``): two interleaved half-moons, 100 points, labels -1/+1; a
MLP(2, [16, 16, 1]) with relu hidden layers and a linear output; the SVM max-margin loss
``mean(relu(1 - y * score))`` plus L2 regularisation ``1e-4 * sum(p * p)``; 100 steps of gradient
descent with the learning rate decaying as ``1.0 - 0.9 * k / 100``.

Here the per-example loss ``relu(1 - y * score)`` is traced once from symgrad's `Value` graph and
compiled (``inputs = x0, x1, y``); each step is one ``f.batch(params, data, reduce="mean")`` over
the whole data set, and the regularisation (value and gradient) is added in numpy. The accuracy
comes from the same values: ``y * score > 0`` exactly when the example's loss is below 1.

Before training, one epoch of the interpreted engine (micrograd's way: rebuild the graph, sum,
``backward()``) is timed and its loss and gradient are checked against the compiled ones. At the
end it prints the time per epoch of both, and saves the decision boundary as a PNG when
matplotlib is installed (it is optional).

Run: python examples/moons.py [--steps N] [--no-plot] [--out moons.png] [--seed S]
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
from symgrad.nn import MLP  # noqa: E402

ALPHA = 1e-4  # L2 regularisation strength, as in micrograd's demo


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


def compiled_step(
    f: sg.Compiled, params: np.ndarray, data: np.ndarray
) -> tuple[float, float, np.ndarray]:
    """Loss, accuracy and gradient at `params`: compiled data loss + numpy regularisation."""
    values, grad = f.batch(params, data, reduce="mean")
    total = float(values.mean()) + ALPHA * float(params @ params)
    accuracy = float(np.mean(values < 1.0))  # y * score > 0  <=>  relu(1 - y * score) < 1
    return total, accuracy, grad + 2.0 * ALPHA * params


def interpreted_step(
    model: MLP, params: np.ndarray, X: np.ndarray, y: np.ndarray
) -> tuple[float, float, np.ndarray]:
    """The same step as micrograd's demo does it: build the graph, sum, backward."""
    ps = model.parameters()
    for p, v in zip(ps, params, strict=True):
        p.data = float(v)
    model.zero_grad()
    scores = [model(list(map(sg.Value, xrow))) for xrow in X.tolist()]
    losses = [(1 + -yi * si).relu() for yi, si in zip(y.tolist(), scores, strict=True)]
    data_loss = sum(losses) * (1.0 / len(losses))
    reg_loss = ALPHA * sum(p * p for p in ps)
    total = data_loss + reg_loss
    total.backward()
    accuracy = sum((yi > 0) == (si.data > 0) for yi, si in zip(y, scores, strict=True)) / len(y)
    return total.data, float(accuracy), np.array([p.grad for p in ps])


def progress(k: int, steps: int, loss: float, acc: float, tty: bool, width: int = 30) -> None:
    """A one-line text progress bar (redrawn in place on a terminal, every 10% otherwise)."""
    done = (k + 1) * width // steps
    line = (f"step {k + 1:4d}/{steps} [{'#' * done}{'.' * (width - done)}] "
            f"loss {loss:.4f}  accuracy {acc:6.1%}")
    if tty:
        end = "\n" if k + 1 == steps else ""
        print("\r" + line, end=end, flush=True)
    elif k + 1 == steps or k % max(1, steps // 10) == 0:
        print(line, flush=True)


def plot_boundary(
    model: MLP, params: np.ndarray, X: np.ndarray, y: np.ndarray, out: Path
) -> bool:
    """Save the decision boundary (score > 0) with the data as a PNG; False without matplotlib."""
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
    scores, _ = f_score.batch(params, grid, reduce="sum")  # the values are the scores
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
    ap.add_argument("--steps", type=int, default=100, help="training steps (default 100)")
    ap.add_argument("--no-plot", action="store_true", help="do not draw the decision boundary")
    ap.add_argument("--out", type=Path, default=Path("moons.png"),
                    help="where to save the plot (default moons.png)")
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be at least 1")

    X, y = make_moons(100, noise=0.1, seed=args.seed)
    data = np.column_stack([X, y])
    model = make_model(args.seed)
    print(f"moons: {len(y)} points; MLP(2, [16, 16, 1]), relu hidden, linear output, "
          f"{len(model.parameters())} parameters")

    t0 = time.perf_counter()
    f = compile_loss(model)
    params = f.current_params()
    compiled_first = compiled_step(f, params, data)
    t_compile = time.perf_counter() - t0
    print(f"compiled the per-example loss in {t_compile:.2f} s "
          f"({f.stats['nodes'].get('final', '?')} instructions)")

    t0 = time.perf_counter()
    interp = interpreted_step(model, params, X, y)
    t_interp = time.perf_counter() - t0
    dv = abs(interp[0] - compiled_first[0])
    dg = float(np.max(np.abs(interp[2] - compiled_first[2])))
    print(f"interpreted engine, one epoch: {t_interp * 1e3:.1f} ms; agrees with compiled: "
          f"|loss diff| {dv:.1e}, max |grad diff| {dg:.1e}")
    if dv > 1e-9 or dg > 1e-9 or interp[1] != compiled_first[1]:
        print("error: the compiled and interpreted engines disagree", file=sys.stderr)
        return 1

    tty = sys.stdout.isatty()
    t0 = time.perf_counter()
    loss = acc = float("nan")
    for k in range(args.steps):
        loss, acc, grad = compiled_step(f, params, data)
        learning_rate = 1.0 - 0.9 * k / 100
        params -= learning_rate * grad
        progress(k, args.steps, loss, acc, tty)
    t_train = time.perf_counter() - t0
    per_epoch = t_train / args.steps
    print(f"final: loss {loss:.4f}, accuracy {acc:.1%} (before the last update)")
    print(f"time per epoch: compiled {per_epoch * 1e6:.0f} us, interpreted "
          f"{t_interp * 1e3:.1f} ms ({t_interp / per_epoch:,.0f}x); compile {t_compile:.2f} s "
          f"(pays off after {math.ceil(t_compile / max(t_interp - per_epoch, 1e-12))} epochs)")

    if not args.no_plot:
        plot_boundary(model, params, X, y, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

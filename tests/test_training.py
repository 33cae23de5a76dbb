"""Training: the optimisers, `sg.fit` and the parameter-vector helpers of `symgrad.nn`.

Oracles: the optimisers' published update rules written out by hand in NumPy (PyTorch's
definitions of SGD with momentum and of Adam, which is Kingma and Ba's algorithm 1), `fit`'s
epochs recomputed from `Compiled.batch` and the same shuffling, and the moons data set, which a
trained network must separate.
"""

from __future__ import annotations

import math
import random
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad.nn import MLP, parameters_to_vector, vector_to_parameters
from symgrad.optim import SGD, Adam
from tests.cases import load_example

ROOT = Path(__file__).resolve().parent.parent

# ---- the optimisers against their published update rules -----------------------------------------


def _grads(n: int, steps: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=n) * 10.0 ** rng.integers(-3, 3) for _ in range(steps)]


def sgd_reference(p: np.ndarray, grads: list[np.ndarray], lr: float, momentum: float
                  ) -> np.ndarray:
    """torch.optim.SGD: b_1 = g_1, b_t = momentum * b_{t-1} + g_t; p -= lr * b_t."""
    p = p.copy()
    b = None
    for g in grads:
        if momentum:
            b = g.copy() if b is None else momentum * b + g
            g = b
        p = p - lr * g
    return p


def adam_reference(p: np.ndarray, grads: list[np.ndarray], lr: float, b1: float, b2: float,
                   eps: float) -> np.ndarray:
    """Kingma and Ba's algorithm 1, the rule torch.optim.Adam implements."""
    p = p.copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


@pytest.mark.parametrize("momentum", [0.0, 0.9, 0.5])
def test_sgd_follows_its_update_rule(momentum: float) -> None:
    p0 = np.random.default_rng(1).normal(size=50)
    grads = _grads(50, 20)
    p = p0.copy()
    opt = SGD(0.03, momentum=momentum)
    before = p
    for g in grads:
        opt.step(p, g)
    assert p is before  # in place
    np.testing.assert_allclose(p, sgd_reference(p0, grads, 0.03, momentum), rtol=1e-13, atol=0)


@pytest.mark.parametrize(("lr", "betas", "eps"), [
    (1e-3, (0.9, 0.999), 1e-8), (0.05, (0.8, 0.99), 1e-6), (0.1, (0.0, 0.5), 0.0),
])
def test_adam_follows_its_update_rule(lr: float, betas: tuple[float, float], eps: float) -> None:
    p0 = np.random.default_rng(2).normal(size=40)
    grads = _grads(40, 30, seed=3)
    p = p0.copy()
    opt = Adam(lr, betas=betas, eps=eps)
    for g in grads:
        opt.step(p, g)
    assert opt.t == 30
    np.testing.assert_allclose(p, adam_reference(p0, grads, lr, *betas, eps), rtol=1e-12,
                               atol=1e-15)


def adam_pytorch_scalar(p: np.ndarray, grads: list[np.ndarray], lr: float, b1: float,
                        b2: float, eps: float) -> np.ndarray:
    """torch.optim.Adam's single-tensor update, one Python float at a time in the order of its
    scalar kernels: lerp_ (two forms, by the weight), mul_ then addcmul_, addcdiv_."""
    out = []
    for i, p_i in enumerate(p.tolist()):
        m = v = 0.0
        for t, grad in enumerate(grads, start=1):
            g, w = float(grad[i]), 1.0 - b1
            m = m + w * (g - m) if abs(w) < 0.5 else g - (g - m) * (1.0 - w)
            v = v * b2 + ((1.0 - b2) * g) * g
            step_size = lr / (1.0 - b1**t)
            denom = math.sqrt(v) / math.sqrt(1.0 - b2**t) + eps
            p_i = p_i + (-step_size * m) / denom
        out.append(p_i)
    return np.array(out)


@pytest.mark.parametrize(("lr", "betas", "eps"), [
    (1e-3, (0.9, 0.999), 1e-8), (0.05, (0.8, 0.99), 1e-6), (0.1, (0.3, 0.5), 0.0),
])
def test_adam_rounds_as_pytorchs_scalar_code(lr: float, betas: tuple[float, float],
                                             eps: float) -> None:
    p0 = np.random.default_rng(5).normal(size=300)
    grads = _grads(300, 20, seed=6)
    p = p0.copy()
    opt = Adam(lr, betas=betas, eps=eps)
    for g in grads:
        opt.step(p, g)
    np.testing.assert_array_equal(p, adam_pytorch_scalar(p0, grads, lr, *betas, eps))


def test_adam_first_step_moves_each_parameter_by_lr() -> None:
    # with bias correction, step 1 is lr * g / (|g| + eps): lr in the direction of -g
    p = np.zeros(3)
    Adam(0.01, eps=0.0).step(p, np.array([5.0, -0.001, 1e6]))
    np.testing.assert_allclose(p, [-0.01, 0.01, -0.01], rtol=1e-15)


def test_optimiser_state_reset_and_errors() -> None:
    opt = Adam(0.1)
    p = np.ones(4)
    opt.step(p, np.ones(4))
    with pytest.raises(ValueError, match="state for 4 parameters, got 3"):
        opt.step(np.ones(3), np.ones(3))
    opt.reset()
    q = np.ones(3)
    opt.step(q, np.ones(3))  # a first step again
    np.testing.assert_allclose(q, 1.0 - 0.1 / (1.0 + 1e-8), rtol=1e-15)
    with pytest.raises(TypeError, match="1-D float64 numpy array"):
        SGD(0.1).step([1.0, 2.0], [0.1, 0.2])
    with pytest.raises(TypeError, match="float32"):
        SGD(0.1).step(np.ones(2, np.float32), np.ones(2))
    with pytest.raises(ValueError, match=r"grad has shape \(3,\), params \(2,\)"):
        SGD(0.1).step(np.ones(2), np.ones(3))
    ro = np.ones(2)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        SGD(0.1).step(ro, np.ones(2))
    for bad in (lambda: SGD(-1.0), lambda: SGD(0.1, momentum=1.0), lambda: Adam(betas=(0.9, 1.0)),
                lambda: Adam(eps=-1e-8), lambda: Adam(lr=math.nan)):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(TypeError, match="lr must be a number"):
        SGD("0.1")  # type: ignore[arg-type]


# ---- parameters <-> vector -----------------------------------------------------------------------


def test_parameters_round_trip_through_a_vector() -> None:
    random.seed(0)
    model = MLP(3, [4, 1])
    vec = parameters_to_vector(model.parameters())
    assert vec.dtype == np.float64 and vec.shape == (len(model.parameters()),)
    assert vec.tolist() == [p.data for p in model.parameters()]
    vector_to_parameters(vec * 2.0, model)  # a Module is taken too
    assert [p.data for p in model.parameters()] == (vec * 2.0).tolist()
    np.testing.assert_array_equal(parameters_to_vector(model), vec * 2.0)
    with pytest.raises(ValueError, match=r"1-D vector of 21 value\(s\).*\(20,\)"):
        vector_to_parameters(np.zeros(20), model.parameters())
    with pytest.raises(TypeError, match="real numbers"):
        vector_to_parameters(["a"] * 21, model.parameters())
    with pytest.raises(TypeError, match=r"params\[1\] is float"):
        parameters_to_vector([sg.Value(1.0), 2.0])


def test_parameter_lists_must_be_ordered_lists_of_leaves() -> None:
    a, b = sg.Value(1.0, label="a"), sg.Value(2.0, label="b")
    for convert in (parameters_to_vector, lambda ps: vector_to_parameters([0.0, 0.0], ps)):
        with pytest.raises(TypeError, match="got a set, which has no order; pass a list"):
            convert({a, b})
        with pytest.raises(TypeError, match="got a frozenset, which has no order"):
            convert(frozenset({a, b}))
        with pytest.raises(TypeError, match=r"got a dict \(iterating it gives its keys\)"):
            convert({a: "w", b: "b"})
        with pytest.raises(TypeError, match=r"params\[1\] \(unlabelled\) is the result of an "
                                            r"operation \(\*\), not a leaf"):
            convert([a, a * b])
    assert (a.data, b.data) == (1.0, 2.0)  # nothing was written


# ---- fit -----------------------------------------------------------------------------------------


def _regression() -> tuple[sg.Compiled, np.ndarray]:
    """Per-example squared error of a line y = a*x + b; data from a = 2, b = -1."""
    a, b = sg.Value(0.0, label="a"), sg.Value(0.0, label="b")
    x, y = sg.Value(0.0, label="x"), sg.Value(0.0, label="y")
    f = sg.compile((a * x + b - y) ** 2, wrt=[a, b], inputs=[x, y], backend="python")
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=50)
    return f, np.column_stack([X, 2.0 * X - 1.0 + rng.normal(scale=0.01, size=50)])


def test_fit_recovers_a_line() -> None:
    f, data = _regression()
    p0 = np.zeros(2)
    p, losses = sg.fit(f, p0, data, optimizer=Adam(0.05), epochs=60, batch_size=10,
                       progress=False)
    np.testing.assert_allclose(p, [2.0, -1.0], atol=0.02)
    assert losses.shape == (60,) and losses[-1] < 1e-3 < losses[0]
    assert p0.tolist() == [0.0, 0.0]  # the starting point is not modified


def test_fit_is_deterministic_given_the_seed() -> None:
    f, data = _regression()
    runs = [sg.fit(f, None, data, optimizer=SGD(0.1, momentum=0.5), epochs=5, batch_size=7,
                   seed=s, progress=False) for s in (3, 3, 4)]
    assert runs[0][0].tobytes() == runs[1][0].tobytes()
    assert runs[0][1].tobytes() == runs[1][1].tobytes()
    assert runs[0][0].tobytes() != runs[2][0].tobytes()


def test_fit_epoch_losses_equal_a_recomputation() -> None:
    f, data = _regression()
    epochs, bs, seed, lr = 4, 8, 11, 0.2
    p, losses = sg.fit(f, [0.5, 0.5], data, optimizer=SGD(lr), epochs=epochs, batch_size=bs,
                       seed=seed, progress=False)
    # by hand: the same shuffles, minibatch means of the compiled gradient, plain SGD steps
    rng = np.random.default_rng(seed)
    q = np.array([0.5, 0.5])
    want = []
    for _ in range(epochs):
        rows = data[rng.permutation(len(data))]
        seen = []
        for start in range(0, len(rows), bs):
            batch = rows[start: start + bs]
            values = np.array([f.forward(q, r) for r in batch])
            grad = np.mean([f(q, r)[1] for r in batch], axis=0)
            seen += values.tolist()
            q = q - lr * grad
        want.append(float(np.mean(seen)))
    np.testing.assert_allclose(losses, want, rtol=1e-13)
    np.testing.assert_allclose(p, q, rtol=1e-12)


def test_full_batch_fit_steps_with_the_exact_mean_gradient() -> None:
    f, data = _regression()
    p0 = np.array([0.3, -0.2])
    values, grad = f.batch(p0, data, reduce="mean")
    p, losses = sg.fit(f, p0, data, optimizer=SGD(0.1), epochs=1, progress=False)
    assert p.tobytes() == (p0 + grad * -0.1).tobytes()
    assert losses[0] == float(values.sum()) / len(data)


def test_fit_takes_a_loss_compiled_from_sympy() -> None:
    w, b, x, y = sp.symbols("w b x y", real=True)
    f = sg.compile(sp.log(1 + sp.exp(-y * (w * x + b))), wrt=[w, b], inputs=[x, y],
                   backend="python")
    X = np.linspace(-2, 2, 40)
    data = np.column_stack([X, np.where(X > 0.5, 1.0, -1.0)])
    p, losses = sg.fit(f, [0.0, 0.0], data, optimizer=Adam(0.1), epochs=100, batch_size=8,
                       progress=False)
    assert losses[-1] < 0.3 * losses[0]
    scores = p[0] * X + p[1]
    assert np.mean(np.sign(scores) == data[:, 1]) >= 0.95


@pytest.mark.slow
def test_fit_trains_the_moons() -> None:
    moons = load_example(ROOT / "examples" / "moons.py")
    X, y = moons.make_moons(100, noise=0.1, seed=1337)
    model = moons.make_model(1337)
    f = moons.compile_loss(model)
    p, losses = sg.fit(f, None, np.column_stack([X, y]), optimizer=Adam(0.02), epochs=60,
                       batch_size=20, seed=0, progress=False)
    assert losses[-1] < 0.2 * losses[0]
    vector_to_parameters(p, model.parameters())
    # the interpreted model, with the trained values written back, classifies the moons
    correct = [(model([sg.Value(a), sg.Value(b)]).data > 0) == (yi > 0)
               for (a, b), yi in zip(X.tolist(), y.tolist(), strict=True)]
    assert np.mean(correct) >= 0.95


def test_fit_progress_bar_shows_the_running_loss(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    f, data = _regression()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # a terminal
    sg.fit(f, None, data, optimizer=SGD(0.1), epochs=3, batch_size=25, progress=True)
    err = capsys.readouterr().err
    assert "fit f" in err and "epoch 3/3" in err and "loss" in err and "6/6" in err


def test_fit_progress_bar_stays_off_a_stderr_that_is_not_a_terminal(
        capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    assert not sys.stderr.isatty()  # captured: as a log file or a pipe would be
    f, data = _regression()
    sg.fit(f, None, data, optimizer=SGD(0.1), epochs=3, batch_size=25, progress=True)
    assert capsys.readouterr().err == ""


def test_fit_warns_when_the_loss_stops_being_finite() -> None:
    f, data = _regression()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, losses = sg.fit(f, None, data, optimizer=SGD(1e3), epochs=30, batch_size=10,
                           progress=False)
    assert not np.isfinite(losses[-1])
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    found = [m for m in msgs if "fit: the loss is" in m]
    assert len(found) == 1, msgs
    # where, as the user can count it (not row numbers of a shuffled copy), and what to check
    assert re.search(r"in epoch \d+ of 30, minibatch \d+ of 5;", found[0]), found[0]
    assert "rows" not in found[0] and "shuffled" not in found[0]
    assert "np.isfinite(X).all()" in found[0] and "learning rate" in found[0]


def test_fit_names_the_epoch_of_a_full_batch_that_is_not_finite() -> None:
    f, data = _regression()
    data = data.copy()
    data[7, 0] = math.nan
    with pytest.warns(RuntimeWarning, match=r"loss is nan in epoch 1 of 2 \(full batch\)"):
        sg.fit(f, None, data, optimizer=SGD(0.1), epochs=2, progress=False)


def test_fit_refuses_bad_arguments() -> None:
    f, data = _regression()
    opt = SGD(0.1)
    with pytest.raises(TypeError, match="compiled loss"):
        sg.fit(lambda p: p, None, data, optimizer=opt, epochs=1)  # type: ignore[arg-type]
    two = sg.compile([sg.Value(1.0, label="a") * 2, sg.Value(2.0)], backend="python")
    with pytest.raises(ValueError, match="single output"):
        sg.fit(two, None, np.zeros((2, 0)), optimizer=opt, epochs=1)
    with pytest.raises(ValueError, match=r"epochs must be an int >= 0"):
        sg.fit(f, None, data, optimizer=opt, epochs=-1)
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1"):
        sg.fit(f, None, data, optimizer=opt, epochs=1, batch_size=0)
    with pytest.raises(ValueError, match=r"X: expected 2 column"):
        sg.fit(f, None, data[:, :1], optimizer=opt, epochs=1)
    with pytest.raises(ValueError, match=r"params: expected 2 value"):
        sg.fit(f, [1.0], data, optimizer=opt, epochs=1)
    with pytest.raises(TypeError, match="step"):
        sg.fit(f, None, data, optimizer=object(), epochs=1)  # type: ignore[arg-type]
    for cls in (SGD, Adam):
        with pytest.raises(TypeError, match=rf"optimizer: expected an optimizer instance such "
                                            rf"as Adam\(1e-3\), got the class {cls.__name__}$"):
            sg.fit(f, None, data, optimizer=cls, epochs=1)  # type: ignore[arg-type]
    for seed in (1.5, "0", None, True, np.float64(2.0)):
        with pytest.raises(TypeError, match=r"fit: seed must be an int, got"):
            sg.fit(f, None, data, optimizer=opt, epochs=1, seed=seed)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"fit: seed must be an int >= 0, got -1"):
        sg.fit(f, None, data, optimizer=opt, epochs=1, seed=-1)
    sg.fit(f, None, data, optimizer=opt, epochs=1, seed=np.int64(3), progress=False)
    p, losses = sg.fit(f, None, data, optimizer=opt, epochs=0, batch_size=1000, progress=False)
    assert losses.shape == (0,) and p.tolist() == [0.0, 0.0]

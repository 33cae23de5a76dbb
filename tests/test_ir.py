"""The IR: golden printouts, the verifier, the namer and literal equality.

The golden texts are what a person reads (`print(f.ir)`), written out literally so that a change
in the printer, the tracer, autodiff or the passes shows up as a readable diff.
"""

from __future__ import annotations

import builtins
import keyword
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import symgrad as sg
from symgrad import ir
from symgrad.ir import Builder, Const, Func, Instr, IRError, Var
from symgrad.trace import trace
from tests.cases import lecture_neuron

# ---- golden text ---------------------------------------------------------------------------------

NEURON_TRACE = """\
f(w1, w2, b, x1, x2):
  v0 = mul(x1, w1)
  v1 = mul(x2, w2)
  v2 = add(v0, v1)
  n = add(v2, b)
  o = tanh(n)
  return o"""

# the backward pass reads the forward's o (tanh' = 1 - o^2), the seed 1.0 has been simplified
# away, and the derivatives by x1 and x2 (not asked for) have been removed as dead code
NEURON_VALUE_AND_GRAD = """\
f_value_and_grad(w1, w2, b, x1, x2):
  v0 = mul(x1, w1)
  v1 = mul(x2, w2)
  v2 = add(v0, v1)
  n = add(v2, b)
  o = tanh(n)
  v3 = mul(o, o)                    # grad of o = tanh(n)
  b_bar = sub(1.0, v3)              # grad of o = tanh(n)
  w2_bar = mul(x2, b_bar)           # grad of v1 = mul(x2, w2)
  w1_bar = mul(x1, b_bar)           # grad of v0 = mul(x1, w1)
  return o, w1_bar, w2_bar, b_bar"""


def test_lecture_neuron_trace_text() -> None:
    o, wrt, inputs = lecture_neuron()
    func = trace(o, wrt, inputs).func
    assert str(func) == NEURON_TRACE
    assert ir.verify(func) is func


def test_lecture_neuron_value_and_grad_text() -> None:
    o, wrt, inputs = lecture_neuron()
    f = sg.compile(o, wrt=wrt, inputs=inputs, backend="python")
    assert str(f.ir) == NEURON_VALUE_AND_GRAD
    assert str(f.traced_ir) == NEURON_TRACE


def test_printing_is_deterministic() -> None:
    texts = set()
    for _ in range(3):
        o, wrt, inputs = lecture_neuron()
        texts.add(str(sg.compile(o, wrt=wrt, inputs=inputs, backend="python").ir))
    assert len(texts) == 1


def test_literals_print_as_source() -> None:
    b = Builder()
    x = b.arg("x")
    y = b.emit("add", [x, -2.5])
    y = b.emit("mul", [y, math.inf])
    y = b.emit("sub", [y, -math.inf])
    y = b.emit("add", [y, math.nan])
    y = b.emit("pow", [y], [-1.0])
    y = b.emit("add", [y, -0.0])
    assert str(b.build("g", [y, Const(1e-300)])) == """\
g(x):
  v0 = add(x, (-2.5))
  v1 = mul(v0, np.inf)
  v2 = sub(v1, (-np.inf))
  v3 = add(v2, np.nan)
  v4 = pow(v3, p=(-1.0))
  v5 = add(v4, (-0.0))
  return v5, 1e-300"""


# ---- verify --------------------------------------------------------------------------------------


def _func(
    body: list[Instr], results: list[ir.Atom], args: tuple[Var, ...] = (Var(1, "x"),)
) -> Func:
    return Func("g", args, tuple(body), tuple(results))


X = Var(1, "x")


def test_verify_accepts_a_good_function() -> None:
    v2, v3 = Var(2), Var(3)
    f = _func([Instr(v2, "tanh", (X,)), Instr(v3, "add", (v2, Const(1.0)))], [v3, X, Const(2.0)])
    assert ir.verify(f) is f


@pytest.mark.parametrize(
    ("body", "results", "message"),
    [
        pytest.param(
            [Instr(Var(2), "add", (X, Var(3))), Instr(Var(3), "tanh", (X,))], [Var(2)],
            "before it is defined", id="use-before-def",
        ),
        pytest.param(
            [Instr(Var(2), "tanh", (X,)), Instr(Var(2), "exp", (X,))], [Var(2)],
            "assigned twice", id="double-assignment",
        ),
        pytest.param(
            [Instr(X, "tanh", (X,))], [X], "assigned twice", id="assigns-an-argument",
        ),
        pytest.param(
            [Instr(Var(2), "add", (X,))], [Var(2)], "takes 2 operand", id="too-few-operands",
        ),
        pytest.param(
            [Instr(Var(2), "tanh", (X, X))], [Var(2)], "takes 1 operand", id="too-many-operands",
        ),
        pytest.param(
            [Instr(Var(2), "pow", (X,))], [Var(2)], "parameters", id="missing-parameter",
        ),
        pytest.param(
            [Instr(Var(2), "frobnicate", (X,))], [Var(2)], "unknown op 'frobnicate'",
            id="unknown-op",
        ),
        pytest.param(
            [Instr(Var(2), "tanh", (X,))], [Var(7)], "never defined", id="undefined-result",
        ),
        pytest.param(
            [Instr(Var(2), "tanh", (2.0,))], [Var(2)], "not an atom",  # type: ignore[arg-type]
            id="operand-not-an-atom",
        ),
    ],
)
def test_verify_rejects(body: list[Instr], results: list[ir.Atom], message: str) -> None:
    with pytest.raises(IRError, match=message):
        ir.verify(_func(body, results))


def test_verify_rejects_an_argument_listed_twice() -> None:
    with pytest.raises(IRError, match="listed twice"):
        ir.verify(_func([], [X], args=(X, X)))


def test_irerror_is_a_valueerror() -> None:
    assert issubclass(IRError, ValueError)


def test_builder_rejects_an_unknown_op() -> None:
    with pytest.raises(IRError, match="unknown op 'frobnicate'"):
        Builder().emit("frobnicate", [1.0])


# ---- names ---------------------------------------------------------------------------------------

HOSTILE_LABELS = [
    'x"); import os #',
    "it's",
    "two words",
    "line\nbreak",
    "tab\there",
    "λ",
    "ü",
    "数",
    "lambda",
    "class",
    "None",
    "match",
    "print",
    "np",
    "math",
    "params",
    "inputs",
    "grad",
    "out",
    "x",
    "x",
    "x_2",
    "v3",
    "v0",
    "1st",
    "",
    "_",
    "__import__",
    "a" * 200,
    "x_bar",
]


def _assert_good_names(nm: dict[Var, str]) -> None:
    names = list(nm.values())
    assert len(set(names)) == len(names), names
    for n in names:
        assert n.isidentifier() and n.isascii(), n
        assert not keyword.iskeyword(n) and not keyword.issoftkeyword(n), n
        assert n not in dir(builtins) and n not in ("np", "math"), n


def test_names_of_hostile_labels_are_distinct_identifiers() -> None:
    b = Builder()
    args = [b.arg(label) for label in HOSTILE_LABELS]
    hints = reversed(HOSTILE_LABELS)
    outs = [b.emit("tanh", [a], hint=h) for a, h in zip(args, hints, strict=True)]
    func = b.build("g", outs)
    nm = ir.names(func)
    assert len(nm) == 2 * len(HOSTILE_LABELS)
    _assert_good_names(nm)
    # labels that are already good identifiers keep their name
    assert nm[args[HOSTILE_LABELS.index("x")]] == "x"
    assert nm[args[HOSTILE_LABELS.index("x_bar")]] == "x_bar"
    # and the printout has no raw label text in it
    text = str(func)
    assert "import os" not in text and '"' not in text and "\t" not in text
    assert text.count("\n") == len(func.body) + 1


@given(st.lists(st.text(max_size=12), min_size=1, max_size=12))
def test_names_are_always_distinct_identifiers(labels: list[str]) -> None:
    b = Builder()
    args = [b.arg(label) for label in labels]
    outs = [b.emit("neg", [a], hint=label) for a, label in zip(args, labels, strict=True)]
    nm = ir.names(b.build("g", outs))
    assert len(nm) == 2 * len(labels)
    _assert_good_names(nm)


def test_temporaries_do_not_clash_with_labels_shaped_like_them() -> None:
    b = Builder()
    a = b.arg("v0")
    c = b.arg("v1")
    u = b.emit("mul", [a, c])  # unlabelled: gets a v-number
    w = b.emit("add", [u, a], hint="v1")
    nm = ir.names(b.build("g", [w]))
    _assert_good_names(nm)
    assert len(set(nm.values())) == 4


# ---- Const ---------------------------------------------------------------------------------------


def test_const_equality_is_bitwise() -> None:
    assert Const(0.0) != Const(-0.0)
    assert Const(math.nan) == Const(math.nan)
    assert hash(Const(math.nan)) == hash(Const(math.nan))
    assert Const(1.0) == Const(1)
    assert Const(0.1 + 0.2) != Const(0.3)
    assert len({Const(0.0), Const(-0.0), Const(math.nan), Const(math.nan)}) == 3
    assert Const(2.0) != 2.0


def test_var_repr_is_short() -> None:
    assert repr(Var(4, "x")) == "v4"
    assert Var(4, "x") == Var(4, "y")  # hints are printing data only


def test_gradient_names_follow_the_printed_argument_names() -> None:
    # two leaves labelled alike print as lambda_ and lambda__2: each gradient is named after its
    # own argument (not swapped), and a label with no identifier characters gives v0_bar
    a, b = sg.Value(1.0, label="lambda"), sg.Value(2.0, label="lambda")
    c = sg.Value(3.0, label='é"\n')
    f = sg.compile((a * b * c).tanh(), wrt=[a, b, c], backend="python", name="f")
    text = str(f.ir)
    assert text.splitlines()[0] == "f_value_and_grad(lambda_, lambda__2, v0):"
    assert "lambda__bar = mul(lambda__2, " in text and "lambda__2_bar = mul(lambda_, " in text
    assert text.splitlines()[-1].strip() == "return v3, lambda__bar, lambda__2_bar, v0_bar"
    # and the names are only names: the gradient is the engine's
    out = (a * b * c).tanh()
    out.backward()
    assert list(f()[1]) == [a.grad, b.grad, c.grad]

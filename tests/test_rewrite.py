"""The IR rewriter: replaying instructions through a Builder with a substitution and a hook.

Every IR -> IR transform is a replay, so three things must hold for any function: a plain replay
reproduces it (same text, same numbers), a replay through a substitution computes the function
with its arguments replaced, and the provenance of derivative lines (which forward instruction
each came from) survives, renamed into the new function, whatever the builder folds away.
Oracles: the IR's own evaluator, and golden text.
"""

from __future__ import annotations

import math

from hypothesis import given, note

from symgrad import autodiff, ir, passes
from symgrad.ir import Builder, Const, Func, Instr, Var
from symgrad.rewrite import Substitution, live, rebuild, replay
from tests.strategies import Case, programs, same_float, to_ir

raw_cases = programs(safe=False, max_ops=10, n_outputs=2)


def _grad(case: Case) -> Func:
    return autodiff.value_and_grad(to_ir(case.program), case.program.n_inputs)


def _same_results(f: Func, g: Func, args: list[float]) -> None:
    for a, b in zip(ir.evaluate(f, args), ir.evaluate(g, args), strict=True):
        assert same_float(a, b), f"{a!r} != {b!r} at {args}\n{f}\n-- vs --\n{g}"


# ---- provenance ----------------------------------------------------------------------------------


def test_provenance_stamps_what_is_emitted_inside_and_nests() -> None:
    b = Builder()
    x = b.arg("x")
    y = b.emit("sin", [x], hint="y")
    fwd = b.body[-1]
    with b.provenance("grad", fwd):
        c = b.emit("cos", [x])
        with b.provenance("tangent", Instr(c, "cos", (x,))):
            t = b.emit("neg", [c])
        d = b.emit("mul", [t, 2.0])
    e = b.emit("add", [y, d])
    assert [(i.note, i.origin) for i in b.body] == [
        (None, None), ("grad", fwd), ("tangent", b.body[1]), ("grad", fwd), (None, None),
    ]
    assert str(b.build("f", [e])) == """\
f(x):
  y = sin(x)
  v0 = cos(x)                       # grad of y = sin(x)
  v1 = neg(v0)                      # tangent of v0 = cos(x)
  v2 = mul(v1, 2.0)                 # grad of y = sin(x)
  v3 = add(y, v2)
  return v3"""


def test_forward_instructions_have_no_note() -> None:
    b = Builder()
    b.emit("exp", [b.arg("x")])
    (ins,) = b.body
    assert ins.origin is None and ins.note is None


def test_provenance_is_renamed_through_a_replay_and_folded_origins_print_as_blanks() -> None:
    # y = x * 1.0 is simplified away, so the derivative line's origin no longer exists: it
    # prints as `_`; t = tanh(x) survives under its new name
    b = Builder()
    x = b.arg("x")
    y = b.emit("mul", [x, 1.0], hint="y")
    t = b.emit("tanh", [x], hint="t")
    with b.provenance("grad", b.defs[y]):
        gy = b.emit("mul", [x, 3.0])
    with b.provenance("grad", b.defs[t]):
        gt = b.emit("sub", [1.0, b.emit("mul", [t, t])])
    f = b.build("f", [y, t, gy, gt])
    assert str(passes.simplify(f)) == """\
f(x):
  t = tanh(x)
  v0 = mul(x, 3.0)                  # grad of _ = mul(x, 1.0)
  v1 = mul(t, t)                    # grad of t = tanh(x)
  v2 = sub(1.0, v1)                 # grad of t = tanh(x)
  return x, t, v0, v2"""


@given(raw_cases)
def test_a_plain_replay_reproduces_any_function(case: Case) -> None:
    # gradients carry provenance on most lines: all of it must come through unchanged
    note(str(case))
    f = _grad(case)
    g = rebuild(f, Builder())
    assert str(g) == str(f)
    assert [(i.op, i.note) for i in g.body] == [(i.op, i.note) for i in f.body]
    _same_results(f, g, list(case.inputs))


# ---- substitution and hooks ----------------------------------------------------------------------


@given(raw_cases)
def test_substituting_literals_for_the_arguments_folds_to_the_results(case: Case) -> None:
    note(str(case))
    f = to_ir(case.program)
    b = Builder(fold=True)
    b.arg("unused")
    sub = replay(f.body, b, Substitution(zip(f.args, map(Const, case.inputs), strict=True)))
    assert b.body == []
    for r, want in zip(f.results, ir.evaluate(f, list(case.inputs)), strict=True):
        got = sub(r)
        assert isinstance(got, Const) and same_float(got.value, want)


def _sub_as_add_of_neg(b: Builder, ins: Instr, sub: Substitution) -> Var | Const | None:
    # x - y is x + (-y) in IEEE arithmetic, bit for bit
    if ins.op != "sub":
        return None
    x, y = map(sub, ins.args)
    return b.emit("add", [x, b.emit("neg", [y])], hint=ins.out.hint)


def test_a_hook_replaces_instructions_and_its_lines_keep_their_provenance() -> None:
    b = Builder()
    x, y = b.arg("x"), b.arg("y")
    d = b.emit("sub", [x, y], hint="d")
    with b.provenance("grad", b.defs[d]):
        g = b.emit("sub", [0.0, b.emit("exp", [d])])
    f = b.build("f", [d, g])
    assert str(rebuild(f, Builder(), hook=_sub_as_add_of_neg)) == """\
f(x, y):
  v0 = neg(y)
  d = add(x, v0)
  v1 = exp(d)                       # grad of _ = sub(x, y)
  v2 = neg(v1)                      # grad of _ = sub(x, y)
  v3 = add(0.0, v2)                 # grad of _ = sub(x, y)
  return d, v3"""


@given(raw_cases)
def test_a_hook_with_an_exact_replacement_keeps_every_result(case: Case) -> None:
    note(str(case))
    f = _grad(case)
    g = ir.verify(rebuild(f, Builder(), hook=_sub_as_add_of_neg))
    assert not any(i.op == "sub" for i in g.body)
    _same_results(f, g, list(case.inputs))
    _same_results(f, g, [math.inf, -0.0, math.nan][: len(f.args)] + [0.0] * (len(f.args) - 3))


# ---- scratch builders and liveness ---------------------------------------------------------------


def test_a_scratch_builders_vars_never_equal_its_parents() -> None:
    b = Builder()
    x = b.arg("x")
    mine = [x, b.emit("exp", [x]), b.emit("log", [x])]
    s = b.scratch()
    theirs = [s.emit("sin", [x]), s.emit("cos", [mine[1]]), s.arg("z")]
    assert not set(mine) & set(theirs)
    # what is kept is copied back into b under b's own names
    kept = live(s.body, [theirs[1]])
    assert [i.op for i in kept] == ["cos"]
    got = replay(kept, b)(theirs[1])
    assert b.defs[got].op == "cos" and b.defs[got].args == (mine[1],)


def test_live_keeps_what_the_roots_need_in_order() -> None:
    b = Builder()
    x, y = b.arg("x"), b.arg("y")
    u = b.emit("exp", [x])
    b.emit("log", [y])  # dead
    w = b.emit("mul", [u, y])
    b.emit("sin", [w])  # dead
    assert [i.op for i in live(b.body, [w, Const(2.0), x])] == ["exp", "mul"]
    assert live(b.body, []) == []

"""The examples run and print the lecture's numbers.

Oracle: the numbers the notebook states (o = 0.7071, its grads -1.5, 0.5, 1.0, 0.0; d's grads
-3, 2, 1), read back from the script's output.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cases import load_example

ROOT = Path(__file__).resolve().parent.parent
LECTURE = ROOT / "examples" / "lecture.py"


def _number(output: str, pattern: str) -> float:
    match = re.search(pattern + r"\s*(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)", output)
    assert match, f"no line matching {pattern!r} in:\n{output}"
    return float(match.group(1))


def test_lecture_functions_can_be_imported(capsys: pytest.CaptureFixture[str]) -> None:
    lecture = load_example(LECTURE)
    assert abs(lecture.numerical_derivative() - 14.0) < 1e-3
    a, b, c, _ = lecture.expression()
    assert (a.grad, b.grad, c.grad) == (-3.0, 2.0, 1.0)
    values, o = lecture.neuron()
    assert abs(o.data - 0.7071067811865476) < 1e-12
    assert lecture.check_neuron(values) < 1e-8
    capsys.readouterr()


@pytest.mark.slow
def test_lecture_script_prints_the_notebook_numbers(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, str(LECTURE), "--out-dir", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert abs(_number(out, r"f'\(3\.0\) ~=") - 14.0) < 1e-3
    assert _number(out, r"a\.grad =") == -3.0
    assert _number(out, r"b\.grad =") == 2.0
    assert _number(out, r"c\.grad =") == 1.0
    assert "o = tanh(n) = 0.7071" in out
    expected = {"x1": -1.5, "x2": 0.5, "w1": 1.0, "w2": 0.0}
    for name, grad in expected.items():
        assert _number(out, rf"{name}\.grad =") == grad
    assert _number(out, r"finite differences agree with backward\(\) to") < 1e-6
    assert _number(out, r"final loss =") < 0.05
    # 10 progress lines from the interpreted loop, 10 from the compiled one
    assert len(re.findall(r"step\s+\d+: loss =", out)) == 20
    compiled = out[out.index("== compiled: the neuron =="):]
    assert "o = tanh(n)" in compiled and "w1_bar = mul(x1, b_bar)" in compiled
    assert "compiled: o = 0.7071, (w1, w2, b).grad = [1.0, 0.0, 0.5]" in compiled
    assert "sympy agrees at" in compiled
    assert _number(out, r"same parameters to rounding: max difference") < 1e-8
    if shutil.which("dot"):
        assert (tmp_path / "d.svg").exists() and (tmp_path / "o.svg").exists()
    else:
        assert "not installed" in out


@pytest.mark.slow
def test_fit_scipy_finds_the_true_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("scipy")
    example = load_example(ROOT / "examples" / "fit_scipy.py")
    assert example.main(["--points", "120"]) == 0
    out = capsys.readouterr().out
    for method in ("BFGS (gradient)", "trust-exact (gradient and Hessian)",
                   "Newton-CG (gradient and Hessian)"):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(method))
        assert _number(line, r"max error") < 0.05, line
    assert "4 params (a, b, c, d), 2 inputs (t, y)" in out

"""Smoke tests: the benchmark and the moons example run end to end and print what they promise.

They run the scripts as a user would (subprocesses, from the checkout) and assert on exit status
and output only, never on timings.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 900  # seconds: numba compiles on a slow shared machine


def run_script(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a script of the checkout with this interpreter; symgrad's cache in `cwd`."""
    env = {**os.environ, "SYMGRAD_CACHE_DIR": str(cwd / "symgrad-cache")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=TIMEOUT, check=False,
    )


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    """The tail of a script's output, for an assertion message."""
    return (f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}"
            f"\n--- stderr\n{proc.stderr[-3000:]}")


@pytest.mark.slow
def test_bench_quick_prints_the_table(tmp_path: Path) -> None:
    proc = run_script([str(ROOT / "benchmarks" / "bench.py"), "--quick"], tmp_path)
    assert proc.returncode == 0, explain(proc)
    out = proc.stdout
    assert "# machine:" in out, explain(proc)
    header = next((ln for ln in out.splitlines() if ln.startswith("model")), "")
    for column in ("contender", "compile s", "per call", "vs symgrad"):
        assert column in header, explain(proc)
    for row in ("lecture neuron x100", "MLP(2,[16,16,1])x100", "symgrad compiled"):
        assert row in out, explain(proc)
    assert "FAILED" not in out, explain(proc)
    assert "MLP(16,[64,64,1])" not in out  # --quick: small models only


@pytest.mark.slow
def test_moons_trains_a_few_steps(tmp_path: Path) -> None:
    proc = run_script(
        [str(ROOT / "examples" / "moons.py"), "--steps", "5", "--no-plot"], tmp_path
    )
    assert proc.returncode == 0, explain(proc)
    out = proc.stdout
    assert "step    5/5" in out and "loss" in out and "accuracy" in out, explain(proc)
    assert "time per epoch: compiled" in out, explain(proc)
    assert not list(tmp_path.glob("*.png"))  # --no-plot

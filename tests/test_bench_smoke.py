"""Smoke tests: the benchmark and the moons example run end to end and print what they promise.

They run the scripts as a user would (subprocesses, from the checkout) and assert on exit status
and output only, never on timings. A few fast tests check the benchmark's own pieces (the NumPy
limit, the per-example JAX contender, the busy process, the targets table) against independent
computations.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import symgrad as sg

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 900  # seconds: numba compiles on a slow shared machine
TARGETS = ("lecture neuron x100:", "MLP(2,[16,16,1])x100:", "MLP(16,[64,64,1])x1000:",
           "MLP(2,[16,16,1])x256 per-example:", "MLP(16,[64,64,1])x1000 under load:",
           "cold start [numba]", "warm start [numba]")
STATUSES = ("met", "NOT met", "not measured")


def load_bench() -> ModuleType:
    """benchmarks/bench.py imported as a module."""
    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


bench = load_bench()


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


def section(out: str, first_word: str) -> list[str]:
    """The table whose header line starts with `first_word`: header to the first blank line."""
    lines = out.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith(first_word + " ")), None)
    assert start is not None, f"no table starting with {first_word!r} in\n{out}"
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


@pytest.mark.slow
def test_bench_quick_prints_the_tables(tmp_path: Path) -> None:
    proc = run_script([str(ROOT / "benchmarks" / "bench.py"), "--quick"], tmp_path)
    assert proc.returncode == 0, explain(proc)
    out = proc.stdout
    assert "# machine:" in out, explain(proc)
    main = section(out, "model")
    for column in ("contender", "compile s", "per call", "vs symgrad"):
        assert column in main[0], explain(proc)
    rows = "\n".join(main[2:])
    for row in ("lecture neuron x100", "MLP(2,[16,16,1])x100", "symgrad compiled",
                "MLP(2,[16,16,1])x256 per-example", "MLP(2,[16,16,1])x100 under load",
                "numpy BLAS limit"):
        assert row in rows, explain(proc)
    # JAX is optional: without it its rows say so and the targets against it are not measured
    jax_row = ("jax.jit vmap value_and_grad" if importlib.util.find_spec("jax")
               else "jax not installed")
    assert jax_row in out, explain(proc)
    assert "MLP(16,[64,64,1])" not in rows  # --quick: small models only
    cold = section(out, "backend")
    assert "cold s" in cold[0] and "warm s" in cold[0], explain(proc)
    assert cold[2].split()[0] == "numba" and "round(s)" in cold[2], explain(proc)
    targets = section(out, "target")
    assert [h in targets[0] for h in ("measured", "threshold", "status")] == [True] * 3
    for what in TARGETS:
        row = next((ln for ln in targets[2:] if ln.startswith(what)), "")
        assert any(f"  {s}  " in row or row.endswith(s) for s in STATUSES), explain(proc)
    dist = section(out, "contender")  # the distributed workload's table
    assert "rows/s" in dist[0] and "speed vs local" in dist[0], explain(proc)
    for row in ("local f.batch", "dask threads, 16 blocks", "LocalCluster 1 worker",
                "LocalCluster 2 workers x 1 thread, 256 blocks"):
        assert any(ln.startswith(row) for ln in dist[2:]), explain(proc)
    assert "LocalCluster 2 workers: " in out and " per block (" in out, explain(proc)
    large = [ln for ln in targets if ln.startswith("MLP(16,[64,64,1])x1000")]
    assert len(large) == 2 and all("not measured" in ln for ln in large), explain(proc)
    assert "FAILED" not in out, explain(proc)


def test_limit_matches_the_interpreted_engine() -> None:
    model = bench.make_model("t", 3, [5, 4, 1], 9, seed=7)
    value, grad = bench.setup_limit(model)()
    ref_value, ref_grad = bench.setup_interp(model, sg.Value, "tanh", model.n)()
    assert value == pytest.approx(ref_value, rel=1e-12)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-11, atol=1e-13)


def test_per_example_jax_rows_sum_to_the_limit() -> None:
    pytest.importorskip("jax")
    model = bench.make_model("t", 2, [6, 1], 11, seed=3)
    values, grads = bench.setup_jax_vmap(model)()
    value, grad = bench.setup_limit(model)()
    assert np.asarray(grads).shape == (model.n, bench.n_params(model.sizes))
    assert float(np.sum(values)) == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(np.sum(grads, axis=0), grad, rtol=1e-11, atol=1e-13)


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_busy_process_spins_then_stops() -> None:
    with bench.busy_process() as busy:
        time.sleep(0.5)
        assert busy.proc.poll() is None
        assert _cpu_ticks(busy.proc.pid) > 0
    assert busy.proc.returncode is not None
    assert busy.trouble == []


def _result(name: str, per_call: float | None, **kw: str) -> object:
    r = bench.Result(name, name, **kw)
    r.samples = [per_call] if per_call is not None else []
    return r


def test_targets_say_met_not_met_and_why_not_measured() -> None:
    small = bench.make_model("small", 2, [16, 16, 1], 100, seed=1)
    neuron = bench.make_neuron(100, seed=1)
    results = [
        (neuron, [_result("symgrad:numba", 1.0), _result("jax", 4.0)]),
        (small, [_result("symgrad:numba", 1.0), _result("jax", 1.0, skipped="--skip jax")]),
    ]
    cold = [bench.ColdResult("numba", cold=[5.0], warm=[0.1], process_cold=[6.0],
                             process_warm=[1.0])]
    text = bench.targets_report(results, cold, "numba")
    rows = {ln.split(":")[0]: ln for ln in text.splitlines()}
    neuron_row = rows["lecture neuron x100"]
    assert "0.25x" in neuron_row and neuron_row.endswith("  met"), neuron_row
    assert "not measured" in rows["MLP(2,[16,16,1])x100"]
    assert "--skip jax" in rows["MLP(2,[16,16,1])x100"]
    assert "workload not run" in rows["MLP(16,[64,64,1])x1000"]
    assert "NOT met" in rows["cold start [numba]"] and "5.00 s" in rows["cold start [numba]"]
    assert "  met  " in rows["warm start [numba]"]
    assert "2 met, 1 NOT met, 4 not measured." in text


@pytest.mark.slow
def test_moons_trains_a_few_epochs(tmp_path: Path) -> None:
    proc = run_script(
        [str(ROOT / "examples" / "moons.py"), "--epochs", "5", "--no-plot"], tmp_path
    )
    assert proc.returncode == 0, explain(proc)
    out = proc.stdout
    assert "epoch    5/5: mean loss" in out and "accuracy" in out, explain(proc)
    assert "with the trained values written back" in out, explain(proc)
    assert "time per epoch: compiled" in out, explain(proc)
    # fit's progress bar is on (the default) but stays off stderr that is a pipe, not a terminal
    assert "fit svm_loss" not in proc.stderr, explain(proc)
    assert not list(tmp_path.glob("*.png"))  # --no-plot

"""How long `sg.check` takes by model size: the lecture's tanh MLP, the loss ``(out - y)**2``.

For each model MLP(nin, [h, h, 1]) (weights from ``random.seed(0)``, one example's inputs and
target as the check's inputs) it runs ``sg.check(loss, wrt=model.parameters(), inputs=x + [y])``
with its defaults (the leaves' values and 3 random points, 2 random directions a point for the
numeric method) in a fresh Python process, and reports the method check chose and the seconds
check took, from the call to its return (compiling included):

- "cold": symgrad's cache (``SYMGRAD_CACHE_DIR``) and Numba's (``NUMBA_CACHE_DIR``, which holds
  symgrad's own compiled helpers too) are new empty directories: everything is compiled;
- "warm": a second process with those caches filled, as when a test suite runs again.

Each is the median of ``--rounds`` runs (cold and warm interleaved). ``--symbolic`` adds rows
that force ``method="symbolic"`` (whole-graph sympy) on models up to ``--symbolic-max``
parameters where check chose the numeric method, for comparison. Nothing here asserts on time;
the table goes to stdout.

Usage::

    python benchmarks/check_times.py                      # the README's table
    python benchmarks/check_times.py --models 2x8,16x64 --rounds 3 --symbolic
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = "2x4,2x8,2x16,16x64"

# run in a fresh process: build the model, time check, print what it did as JSON
CHILD = """
import json, random, sys, time
import symgrad as sg
from symgrad.nn import MLP
nin, h, method = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
random.seed(0)
model = MLP(nin, [h, h, 1])
x = [sg.Value(random.uniform(-1, 1), label=f"x{i}") for i in range(nin)]
y = sg.Value(0.3, label="y")
loss = (model(x) - y) ** 2
t = time.perf_counter()
r = sg.check(loss, wrt=model.parameters(), inputs=x + [y], method=method)
seconds = time.perf_counter() - t
f = sg.compile(loss, wrt=model.parameters(), inputs=x + [y], backend="python")
print(json.dumps({"seconds": seconds, "method": r.method, "points": len(r.points),
                  "directions": r.directions, "params": len(model.parameters()),
                  "instructions": len(f.traced_ir.body)}))
"""


def run_child(nin: int, h: int, method: str, env: dict[str, str]) -> dict:
    """One check in a fresh process; its JSON line."""
    res = subprocess.run([sys.executable, "-c", CHILD, str(nin), str(h), method],
                         capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"MLP({nin},[{h},{h},1]) {method}: {res.stderr.strip()[-500:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure(nin: int, h: int, method: str, rounds: int) -> tuple[dict, float, float]:
    """Median cold and warm seconds over `rounds`, and the last run's facts."""
    cold, warm = [], []
    facts: dict = {}
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as d:
            env = {**os.environ, "PYTHONPATH": str(ROOT), "SYMGRAD_CACHE_DIR": f"{d}/symgrad",
                   "NUMBA_CACHE_DIR": f"{d}/numba"}
            facts = run_child(nin, h, method, env)
            cold.append(facts["seconds"])
            warm.append(run_child(nin, h, method, env)["seconds"])
        print(f"MLP({nin},[{h},{h},1]) {method}: cold {cold[-1]:.2f} s, warm {warm[-1]:.2f} s",
              file=sys.stderr)
    return facts, statistics.median(cold), statistics.median(warm)


def table(rows: list[tuple[str, dict, float, float]]) -> str:
    """The markdown table of the measurements."""
    lines = ["| model | parameters | traced instructions | method | points x directions | "
             "cold | warm |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for model, f, cold, warm in rows:
        how = f"{f['points']} x {f['directions'] // max(f['points'], 1)}" if f["directions"] \
            else f"{f['points']} (all parameters)"
        lines.append(f"| {model} | {f['params']:,} | {f['instructions']:,} | {f['method']} | "
                     f"{how} | {cold:.1f} s | {warm:.1f} s |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=DEFAULT_MODELS,
                   help=f"comma-separated NINxH for MLP(NIN,[H,H,1]) (default {DEFAULT_MODELS})")
    p.add_argument("--rounds", type=int, default=3, help="runs per measurement (median)")
    p.add_argument("--symbolic", action="store_true",
                   help="also time method='symbolic' on the smaller models")
    p.add_argument("--symbolic-max", type=int, default=40,
                   help="largest parameter count timed with --symbolic (default 40)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every model and print the table."""
    args = parse_args(argv)
    rows = []
    for spec in args.models.split(","):
        nin, h = (int(v) for v in spec.lower().split("x"))
        name = f"MLP({nin},[{h},{h},1])"
        facts, cold, warm = measure(nin, h, "auto", args.rounds)
        rows.append((name, facts, cold, warm))
        params = (nin + 1) * h + (h + 1) * h + h + 1
        if args.symbolic and params <= args.symbolic_max and facts["method"] != "symbolic":
            facts, cold, warm = measure(nin, h, "symbolic", args.rounds)
            rows.append((name, {**facts, "method": "symbolic (forced)"}, cold, warm))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The compile pipeline every compiling entry point shares: validate and trace, optimise, log.

Imports `engine`, `ir`, `trace`, `passes`, `symbolic` (sympy input) and the registry of
`executors` (for the backend names). `front_end` validates what `compile`, `jvp`, `hvp` and
`hessian` take and traces the graph; `back_end` runs the passes; both record instruction counts
and seconds in ``stats``. The whole compile runs with the cyclic garbage collector paused
(`gc_paused`).
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from .engine import Value, topological_order
from .executors import check_backend
from .ir import Func, sanitize, verify
from .passes import optimize as run_passes
from .symbolic import from_sympy, is_sympy
from .trace import Traced, as_outputs, trace

__all__ = ["back_end", "debug", "debug_level", "front_end", "gc_paused", "record_stage"]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: compiling allocates many small objects and no
    cycles, and collections triggered by the allocations made the passes superlinear."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def front_end(
    outputs: Value | Iterable[Value], wrt: Sequence[Value] | None, inputs: Sequence[Value],
    backend: str, name: str | None,
) -> tuple[Traced, dict[str, Any], float]:
    """Validate what every compiling entry point takes, pick the default `wrt`, and trace.

    `outputs` may be sympy expressions, `wrt` and `inputs` then sympy Symbols
    (`symbolic.from_sympy` makes them a Value graph first).

    Returns:
        the traced graph, a fresh `stats` dict (with the trace stage) and the start time.
    """
    check_backend(backend)
    if is_sympy(outputs):
        outputs, wrt, inputs = from_sympy(outputs, wrt, inputs)
    outs = as_outputs(outputs)
    inputs = _leaf_list(inputs, "inputs")
    if wrt is None:
        given = {id(v) for v in inputs}
        wrt = [
            v for v in topological_order(outs)
            if not v._prev and not v._lit and id(v) not in given
        ]
    wrt = _leaf_list(wrt, "wrt")
    stats: dict[str, Any] = {"backend": backend, "nodes": {}, "seconds": {}}
    t0 = time.perf_counter()
    traced = trace(outs, wrt, inputs, name=_func_name(name))
    record_stage(stats, "trace", traced.func, t0)
    return traced, stats, t0


def back_end(func: Func, stats: dict[str, Any], optimize: bool) -> Func:
    """Run the passes (when `optimize`), recording instruction counts and seconds in `stats`."""
    if debug_level() >= 1:
        debug(f"before the passes ({len(func.body)} instructions)", func)
    if optimize:
        t = time.perf_counter()
        hook = (lambda name, f: debug(f"after {name}", f)) if debug_level() >= 1 else None
        func, log = run_passes(func, on_pass=hook)
        for pname, n, _sec in log:
            stats["nodes"].setdefault(pname, n)  # after the first round of each pass
        stats["passes"] = log
        stats["seconds"]["passes"] = time.perf_counter() - t
    stats["nodes"]["final"] = len(func.body)
    return verify(func)


def debug_level() -> int:
    """``SYMGRAD_DEBUG``: 1 prints the IR after every pass, 2 also the generated source."""
    try:
        return int(os.environ.get("SYMGRAD_DEBUG", "0"))
    except ValueError:
        return 0


def debug(title: str, text: object) -> None:
    """Print `text` under a title on stderr (``SYMGRAD_DEBUG``)."""
    print(f"# symgrad: {title}\n{text}\n", file=sys.stderr)


def record_stage(stats: dict[str, Any], stage: str, func: Func, t0: float) -> None:
    """Record a stage's instruction count and seconds since `t0` in `stats`."""
    stats["nodes"][stage] = len(func.body)
    stats["seconds"][stage] = time.perf_counter() - t0


def _func_name(name: str | None) -> str:
    if name is None:
        return "f"
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    return sanitize(name) or "f"


def _leaf_list(leaves: Any, what: str) -> list[Value]:
    if isinstance(leaves, Value):
        return [leaves]
    if isinstance(leaves, (str, bytes)) or not isinstance(leaves, Iterable):
        raise TypeError(f"{what}: expected a list of Value leaves, got {type(leaves).__name__}")
    return list(leaves)

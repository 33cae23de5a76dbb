"""The compile pipeline every compiling entry point shares: validate and trace, optimise, log.

Imports `engine`, `ir`, `trace`, `passes`, `symbolic` (sympy input) and the registry of
`executors` (for the backend names). `front_end` validates what `compile`, `jvp`, `hvp` and
`hessian` take and traces the graph; `back_end` runs the passes; both record instruction counts
and seconds in ``stats``. The whole compile runs inside `compiling`: the cyclic garbage collector
paused, and a slow compile saying what it is doing (`stage`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from .engine import Value, topological_order
from .executors import check_backend
from .ir import Func, sanitize, verify
from .passes import optimize as run_passes
from .symbolic import from_sympy, is_sympy
from .trace import Traced, as_outputs, trace

__all__ = [
    "PROGRESS_AFTER", "back_end", "compiling", "debug", "debug_level", "front_end", "gc_paused",
    "record_stage", "stage",
]

logger = logging.getLogger("symgrad")

# a compile still running after this many seconds says on stderr what it is doing, one line a
# stage (SYMGRAD_PROGRESS=0 turns that off); quick compiles print nothing
PROGRESS_AFTER = 2.0


@contextlib.contextmanager
def compiling() -> Iterator[None]:
    """The scope of one compile: the garbage collector paused (`gc_paused`) and, after
    `PROGRESS_AFTER` seconds, a line on stderr for each stage it enters (`stage`)."""
    outer = getattr(_local, "reporter", None)
    if outer is not None:  # a compile inside a compile reports as part of the outer one
        with gc_paused():
            yield
        return
    reporter = _Reporter()
    _local.reporter = reporter
    ok = False
    try:
        with gc_paused():
            yield
        ok = True
    finally:
        _local.reporter = None
        reporter.finish(ok)


def stage(what: str, name: str | None = None) -> None:
    """Say what the current compile (if any) is doing now: on stderr once it has been running
    for `PROGRESS_AFTER` seconds, and to the ``symgrad`` logger at DEBUG level always."""
    reporter = getattr(_local, "reporter", None)
    if reporter is not None:
        reporter.stage(what, name)


_local = threading.local()


class _Reporter:
    """The progress lines of one compile; a timer thread shows the stage once it is late."""

    def __init__(self) -> None:
        self.name = "f"
        self.what: str | None = None  # no stage yet
        self.t0 = time.perf_counter()
        self.shown = self.finished = False
        self.lock = threading.Lock()
        self.timer: threading.Timer | None = None
        if os.environ.get("SYMGRAD_PROGRESS", "1").strip().lower() not in ("0", "false", "off"):
            self.timer = threading.Timer(PROGRESS_AFTER, self._late)
            self.timer.daemon = True
            self.timer.start()

    def _late(self) -> None:
        with self.lock:
            if not self.finished:
                self.shown = True
                if self.what is not None:
                    self._line(f"compiling {self.name}: {self.what}")

    def stage(self, what: str, name: str | None) -> None:
        with self.lock:
            self.name = name or self.name
            self.what = what
            if self.shown:
                self._line(f"compiling {self.name}: {what}")
        logger.debug("compiling %s: %s", self.name, what)

    def finish(self, ok: bool) -> None:
        if self.timer is not None:
            self.timer.cancel()
        with self.lock:
            self.finished = True
            if self.shown:
                self._line(f"compiled {self.name}" if ok else f"compiling {self.name} failed")

    def _line(self, text: str) -> None:
        print(f"symgrad: {text} ({time.perf_counter() - self.t0:.1f} s)", file=sys.stderr,
              flush=True)


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
    stage("tracing the graph", _func_name(name))
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
        stage(f"optimising {len(func.body):,} instructions (folding, simplification, CSE, DCE)")
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
    if isinstance(leaves, Mapping):
        # iterating a dict gives its keys: never what was meant
        raise TypeError(
            f"{what}: expected a list of Value leaves, got a {type(leaves).__name__}; pass "
            f"list(d.values()) (or list(d) if the keys are the leaves)"
        )
    if isinstance(leaves, (set, frozenset)):
        raise TypeError(
            f"{what}: expected a list of Value leaves, got a {type(leaves).__name__}, which has "
            "no order; pass a list (the order is the order of params and gradients)"
        )
    if isinstance(leaves, (str, bytes)) or not isinstance(leaves, Iterable):
        raise TypeError(f"{what}: expected a list of Value leaves, got {type(leaves).__name__}")
    return list(leaves)

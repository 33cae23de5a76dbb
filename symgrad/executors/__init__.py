"""Executors: every way of running a compiled program, behind one interface, in one registry.

Imports the executor modules of this package. `REGISTRY` maps each ``backend=`` name to its
executor class; `select` is the one place that interprets a ``backend=`` string and makes the
automatic choice for the default, "numba". A new executor is a module with an `Executor`
subclass and a line in `REGISTRY`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..layout import Kernel
from .base import BatchMode, Executor, TapeExecutor
from .interpreter import TapeInterpreter
from .lines import NumbaLines, PythonLines

__all__ = [
    "AUTO", "BACKENDS", "LINE_LIMIT", "REGISTRY", "RETIRED", "BatchMode", "Executor",
    "TapeExecutor",
    "check_backend", "select",
]

REGISTRY: dict[str, type[Executor]] = {
    "lines": NumbaLines,  # line kernels, JIT-compiled by Numba
    "python": PythonLines,  # the same source run by Python
    "tape": TapeInterpreter,  # the levelled tape, one compiled interpreter
}
# names no longer accepted, and why (a clear error rather than "not one of ...")
RETIRED: dict[str, str] = {
    "vector": ("backend='vector' (the tape run by NumPy, not bit-exact) was retired: the default "
               "backend is exact and faster on every workload symgrad benchmarks; use the "
               "default (or backend='tape')"),
}

AUTO = "numba"  # the default backend: line kernels for small graphs, the tape for big ones
BACKENDS = (AUTO, *REGISTRY)  # as registered at import (check_backend reads REGISTRY itself)

# graphs with more instructions than this are not compiled line by line (Numba's compile time
# grows faster than linearly with function length) but lowered to a tape
LINE_LIMIT = 1500


def check_backend(backend: str) -> None:
    """Raise a ValueError naming the choices unless `backend` is "numba" or in `REGISTRY` (saying
    why for a retired name)."""
    if isinstance(backend, str) and backend in RETIRED:
        raise ValueError(RETIRED[backend])
    if not isinstance(backend, str) or (backend != AUTO and backend not in REGISTRY):
        raise ValueError(f"backend must be one of {(AUTO, *REGISTRY)}, got {backend!r}")


def select(backend: str, kernels: Sequence[Kernel]) -> type[Executor]:
    """The executor for `backend` ("numba" chooses by the size of the first kernel)."""
    check_backend(backend)
    if backend == AUTO:
        return REGISTRY["tape" if len(kernels[0].func.body) > LINE_LIMIT else "lines"]
    return REGISTRY[backend]

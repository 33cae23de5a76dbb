"""Generated source to callables: executed under a name `linecache` knows, JIT-compiled by Numba.

Imports `ops` and `cache` (numba lazily). Generated modules are loaded through the persistent
cache when it is on (so Numba can keep their machine code on disk), else executed from a string
under a unique filename registered in `linecache`, so tracebacks and `inspect` show the
generated lines. Under plain Python, generated code computes with the op table's own rules
(`IEEE_NUMPY`), the interpreted engine's numbers exactly.
"""

from __future__ import annotations

import collections
import itertools
import linecache
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from . import cache
from .ops import OPS

__all__ = [
    "CACHE_EVENTS", "IEEE_NUMPY", "exec_source", "helper", "jit_compile", "load",
    "template_globals",
]


class _IEEENumpy:
    """``np`` for plain-Python runs of generated code: the op table's own rules for the
    functions templates call (``np.tanh`` is ``OPS["tanh"].impl``), numpy for the rest.

    numpy's scalar tanh, exp and log may differ from libm (what the interpreted engine and
    Numba use) in the last bit, and ``1 - tanh(x)**2`` turns one bit into many; with the rules
    themselves the Python backend computes the engine's numbers exactly. Results are numpy
    floats, so later arithmetic keeps IEEE semantics (``x / 0.0`` is inf, not an exception).
    """

    def __init__(self) -> None:
        templates = " ".join(o.py for o in OPS.values())
        for name, op in OPS.items():
            if op.arity == 1 and not op.params and f"np.{name}(" in templates:
                setattr(self, name, _as_np(op.impl))

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def _as_np(impl: Callable[[float], float]) -> Callable[[Any], np.float64]:
    def f(x: Any) -> np.float64:
        return np.float64(impl(float(x)))

    f.__name__ = impl.__name__
    return f


IEEE_NUMPY = _IEEENumpy()


def _pow_python(x: Any, p: Any) -> np.float64:
    """pow for plain-Python runs: the op table's rule (Python's x ** p, i.e. C's pow)."""
    return np.float64(OPS["pow"].impl(float(x), float(p)))


def template_globals(numba: bool) -> dict[str, Any]:
    """The functions op templates may call besides numpy's, as generated modules see them.

    ``pow_libm(x, p)`` is C's pow in both worlds: under Numba `symgrad.vecmath.pow_libm` (a call
    LLVM may not strength-reduce into ``x * x``, ``sqrt`` or ``1 / x``), in plain Python the op
    table's rule, which is Python's ``x ** p``.
    """
    if not numba:
        return {"pow_libm": _pow_python}
    from .vecmath import pow_libm

    return {"pow_libm": pow_libm}

_counter = itertools.count()
_lock = threading.Lock()


def exec_source(source: str, name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Execute generated source under a unique filename that `linecache` can show."""
    with _lock:
        filename = f"<symgrad:{name}:{next(_counter)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": "symgrad._generated", "np": np}
    namespace.update(extra or {})
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def load(source: str, name: str, numba: bool,
         extra: dict[str, Any] | None = None) -> tuple[dict[str, Any], bool]:
    """The namespace of a generated module, and whether it came through the persistent cache.

    For Numba the module is imported from its cache file when caching is on (Numba can then
    cache its machine code); for plain Python it is executed with
    ``np`` bound to `IEEE_NUMPY` after the source's own ``import numpy as np``. `extra` globals
    (and `template_globals`) are set before the module's code runs.
    """
    extra = {**template_globals(numba), **(extra or {})}
    if not numba:
        ns = exec_source(source, name, extra)
        ns["np"] = IEEE_NUMPY
        return ns, False
    mod = cache.load_module(source, name, extra)
    if mod is not None:
        return mod.__dict__, True
    return exec_source(source, name, extra), False


def jit_compile(py: Callable[..., None], sig: str, cached: bool, module_file: str | None,
                nogil: bool = False) -> Callable[..., None]:
    """``numba.njit`` `py` for `sig` (IEEE division), through Numba's disk cache when `cached`;
    `nogil` releases the GIL while it runs (for functions called on several threads).

    A cache entry that fails to load is deleted and rebuilt; if that fails too, the function
    is compiled without the cache.
    """
    import numba

    attempts = (True, True, False) if cached else (False,)
    for i, use_cache in enumerate(attempts):
        try:
            fn = numba.njit(error_model="numpy", cache=use_cache, nogil=nogil)(py)
            fn.compile(sig)
            break
        except Exception:
            if i == len(attempts) - 1:
                raise
            if module_file:
                cache.drop_numba_cache_file(module_file)
    fn.disable_compile()  # no silent recompiles for other argument types
    hits = sum(fn.stats.cache_hits.values())
    CACHE_EVENTS["hits" if hits else ("misses" if cached else "uncached")] += 1
    return fn  # type: ignore[no-any-return]


def helper(py: Callable[..., Any], cached: bool, nogil: bool = False) -> Callable[..., Any]:
    """``numba.njit`` a function, compiled for the types it is first called with (through
    Numba's disk cache when `cached`); `nogil` releases the GIL while it runs."""
    import numba

    return numba.njit(  # type: ignore[no-any-return]
        error_model="numpy", cache=cached, nogil=nogil)(py)


# how JIT compilations went in this process: loaded from the disk cache, compiled and saved to
# it, or compiled without it (tests and `stats` read this)
CACHE_EVENTS: collections.Counter[str] = collections.Counter()

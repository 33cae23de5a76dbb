"""The persistent cache: generated modules written to files, so Numba can cache their machine code.

Imports nothing from symgrad but `_version`. Numba's ``cache=True`` cannot cache functions
made by ``exec`` (it needs a source file), so a generated module is written to
``<cache dir>/<name>_<hash>.py``, imported from there, and JIT-compiled with ``cache=True``; a
second process compiling the same model finds Numba's cached machine code next to it.

The hash covers the generated source and the symgrad, Numba, NumPy and Python versions. A file
is used only if its bytes equal the source symgrad just generated, so a damaged or tampered entry
is rewritten, never executed; files are written to a temporary name and renamed into place, so
processes sharing the directory never see half a file. The checked bytes themselves are
compiled (a ``.pyc`` is never used). Numba's own cache files beside them (``__pycache__``) are
its pickled machine code: Numba checks them against the source file's time and size, and
symgrad deletes and rebuilds any that fail to load; like Numba, it cannot check their content.

Configuration: ``SYMGRAD_CACHE_DIR`` (a directory), ``SYMGRAD_CACHE=0`` (off), or
`set_cache_dir` at run time. The default is ``$XDG_CACHE_HOME/symgrad`` (``~/.cache/symgrad``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import platform
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["cache_dir", "clear", "load_module", "set_cache_dir"]

_override: Path | bool | None = None  # None: from the environment; False: off; a Path: that dir
_lock = threading.Lock()


def set_cache_dir(path: str | os.PathLike[str] | bool | None) -> None:
    """Choose the cache directory at run time: a path, False to disable, None for the default."""
    global _override
    if path is None or path is False:
        _override = path
    elif path is True:
        raise TypeError("set_cache_dir: pass a directory, False (off) or None (default)")
    else:
        _override = Path(path)


def cache_dir() -> Path | None:
    """The cache directory in force, or None when caching is off."""
    if _override is False:
        return None
    if isinstance(_override, Path):
        return _override
    if os.environ.get("SYMGRAD_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    env = os.environ.get("SYMGRAD_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "symgrad"


def _versions() -> str:
    import numba
    import numpy

    from ._version import __version__

    return (
        f"symgrad {__version__}; numba {numba.__version__}; numpy {numpy.__version__}; "
        f"python {platform.python_version()} {platform.python_implementation()}"
    )


def key(source: str) -> str:
    """The cache key of a generated module: a hash of its source and the versions."""
    h = hashlib.sha256()
    h.update(_versions().encode())
    h.update(b"\0")
    h.update(source.encode())
    if "pow_libm(" in source:
        # numba's cache notices changes to the generated file only, not to what it inlined
        from .vecmath import CACHE_TAG

        h.update(CACHE_TAG.encode())
    return h.hexdigest()[:32]


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_module(source: str, name: str, extra: dict[str, Any]) -> ModuleType | None:
    """Import `source` from its cache file (writing it first if needed); None if caching is off.

    `extra` globals (e.g. ``fetch_add``) are set before the module body runs.
    """
    d = cache_dir()
    if d is None:
        return None
    k = key(source)
    data = source.encode()
    path = d / f"{name}_{k}.py"
    with _lock:
        try:
            d.mkdir(parents=True, exist_ok=True)
            try:
                ok = path.read_bytes() == data
            except OSError:
                ok = False
            if not ok:  # missing, damaged or tampered with: (re)write it
                _write_atomic(path, data)
        except OSError:
            return None  # an unwritable cache is no reason to fail: compile without it
        modname = f"symgrad_cache_{name}_{k}"
        mod = sys.modules.get(modname)
        if mod is not None:
            return mod
        spec = importlib.util.spec_from_file_location(modname, path)
        assert spec is not None
        mod = importlib.util.module_from_spec(spec)
        mod.__dict__.update(extra)
        # numba's cache reloads need the module importable by name
        sys.modules[modname] = mod
        try:
            # run the bytes just checked, never a __pycache__ .pyc, which Python would trust on
            # the .py file's size and time alone (a damaged or swapped .pyc would run)
            exec(compile(data, str(path), "exec"), mod.__dict__)
        except BaseException:
            sys.modules.pop(modname, None)
            raise
        return mod


def drop_numba_cache_file(module_file: str) -> None:
    """Delete Numba's cache files for the module at `module_file` (when they fail to load)."""
    f = module_file
    stem = Path(f).stem
    pyc = Path(f).parent / "__pycache__"
    for p in pyc.glob(f"{stem}.*"):
        with contextlib.suppress(OSError):
            p.unlink()


def clear() -> int:
    """Delete every cache entry in the cache directory; returns how many files were removed."""
    d = cache_dir()
    if d is None or not d.is_dir():
        return 0
    n = 0
    for p in list(d.glob("*.py")) + list((d / "__pycache__").glob("*")):
        try:
            p.unlink()
            n += 1
        except OSError:
            pass
    return n

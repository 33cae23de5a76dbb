"""The persistent cache: a second process reuses the machine code; bad entries are rebuilt.

Oracles: the numbers of an uncached compile and the interpreted engine; Numba's own cache
statistics (a hit means no JIT ran).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import symgrad as sg
from symgrad import cache, jit

pytestmark = pytest.mark.slow  # every test here JIT-compiles in fresh processes

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import symgrad as sg
    a, b = sg.Value(0.5, label="a"), sg.Value(-1.25, label="b")
    x = sg.Value(2.0, label="x")
    out = (a * x + b).tanh() * (a - x).exp() + (b * b).log()
    f = sg.compile(out, wrt=[a, b], inputs=[x], name=sys.argv[1])
    value, grad = f()
    print(json.dumps({"value": value, "grad": list(grad), "cache": f.stats["cache"]}))
    """
)


def _run(tmp_path: Path, cache_dir: Path, name: str = "cached") -> dict:
    import json

    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "SYMGRAD_CACHE_DIR": str(cache_dir)}
    env.pop("SYMGRAD_CACHE", None)
    res = subprocess.run(
        [sys.executable, str(script), name], capture_output=True, text=True, env=env,
        timeout=300, check=False,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def _engine():
    a, b = sg.Value(0.5), sg.Value(-1.25)
    x = sg.Value(2.0)
    out = (a * x + b).tanh() * (a - x).exp() + (b * b).log()
    out.backward()
    return out.data, [a.grad, b.grad]


def test_second_process_hits_the_cache(tmp_path):
    d = tmp_path / "cache"
    first = _run(tmp_path, d)
    second = _run(tmp_path, d)
    assert first["cache"].get("misses") == 1 and not first["cache"].get("hits")
    assert second["cache"].get("hits") == 1 and not second["cache"].get("misses")
    assert first["value"] == second["value"] and first["grad"] == second["grad"]
    value, grad = _engine()
    assert second["value"] == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(second["grad"], grad, rtol=1e-12)
    assert list(d.glob("cached_*.py")), "the generated module is a file in the cache directory"


def test_damaged_numba_cache_is_rebuilt(tmp_path):
    d = tmp_path / "cache"
    good = _run(tmp_path, d)
    for f in (d / "__pycache__").iterdir():
        f.write_bytes(b"\x00garbage")
    again = _run(tmp_path, d)
    assert again["value"] == good["value"] and again["grad"] == good["grad"]
    third = _run(tmp_path, d)  # the rebuilt entry is saved again and used
    assert third["cache"].get("hits") == 1


def test_tampered_module_file_is_rewritten_never_run(tmp_path):
    d = tmp_path / "cache"
    good = _run(tmp_path, d)
    (py,) = d.glob("cached_*.py")
    marker = tmp_path / "executed"
    py.write_text(py.read_text() + f"\nopen({str(marker)!r}, 'w').write('x')\n")
    again = _run(tmp_path, d)
    assert not marker.exists(), "a tampered cache file was executed"
    assert again["value"] == good["value"] and again["grad"] == good["grad"]
    assert "executed" not in py.read_text()


def test_cache_can_be_disabled_and_redirected(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMGRAD_CACHE", "0")
    assert cache.cache_dir() is None
    monkeypatch.delenv("SYMGRAD_CACHE")
    monkeypatch.setenv("SYMGRAD_CACHE_DIR", str(tmp_path / "here"))
    assert cache.cache_dir() == tmp_path / "here"
    try:
        cache.set_cache_dir(False)
        assert cache.cache_dir() is None
        a = sg.Value(1.5, label="a")
        before = jit.CACHE_EVENTS.copy()
        f = sg.compile(a.sin() * a, wrt=[a], name="nocache")
        assert (jit.CACHE_EVENTS - before).get("uncached", 0) >= 1
        assert f.stats["cache"]["dir"] is None
        assert not (tmp_path / "here").exists()
        cache.set_cache_dir(tmp_path / "other")
        assert cache.cache_dir() == tmp_path / "other"
    finally:
        cache.set_cache_dir(None)


def test_unwritable_cache_directory_falls_back(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    try:
        cache.set_cache_dir(blocker / "sub")  # cannot be created: a file is in the way
        a = sg.Value(0.25, label="a")
        f = sg.compile(a.exp(), wrt=[a], name="fallback")
        value, grad = f()
        assert value == pytest.approx(np.exp(0.25), rel=1e-15)
        assert grad[0] == pytest.approx(np.exp(0.25), rel=1e-15)
    finally:
        cache.set_cache_dir(None)


def test_clear_empties_the_cache_directory(tmp_path):
    try:
        cache.set_cache_dir(tmp_path / "c")
        a = sg.Value(0.75, label="a")
        f = sg.compile(a.sin() * a.exp(), wrt=[a], name="to_clear")
        assert list((tmp_path / "c").glob("to_clear_*.py"))
        assert cache.clear() >= 1
        assert not list((tmp_path / "c").glob("*.py"))
        assert f()[0] == pytest.approx(np.sin(0.75) * np.exp(0.75), rel=1e-15)  # still usable
    finally:
        cache.set_cache_dir(None)

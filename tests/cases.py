"""Small shared cases for the tests: the lecture's neuron, and loading an example script."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import symgrad as sg

ROOT = Path(__file__).resolve().parent.parent


def lecture_neuron() -> tuple[sg.Value, list[sg.Value], list[sg.Value]]:
    """o = tanh(x1*w1 + x2*w2 + b), the notebook's neuron: (o, [w1, w2, b], [x1, x2])."""
    x1, x2 = sg.Value(2.0, label="x1"), sg.Value(0.0, label="x2")
    w1, w2 = sg.Value(-3.0, label="w1"), sg.Value(1.0, label="w2")
    b = sg.Value(6.8813735870195432, label="b")
    n = x1 * w1 + x2 * w2 + b
    n.label = "n"
    o = n.tanh()
    o.label = "o"
    return o, [w1, w2, b], [x1, x2]


def load_example(path: Path) -> ModuleType:
    """Import a script (an example) as a module, without running its main."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

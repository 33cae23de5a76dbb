"""Saving a compiled function as one standalone Python module: ``f.save(path)`` (`save`).

Imports `codegen`, `ir`, `layout`, `ops` and `tape`; for the tape lowering also the executors'
`interpreter` and `tape_plan`, and `vecmath` (numba, at save time only). The module written
imports numpy and numba (with llvmlite, which numba brings, and Python's standard library) and
nothing else; it defines ``value_and_grad``, ``forward``, ``batch``, ``batch_forward``,
``WRT``, ``INPUTS``, ``PARAMS`` and ``INPUT_VALUES``, checks their arguments as the compiled
function does, and gives the compiled function's results bit for bit,
because it runs symgrad's own code for the lowering, JIT-compiled as symgrad compiles it:

- line lowering: the generated kernels and batch loops (what ``f.source`` shows), and C's pow
  as an intrinsic LLVM may not strength-reduce (as `symgrad.vecmath.pow_libm` is);
- tape lowering: the model's plans (`tape_plan.BlockPlan`, packed, as compressed arrays), the
  interpreter symgrad generates (`interpreter.interpreter_source`, its ``run_elementwise`` for
  the ops the plans use), the dense kernels (``executors/dense.py``), the vectorised libm ports
  (``_libm_ports.py``, with the tables it computes with mpmath written out as literals) and
  their verification from `vecmath`: when the module is imported, each port is checked against
  `math` and libm is used where it differs, so another machine's libm is matched too.

Batches take chunks on threads with ``executors/threads.py`` and sum in the order of
`symgrad.layout`. The static parts are the source files' text, copied in section by section:
their docstrings become comments and their imports of symgrad are dropped (everything lives
in one namespace; a private name two files both define is renamed in the later one, which its
section header says). A test imports saved modules where symgrad cannot be imported.
"""

from __future__ import annotations

import ast
import base64
import inspect
import io
import keyword
import os
import re
import sys
import textwrap
import tokenize
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import codegen, layout, tape
from ._version import __version__
from .layout import Kernel
from .ops import OPS

if TYPE_CHECKING:
    from .compiled import Compiled

__all__ = ["module_text", "save"]

HERE = Path(__file__).parent
ENCODED_WIDTH = 96  # characters of base64 per line of a saved array
SHORT = 64  # arrays of at most this many numbers are saved as literals
DEPENDENCIES = ("numpy", "numba", "llvmlite")  # what a saved module imports, besides the stdlib


def save(f: Compiled, path: str | os.PathLike[str], params: np.ndarray) -> Path:
    """Write `f` as a standalone module at `path` (see the module docstring); returns the path.

    `params` are the values written as ``PARAMS``.
    """
    p = Path(path)
    if p.suffix != ".py":
        raise ValueError(f"save: a Python module's file name ends in .py, got {p.name!r}")
    stem = p.stem
    _check_module_name(p.name, stem, sys.stdlib_module_names, "a standard library module")
    _check_module_name(p.name, stem, DEPENDENCIES, "a module the saved file needs")
    text = module_text(f, params, stem)
    _check_module_name(p.name, stem, _imported(text), "a module the saved file imports")
    p.write_text(text, encoding="utf-8")
    return p


def _check_module_name(file: str, stem: str, taken: Iterable[str], what: str) -> None:
    """Refuse a file name that ``import <stem>`` cannot import, or that would shadow a module
    (`taken`, described by `what`) for the saved file's own imports and code next to it."""
    if not stem.isidentifier():
        why = ("is not a Python identifier (letters, digits and underscores, not first a "
               f"digit): `import {stem}` cannot import it")
    elif keyword.iskeyword(stem):
        why = f"is a Python keyword: `import {stem}` is a syntax error"
    elif stem in set(taken):
        why = (f"is the name of {what}: the file would hide that module from its own imports "
               "and from code next to it")
    else:
        return
    fixed = re.sub(r"\W", "_", stem)
    fixed = f"_{fixed}" if fixed[:1].isdigit() else fixed
    suggestion = f"{fixed}.py" if fixed != stem else f"{stem}_model.py"
    raise ValueError(f"save: {file!r}: the module name {stem!r} {why}; choose another name, "
                     f"e.g. {suggestion!r}")


def _imported(text: str) -> set[str]:
    """The top-level modules a module's text imports."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out


@dataclass(frozen=True)
class _Part:
    """A section of the saved module: its title (for its header) and its code.

    `embedded` parts are symgrad's source files: a private name that an earlier part defines
    too is renamed in them; in generated parts such a clash is a bug and raises.
    """

    title: str
    text: str
    embedded: bool = False
    renamed: dict[str, str] = field(default_factory=dict)


def module_text(f: Compiled, params: np.ndarray, module: str = "model") -> str:
    """The saved module's text for `f` (its ``PARAMS``: `params`; `module`: its import name,
    for the examples in its docstring)."""
    vg, fw = f.executor.kernels[f._vg], f.executor.kernels[f._fw]
    parts = [_Part("imports, and how Numba compiles this module", PRELUDE)]
    parts.append(_embedded("symgrad/executors/threads.py: chunks of a batch on threads",
                           HERE / "executors" / "threads.py"))
    if f.lowering not in _HOW:
        raise ValueError(f"save: a function lowered to {f.lowering!r} cannot be saved (the "
                         f"saved module runs the {' or '.join(_HOW)} lowering)")
    if f.lowering == "lines":
        parts += _lines_parts(f.name, vg, fw)
    else:
        parts += _tape_parts(f.executor, vg, fw)
    parts.append(_Part("the model's names and values, and its functions", _api(f, params)))
    parts = _keep_apart(parts)
    return _docstring(f, module) + "\n\n" + "\n\n".join(_section(p) for p in parts)


def _section(part: _Part) -> str:
    rule = "# " + "=" * 97
    title = part.title
    if part.renamed:
        pairs = ", ".join(f"{a} -> {b}" for a, b in part.renamed.items())
        title += f" (renamed here to keep them apart from earlier sections: {pairs})"
    head = textwrap.wrap(title, 97, initial_indent="# ", subsequent_indent="# ")
    return "\n".join([rule, *head, rule, "", part.text.strip("\n")]) + "\n"


# ---- the docstring -------------------------------------------------------------------------------


def _preview(items: list[str], show: int = 8) -> str:
    if not items:
        return "none"
    return ", ".join(items[:show]) + (f", ... ({len(items)} in all)" if len(items) > show else "")


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _docstring(f: Compiled, module: str) -> str:
    """The saved module's docstring: what it computes, how to call it, how it is made."""
    outs, wrt, ins = f._names()
    title = f"{f.name}: value and gradient, saved by symgrad {__version__} ({f.lowering} lowering)."

    def para(text: str) -> str:
        return textwrap.fill(" ".join(text.split()), 95)

    how = _HOW[f.lowering]
    return "\n".join([
        f'"""{title}',
        "",
        para(f"A standalone module: it imports numpy and numba only (and Python's standard "
             f"library). It computes what the compiled function {f.name} computes, bit for "
             f"bit: {_plural(f.n_out, 'output')} ({_preview(outs)}) of "
             f"{_plural(f.n_params, 'parameter')} and {_plural(f.n_inputs, 'input')}, and the "
             "gradient of each output with respect to the parameters."),
        "",
        f"    import {module} as model",
        "    value, grad = model.value_and_grad(model.PARAMS, inputs)  # len(INPUTS) floats",
        "    values, grad = model.batch(model.PARAMS, X)  # X: (N, len(INPUTS)), a row an example",
        '    values, grads = model.batch(model.PARAMS, X, reduce="none")  # "sum" (default), '
        '"mean"',
        "    value = model.forward(model.PARAMS, inputs)",
        "    values = model.batch_forward(model.PARAMS, X)",
        "",
        para("params: len(WRT) floats, in the order of WRT (None: PARAMS); inputs: "
             "len(INPUTS) floats (None: INPUT_VALUES). With one output, "
             "value is a float and grad a (len(WRT),) array; with several, arrays with an "
             "output axis (grad: the Jacobian). batch sums (or averages, or keeps per row) the "
             "gradients over the rows of X, adding the rows in fixed chunks in a fixed order, "
             "so its sums do not depend on the number of threads."),
        "",
        para(f"WRT: the parameters' names ({_preview(wrt)})."),
        para(f"INPUTS: the inputs' names ({_preview(ins)})."),
        "PARAMS: the parameters' values when it was saved.",
        para("INPUT_VALUES: the inputs' values when it was saved (the default inputs, as "
             "the compiled function's are its input leaves' values)."),
        "",
        para(f"How it is made: {how} The sections below are copied from symgrad's source files "
             "(named in their headers) or generated. Numba compiles each function when it is "
             "first called and keeps the machine code in its cache, next to this file or in "
             "its user-wide cache, when it can."),
        '"""',
    ])


_HOW = {
    "lines": "the function's generated kernels (one line per IR instruction) and their batch "
             "loops, JIT-compiled as symgrad compiles them.",
    "tape": "the function's tape plans (arrays), run by symgrad's tape interpreter with its "
            "dense kernels and its exact vectorised ports of glibc's tanh, exp and log; each "
            "port is checked against Python's math (the C library) when the module is imported "
            "and the C library's function is used where they differ (PORTS says which).",
}


# ---- the prelude: imports, the Numba settings, array literals ------------------------------------

PRELUDE = '''from __future__ import annotations

import base64
import zlib

import numba
import numpy as np


def _cache_probe():
    return 0


def _can_cache():
    """Whether Numba can keep machine code on disk for this file (not when it has no file, or
    no writable place for a cache)."""
    try:
        numba.njit(cache=True)(_cache_probe)
    except RuntimeError:  # numba: no locator available for this file
        return False
    return True


CACHE = _can_cache()


def _symgrad_jit(fn):
    """JIT-compile as symgrad does: IEEE division (1/0 is inf), no fast-math, the GIL released
    (threads run batches' chunks), kept in Numba's disk cache when possible."""
    return numba.njit(error_model="numpy", cache=CACHE, nogil=True)(fn)


def _decode(text, dtype):
    """An array symgrad wrote: base64 of its zlib-compressed little-endian bytes."""
    return np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=dtype).astype(dtype[1:])
'''


def _encoded(a: np.ndarray, dtype: str) -> str:
    """Array `a` as source: a literal when short, else ``_decode("...", "<i8")``, its base64
    text wrapped over lines."""
    if a.size <= SHORT:
        kind = "np.int64" if dtype == "<i8" else "np.float64"
        items = map(str, a.ravel().tolist()) if dtype == "<i8" else map(
            _float_literal, a.ravel().tolist())
        return f"np.array({_list_literal(items, ' ' * 12, ' ' * 8)}, dtype={kind})"
    raw = np.ascontiguousarray(a, dtype=dtype).tobytes()
    text = base64.b64encode(zlib.compress(raw, 9)).decode("ascii")
    lines = [text[i: i + ENCODED_WIDTH] for i in range(0, len(text), ENCODED_WIDTH)] or [""]
    body = "\n".join(f'        "{line}"' for line in lines)
    return f'_decode(\n{body},\n        "{dtype}",\n    )'


def _float_literal(v: float) -> str:
    if v != v:
        return "np.nan"
    if v in (np.inf, -np.inf):
        return "np.inf" if v > 0 else "-np.inf"
    return repr(float(v))


def _list_literal(items: Iterable[str], indent: str = "    ", close: str = "") -> str:
    """``[a, b, ...]``: on one line when short, else one item-filled line after another
    (each under 100 characters, starting with `indent`), then `close` and the bracket."""
    items = list(items)
    one = "[" + ", ".join(items) + "]"
    if len(one) <= 72:
        return one
    lines, line = [], ""
    for item in items:
        piece = f"{item}, "
        if line and len(indent) + len(line) + len(piece) > 99:
            lines.append(indent + line.rstrip())
            line = ""
        line += piece
    lines.append(indent + line.rstrip())
    return "[\n" + "\n".join(lines) + f"\n{close}]"


# ---- source files, copied ------------------------------------------------------------------------


def _is_docstring(node: ast.stmt) -> bool:
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str))


def _bound(node: ast.stmt) -> set[str]:
    """The top-level names a statement binds (imports, definitions, assignments, and those
    inside a top-level ``if``/``try``)."""
    out: set[str] = set()
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        out |= {(a.asname or a.name).split(".")[0] for a in node.names}
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        out.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for t in targets:
            out |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
    elif isinstance(node, (ast.If, ast.Try)):
        inner = [*node.body, *node.orelse, *getattr(node, "finalbody", [])]
        inner += [s for h in getattr(node, "handlers", []) for s in h.body]
        for s in inner:
            out |= _bound(s)
    return out


def _from_symgrad(node: ast.stmt, drop_modules: Iterable[str]) -> bool:
    """An import of symgrad, of `__future__` or of one of `drop_modules`."""
    dropped = {"symgrad", "__future__", *drop_modules}
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] in dropped
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] in dropped for a in node.names)
    return False


def _span(node: ast.stmt) -> tuple[int, int]:
    """A top-level statement's lines (0-based, end exclusive), decorators included."""
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    return first - 1, node.end_lineno or node.lineno


def _copy(text: str, drop: Iterable[str] = (), drop_modules: Iterable[str] = (),
          replace: Mapping[str, str] | None = None) -> str:
    """A source file's text for the saved module.

    The docstring becomes comments; imports of symgrad, `__future__` and `drop_modules` go, as
    do ``__all__`` and the statements binding a name in `drop`; a statement binding a name
    in `replace` becomes that text; ``cache=True`` becomes ``cache=CACHE``.
    """
    drop, replace = set(drop), dict(replace or {})
    lines = text.splitlines()
    out: list[str] = []
    pos = 0
    for i, node in enumerate(ast.parse(text).body):
        start, end = _span(node)
        out += lines[pos:start]
        pos = end
        bound = _bound(node)
        if i == 0 and _is_docstring(node):
            doc = inspect.cleandoc(node.value.value)  # type: ignore[attr-defined]
            out += [f"# {line}".rstrip() for line in doc.splitlines()]
        elif _from_symgrad(node, drop_modules) or bound & (drop | {"__all__"}):
            continue
        elif bound & replace.keys():
            out.append(replace[min(bound & replace.keys())])
        else:
            out += lines[start:end]
    out += lines[pos:]
    result = re.sub(r"\n{4,}", "\n\n\n", "\n".join(out))
    return re.sub(r"\bcache=True\b", "cache=CACHE", result)


def _embedded(title: str, path: Path, **how: Any) -> _Part:
    return _Part(title, _copy(path.read_text(encoding="utf-8"), **how), embedded=True)


def _extract(path: Path, wanted: Iterable[str]) -> str:
    """The statements of a source file binding `wanted`, with the comment lines right above
    each, in the file's order, after the imports (but symgrad's) they use."""
    wanted = set(wanted)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    imports: list[tuple[ast.stmt, str]] = []
    kept: list[tuple[ast.stmt, str]] = []
    for node in ast.parse(text).body:
        start, end = _span(node)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if not _from_symgrad(node, ()):
                imports.append((node, "\n".join(lines[start:end])))
        elif _bound(node) & wanted:
            while start > 0 and lines[start - 1].lstrip().startswith("#"):
                start -= 1
            kept.append((node, "\n".join(lines[start:end])))
    found = {n for node, _ in kept for n in _bound(node)}
    if wanted - found:
        raise RuntimeError(f"save: {path.name} no longer defines {sorted(wanted - found)}")
    used = {t.string for _, code in kept for t in tokenize.generate_tokens(
        io.StringIO(code).readline) if t.type == tokenize.NAME}
    out = "\n".join(code for node, code in imports if _bound(node) & used)
    previous: ast.stmt | None = None
    for node, code in kept:
        defs = isinstance(node, ast.FunctionDef) or isinstance(previous, ast.FunctionDef)
        out += ("\n\n\n" if defs or previous is None else "\n\n") + code
        previous = node
    return out


# ---- one namespace: names kept apart -------------------------------------------------------------


def _import_objects(node: ast.stmt) -> dict[str, Any]:
    """What an import statement binds (run in a scratch namespace: numpy, numba, llvmlite and
    the standard library only ever appear here)."""
    ns: dict[str, Any] = {}
    exec(compile(ast.Module([node], []), "<import>", "exec"), ns)
    return {k: v for k, v in ns.items() if k != "__builtins__"}


def _keep_apart(parts: list[_Part]) -> list[_Part]:
    """The parts, each name bound once: a name that two parts import must be the same object;
    a private name an embedded part defines again is renamed there; any other clash raises."""
    seen: dict[str, tuple[str, Any]] = {}  # name -> (part title, imported object or None)
    out = []
    for part in parts:
        renames: dict[str, str] = {}
        mine: dict[str, Any] = {}
        for node in ast.parse(part.text).body:
            objs = (_import_objects(node)
                    if isinstance(node, (ast.Import, ast.ImportFrom)) else {})
            for name in _bound(node):
                mine.setdefault(name, objs.get(name))
        for name, obj in mine.items():
            if name not in seen:
                continue
            title, prev = seen[name]
            if obj is not None and obj is prev:
                continue
            if part.embedded and name.startswith("_") and obj is None:
                renames[name] = f"{name}_{_tag(part.title)}"
                continue
            raise RuntimeError(f"save: {name!r} is defined both in {title!r} and in "
                               f"{part.title!r}; the saved module would mix them up")
        text = _rename(part.text, renames) if renames else part.text
        for name, obj in mine.items():
            seen.setdefault(renames.get(name, name), (part.title, obj))
        out.append(_Part(part.title, text, part.embedded, renames))
    return out


def _tag(title: str) -> str:
    """``dense`` for "symgrad/executors/dense.py: ...": a suffix for renamed names."""
    stem = title.split(":")[0].rsplit("/", 1)[-1].removesuffix(".py")
    return re.sub(r"\W", "_", stem).strip("_")


def _rename(text: str, renames: Mapping[str, str]) -> str:
    """`text` with the identifiers in `renames` renamed (names only: not in strings or
    comments; f-strings are single tokens in Python 3.11, so a name used only inside one is
    not renamed, which the import of the saved module would show as a NameError)."""
    lines = text.splitlines(keepends=True)
    edits: dict[int, list[tuple[int, int, str]]] = {}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.NAME and tok.string in renames:
            (row, col), (_, end) = tok.start, tok.end
            edits.setdefault(row - 1, []).append((col, end, renames[tok.string]))
    for row, spans in edits.items():
        line = lines[row]
        for col, end, new in sorted(spans, reverse=True):
            line = line[:col] + new + line[end:]
        lines[row] = line
    return "".join(lines)


# ---- the line lowering ---------------------------------------------------------------------------

POW_LIBM = '''from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic


@intrinsic
def pow_libm(typingctx, x, p):
    """C's pow(x, p), the interpreted engine's x ** p, called so that LLVM may not constant-fold
    or strength-reduce it (pow_libm(x, 2.0) is not x * x): as symgrad.vecmath.pow_libm."""
    if not all(isinstance(a, (types.Float, types.Integer)) for a in (x, p)):
        return None

    def codegen(context, builder, signature, args):
        f64 = ir.DoubleType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f64, [f64, f64]),
                                            "pow")
        fn.attributes.add("nobuiltin")
        return builder.call(fn, args)

    return types.float64(types.float64, types.float64), codegen
'''


def _lines_parts(name: str, vg: Kernel, fw: Kernel) -> list[_Part]:
    """The kernels and batch loops symgrad generated, compiled as it compiles them, and the
    calls of one row, rows, and summed rows the public functions make."""
    body = codegen.module_body([vg, fw])
    parts = []
    if "pow_libm(" in body:
        parts.append(_Part("C's pow for the kernels (as symgrad.vecmath.pow_libm)", POW_LIBM))
    fns = [n.name for n in ast.parse(body).body if isinstance(n, ast.FunctionDef)]
    jits = "\n".join(f"{fn} = _symgrad_jit({fn})" for fn in fns)
    parts.append(_Part(
        f"the generated kernels of {name} and their batch loops (as f.source has them)",
        f"{body}\n\n# JIT-compiled as symgrad compiles them (the loops call the compiled kernels)"
        f"\n{jits}\n"))
    loops = []
    for which, k in (("value_and_grad", vg), ("forward", fw)):
        acc = any(r in k.layout.accumulate for r, _ in k.layout.results)
        entries = [("length", str(len(k.func.body))), ("kernel", k.name)]
        entries += [(s, f"{k.name}_{s}" if acc or not s.startswith("sum") else "None")
                    for s in ("rows", "rows_chunks", "sum", "sum_chunks")]
        loops.append(f'    "{which}": {{\n'
                     + "".join(f'        "{key}": {v},\n' for key, v in entries) + "    },")
    table = "KERNELS = {\n" + "\n".join(loops) + "\n}\n"
    parts.append(_Part("running the kernels: one row, rows, summed rows (as "
                       "symgrad.executors.lines.NumbaLines runs them)",
                       table + LINES_DRIVER.format(THREAD_WORK=_thread_work())))
    return parts


LINES_DRIVER = '''
THREAD_WORK = {THREAD_WORK}  # instructions x rows from which a batch runs on several threads


def _one(which, p, x, out, acc):
    """One row."""
    kernel = KERNELS[which]["kernel"]
    if acc is None:
        kernel(p, x, out)
    else:
        kernel(p, x, out, acc)


def _rows(which, p, X, values, acc):
    """Every row, accumulated results per row (acc None: there are none)."""
    k = KERNELS[which]
    arrays = (p, X, values) if acc is None else (p, X, values, acc)
    threads = _threads(X.shape[0], k["length"])
    if threads <= 1:
        k["rows"](*arrays)
    else:
        run_on_threads(k["rows_chunks"], (np.zeros(1, np.int64), *arrays), threads)


def _sum(which, p, X, values, acc):
    """Every row, accumulated results summed into acc: each chunk into a buffer of its own,
    then the buffers added in chunk order."""
    k = KERNELS[which]
    threads = _threads(X.shape[0], k["length"])
    if threads <= 1:
        k["sum"](p, X, values, acc)
        return
    bufs = np.zeros((_n_chunks(X.shape[0]), *acc.shape))
    run_on_threads(k["sum_chunks"], (np.zeros(1, np.int64), p, X, values, bufs), threads)
    for c in range(bufs.shape[0]):
        acc += bufs[c]
'''


def _thread_work() -> int:
    """How much work a batch needs to run on threads in a saved module, of either lowering. Its
    threads are `threads.run_on_threads`'s, which take longer to start than the tape executor's
    own helpers, so it uses the threshold of the line executor, which runs on them too."""
    from .executors.lines import NumbaLines

    return NumbaLines.THREAD_WORK


# ---- the tape lowering ---------------------------------------------------------------------------


def _tape_parts(executor: Any, vg: Kernel, fw: Kernel) -> list[_Part]:
    """The dense kernels, the libm ports and their verification, the interpreter, the plans."""
    from .executors import tape_plan

    plans = {}
    for which, k in (("value_and_grad", vg), ("forward", fw)):
        planned = getattr(executor, "plans", {}).get(k.name)  # the tape executor's own
        if planned is None:
            tp = tape.lower(k.func, k.layout.n_uniform(), k.layout.n_assigned())
            planned = tape_plan.plan(tp, k.layout.n_uniform(), k.layout.n_assigned())
        plans[which] = planned
    ops = sorted({tape_plan.OPNAMES[op] for pl in plans.values()
                  for op in pl.steps[:, 0].tolist() if op < tape.DOT})
    return [
        _embedded("symgrad/executors/dense.py: the dense-layer kernels",
                  HERE / "executors" / "dense.py"),
        _embedded("symgrad/executors/native_threads.py: helper threads waiting in compiled "
                  "code (the interpreter's shared batches; this module runs its own threads)",
                  HERE / "executors" / "native_threads.py"),
        _embedded("symgrad/_libm_ports.py: glibc's tanh, exp and log, ported (tables computed "
                  "by symgrad, written out)", HERE / "_libm_ports.py",
                  drop={"_mp_double", "_exp_table", "_log_tables"}, drop_modules={"mpmath"},
                  replace=_table_literals()),
        _Part("symgrad/ops.py (in part): the engine's rules, the ports' references",
              _extract(HERE / "ops.py", OPS_NAMES) + "\n\n\n" + REFERENCES, embedded=True),
        _Part("symgrad/vecmath.py (in part): the sample the ports are verified on",
              _extract(HERE / "vecmath.py", VECMATH_NAMES), embedded=True),
        _Part("the tape interpreter (symgrad.executors.interpreter.interpreter_source: "
              "symgrad/executors/interpreter_static.py, then the generated part)",
              _interpreter(ops), embedded=True),
        _Part("the model's plans (symgrad.executors.tape_plan.BlockPlan, packed), and running "
              "them (as symgrad.executors.interpreter.TapeInterpreter runs them)",
              _plans(plans, ops)),
    ]


VECMATH_NAMES = ("OPS", "_check_op", "mismatches", "_SPECIALS", "_SPLITTERS", "_LN2",
                 "_thresholds", "_around", "sample")
OPS_NAMES = ("_exp", "_log", "_sigmoid")
# vecmath.REFERENCES is the op table's rules; here, the same functions named directly
REFERENCES = ('# the engine\'s rules (symgrad.ops: OPS[op].impl), what the ports must equal\n'
              'REFERENCES = {"tanh": math.tanh, "exp": _exp, "log": _log, '
              '"sigmoid": _sigmoid}')


def _table_literals() -> dict[str, str]:
    """The statements of ``_libm_ports.py`` that compute its tables, as literals."""
    from . import _libm_ports as lp

    def floats(a: np.ndarray) -> str:
        items = map(_float_literal, a.tolist())
        return f"np.array({_list_literal(items, ' ' * 8, ' ' * 4)}, dtype=np.float64)"

    def ints(a: np.ndarray) -> str:
        return f"np.array({_list_literal(map(str, a.tolist()), ' ' * 8, ' ' * 4)}, dtype=np.int64)"

    exp = (f"# _exp_table(), as symgrad computes it with mpmath\n_EXP_TAIL, _EXP_SBITS = (\n"
           f"    {floats(lp._EXP_TAIL)},\n    {ints(lp._EXP_SBITS)},\n)")
    log = ("# _log_tables(), as symgrad computes them with mpmath\n"
           "_LOG_INVC, _LOG_LOGC, _LOG_CHI, _LOG_CLO = (\n"
           + "".join(f"    {floats(a)},\n" for a in (lp._LOG_INVC, lp._LOG_LOGC, lp._LOG_CHI,
                                                     lp._LOG_CLO)) + ")")
    return {"_EXP_TAIL": exp, "_LOG_INVC": log}


def _interpreter(ops: list[str]) -> str:
    """symgrad's interpreter module, its ``run_elementwise`` generated for `ops` with the
    ports chosen at import (``tanh_port``, ...), then the JIT bindings."""
    from .executors import interpreter as interp

    text = _copy(interp.interpreter_source())
    tree = ast.parse(text)
    last = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name ==
            "run_elementwise"][-1]
    start, end = _span(last)
    lines = text.splitlines()
    ports = {fn: f"{fn}_port" for fn in interp.PORTED}
    generated = interp._elementwise_source(ops, ports).rstrip("\n").splitlines()
    text = "\n".join([*lines[:start], *generated, *lines[end:]])
    used = sorted({fn for op in ops for fn in interp.PORTED if f"np.{fn}(" in OPS[op].py})
    binds = [f"{fn}_port, {fn}_libm = VARIANTS[_VARIANT][{fn!r}], VARIANTS['libm'][{fn!r}]"
             for fn in used]
    plain = sorted({n.name for n in ast.parse(text).body
                    if isinstance(n, ast.FunctionDef) and not n.decorator_list})
    jits = "\n".join(f"{fn} = _symgrad_jit({fn})" for fn in plain)
    return f"{text}\n\n\n{PORT_CHOICE}\n" + "\n".join(binds) + (
        f"\n\n# JIT-compiled as symgrad compiles the interpreter (symgrad.jit.helper)\n{jits}\n")


PORT_CHOICE = '''def _host_fma():
    """Whether this CPU has FMA: the ports of glibc's FMA build then (else its plain build), as
    symgrad.executors.interpreter._ports chooses; verified on import (PORTS), else libm."""
    import llvmlite.binding as llvm

    try:
        return bool(llvm.get_host_cpu_features().get("fma", False))
    except RuntimeError:  # no feature list on this host
        return False


_VARIANT = "fma" if _host_fma() else "nofma"'''


def _plans(plans: Mapping[str, Any], ops: list[str]) -> str:
    """The packed plans as arrays, the port verification, and the runs over chunks."""
    from .executors import interpreter as interp
    from .executors import tape_plan

    entries = []
    for which, pl in plans.items():
        ints, fields = tape_plan.pack(pl)
        entries.append(
            "".join(f"    # {line}\n" for line in textwrap.wrap(pl.describe().lstrip("# "), 94))
            + f'    "{which}": {{\n'
            f'        "ints": {_indent(_encoded(ints, "<i8"))},\n'
            f'        "fields": {_indent(_encoded(fields, "<i8"))}.reshape(-1, 2),\n'
            f'        "p": {_indent(_encoded(pl.p, "<f8"))},\n'
            f'        "uniform_value": {_indent(_encoded(pl.uniform_value, "<f8"))},\n'
            f'        "n_slots": {int(pl.n_slots)}, "n_rows": {int(pl.n_rows)}, '
            f'"n_grid": {len(pl.grid_cols)}, "length": {len(pl.tape.out)},\n    }},')
    ported = [(op, tape.OPCODES[op], tuple(fn for fn in interp.PORTED
                                           if f"np.{fn}(" in OPS[op].py)) for op in ops]
    ported = [(op, code, used) for op, code, used in ported if used]
    return ("PLANS = {\n" + "\n".join(entries) + "\n}\n"
            + TAPE_DRIVER.format(N_OPCODES=len(tape.OPCODES), BLOCK=interp.BLOCK,
                                 THREAD_WORK=_thread_work(), PORTED=ported))


def _indent(text: str) -> str:
    return text.replace("\n", "\n    ")


TAPE_DRIVER = '''
BLOCK = {BLOCK}  # examples per block of the interpreter
THREAD_WORK = {THREAD_WORK}  # instructions x rows from which a batch runs on several threads
N_OPCODES = {N_OPCODES}
# the ops the plans use whose loops call a ported function: (op, opcode, functions)
PORTED_OPS = {PORTED}


def _verify_ports():
    """Per opcode, whether its loop may use the ports: it must give the bits of the reference
    (the C library through math) on the sample of each function it calls, run through
    run_elementwise itself (as symgrad.executors.interpreter._Interpreter._verify does)."""
    exact = np.zeros(N_OPCODES, np.int64)
    verdicts = {{}}
    for name, code, used in PORTED_OPS:
        xs = np.concatenate([sample(fn) for fn in used])
        want = np.array([REFERENCES[name](x) for x in xs.tolist()])
        work = np.stack([xs, np.zeros_like(xs)])
        idx = np.zeros(1, np.int64)
        flags = np.zeros_like(exact)
        flags[code] = 1
        run_elementwise(code, 0, 1, idx + 1, idx, idx, idx, np.zeros(1), work, len(xs), flags)
        bad = mismatches(work[1], want)
        if bad.size == 0:
            exact[code], verdicts[name] = 1, "exact vectorised port"
        else:
            verdicts[name] = (f"libm: the port differs on {{bad.size}} of {{xs.size}} inputs, "
                              f"first at x={{xs[bad[0]].hex()}}")
    return exact, verdicts


EXACT, PORTS = _verify_ports()


def _run(which, params, X, values, acc, per_row):
    """The plan over the rows of X: values (N, n_out) assigned, acc (1 or N, n_acc) added
    into, summed over the rows or per row (symgrad.executors.interpreter._Interpreter.run)."""
    plan = PLANS[which]
    n = X.shape[0]
    threads = _threads(n, plan["length"])
    counter = np.zeros(1 if threads > 1 else 0, np.int64)
    head = (counter, plan["ints"], plan["fields"], plan["p"], plan["uniform_value"],
            plan["n_slots"], plan["n_rows"], BLOCK)
    if per_row:
        fn, args, chunk_acc = run_rows, (*head, params, X, values, acc, EXACT), None
    else:
        chunk_acc = np.empty((_n_chunks(n), acc.shape[1]))
        fn = run_sums
        args = (*head, plan["n_grid"], params, X, values, acc, chunk_acc, EXACT)
    if threads <= 1:
        fn(*args)
        return
    run_on_threads(fn, args, threads)
    if chunk_acc is not None:
        add_in_order(chunk_acc, acc)


def _one(which, p, x, out, acc):
    """One row."""
    acc = np.zeros((1, 0)) if acc is None else acc.reshape(1, -1)
    _run(which, p, x.reshape(1, -1), out.reshape(1, -1), acc, False)


def _rows(which, p, X, values, acc):
    """Every row, accumulated results per row (acc None: there are none)."""
    n = X.shape[0]
    acc = np.zeros((n, 0)) if acc is None else acc.reshape(n, -1)
    _run(which, p, X, values.reshape(n, -1), acc, True)


def _sum(which, p, X, values, acc):
    """Every row, accumulated results summed into acc."""
    _run(which, p, X, values.reshape(X.shape[0], -1), acc.reshape(1, -1), False)
'''


# ---- the public functions ------------------------------------------------------------------------


def _api(f: Compiled, params: np.ndarray) -> str:
    outs, wrt, ins = f._names()
    consts = [
        f"WRT = {_list_literal(map(repr, wrt))}",
        f"INPUTS = {_list_literal(map(repr, ins))}",
        f"OUTPUTS = {_list_literal(map(repr, outs))}",
        f"PARAMS = np.array({_list_literal(map(_float_literal, params.tolist()))}, "
        "dtype=np.float64)",
        "INPUT_VALUES = np.array("
        f"{_list_literal(map(_float_literal, f.current_inputs().tolist()))}, dtype=np.float64)",
        f"N_PARAMS, N_INPUTS, N_OUT = {f.n_params}, {f.n_inputs}, {f.n_out}",
    ]
    chunks = f"max(1, min({layout.MAX_CHUNKS}, n // {layout.CHUNK_ROWS}))"
    return "\n".join(consts) + "\n" + API.format(CHUNKS=chunks)


API = '''

from collections.abc import Mapping


def _n_chunks(n):
    """How many chunks a batch of n rows is summed in (symgrad.layout.n_chunks)."""
    return {CHUNKS}


def _threads(n, length):
    """Threads for a batch of n rows of a function of `length` instructions: one for small
    batches, else Numba's thread count (numba.set_num_threads), at most one per chunk."""
    if n * length < THREAD_WORK or _n_chunks(n) < 2:
        return 1
    return min(n_threads(), _n_chunks(n))


def _has_bool(a):
    """A bool array, or a bool among a list's items (or its rows' items)."""
    if isinstance(a, (bool, np.bool_)):
        return True
    if isinstance(a, np.ndarray):
        return a.dtype.kind == "b"
    if isinstance(a, (list, tuple)):
        return any(_has_bool(v) if isinstance(v, (list, tuple, np.ndarray))
                   else isinstance(v, (bool, np.bool_)) for v in a)
    return False


def _floats(a, what):
    """`a` as a float64 array, refusing what is not a sequence of real numbers (as symgrad's
    compiled function does): text, a dict or a set, booleans, other dtypes."""
    if isinstance(a, (str, bytes)):
        raise TypeError(f"{{what}}: expected numbers, got {{type(a).__name__}} {{a!r:.40}}")
    if isinstance(a, (Mapping, set, frozenset)):
        raise TypeError(f"{{what}}: expected a sequence of floats, got a {{type(a).__name__}} "
                        "(no order, or keys); pass a list of floats in the order of the names")
    if _has_bool(a):
        raise TypeError(f"{{what}}: expected floats, got booleans (True/False would silently be "
                        "1.0/0.0); convert them explicitly, e.g. np.asarray(x, dtype=float)")
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{{what}}: could not read as an array of floats ({{e}})") from None
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{{what}}: expected real numbers, got an array of dtype {{arr.dtype}}")
    # C-contiguous and writeable: the arrays the compiled functions are built for
    return np.require(arr, np.float64, ["C_CONTIGUOUS", "ALIGNED", "WRITEABLE"])


def _vector_of(a, n, what):
    arr = _floats(a, what)
    if arr.shape != (n,):
        raise ValueError(f"{{what}}: expected {{n}} float(s), got shape {{arr.shape}}")
    return arr


def _params(params):
    return PARAMS.copy() if params is None else _vector_of(params, N_PARAMS, "params")


def _inputs(inputs):
    return INPUT_VALUES.copy() if inputs is None else _vector_of(inputs, N_INPUTS, "inputs")


def _matrix_of(X):
    arr = _floats(X, "X")
    if arr.ndim != 2 or arr.shape[1] != N_INPUTS:
        raise ValueError(f"X: expected shape (N, {{N_INPUTS}}) (one example a row), got "
                         f"{{arr.shape}}")
    if arr.shape[0] == 0:
        raise ValueError("X: the batch is empty (0 rows)")
    return arr


def value_and_grad(params=None, inputs=None):
    """Value and gradient at params (len(WRT) floats; None: PARAMS) and inputs (len(INPUTS)
    floats; None: INPUT_VALUES): a float and a (len(WRT),) array for one output; an (N_OUT,)
    array and the (N_OUT, len(WRT)) Jacobian for several."""
    p, x = _params(params), _inputs(inputs)
    out, grad = np.empty(N_OUT), np.zeros((N_OUT, N_PARAMS))
    _one("value_and_grad", p, x, out, grad)
    if N_OUT == 1:
        return float(out[0]), grad[0]
    return out, grad


def forward(params=None, inputs=None):
    """The value only (params None: PARAMS, inputs None: INPUT_VALUES): a float, or an (N_OUT,)
    array for several outputs."""
    p, x = _params(params), _inputs(inputs)
    out = np.empty(N_OUT)
    _one("forward", p, x, out, None)
    return float(out[0]) if N_OUT == 1 else out


def batch(params, X, reduce="sum"):
    """Values and gradients over the rows of X, an (N, len(INPUTS)) array.

    reduce: "sum" (gradients summed over the rows), "mean" (averaged) or "none" (one per row).
    Returns (values, grad): values (N,) ((N, N_OUT) for several outputs); grad (len(WRT),) for
    "sum" and "mean", (N, len(WRT)) for "none" (with an N_OUT axis after N for several).
    """
    if reduce not in ("sum", "mean", "none"):
        raise ValueError(f"reduce must be one of ('sum', 'mean', 'none'), got {{reduce!r}}")
    p, Xa = _params(params), _matrix_of(X)
    n = Xa.shape[0]
    values = np.empty((n, N_OUT))
    if reduce == "none":
        grads = np.zeros((n, N_OUT, N_PARAMS))
        _rows("value_and_grad", p, Xa, values, grads)
        g = grads[:, 0, :] if N_OUT == 1 else grads
    else:
        acc = np.zeros((N_OUT, N_PARAMS))
        _sum("value_and_grad", p, Xa, values, acc)
        if reduce == "mean":
            acc /= n
        g = acc[0] if N_OUT == 1 else acc
    return (values[:, 0] if N_OUT == 1 else values), g


def batch_forward(params, X):
    """Values only over the rows of X: (N,), or (N, N_OUT) for several outputs."""
    p, Xa = _params(params), _matrix_of(X)
    values = np.empty((Xa.shape[0], N_OUT))
    _rows("forward", p, Xa, values, None)
    return values[:, 0] if N_OUT == 1 else values


__all__ = ["INPUTS", "INPUT_VALUES", "OUTPUTS", "PARAMS", "WRT", "batch", "batch_forward",
           "forward", "value_and_grad"]
'''

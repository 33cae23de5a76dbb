"""Graphviz drawings of `Value` graphs in the lecture's look: a record per value, a node per op.

Imports `symgrad.engine`, `ir` and `trace`, and graphviz lazily (the only module that uses
it), so `import symgrad` stays light and works without graphviz's `dot` program.
"""

from __future__ import annotations

import functools
import html
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .engine import Value, topological_order
from .ir import Func, Var, atom_text, names
from .trace import as_outputs

if TYPE_CHECKING:
    import graphviz

__all__ = ["draw_dot", "draw_ir", "render"]

# characters with a meaning inside a record label (fields, ports, quoting, escapes)
_RECORD_SPECIAL = frozenset('{}|<>"\\')
# inside a plain quoted label only the quote and the escape character are special
_PLAIN_SPECIAL = frozenset('"\\')


NO_DOT = (
    "graphviz's `dot` program was not found, so this drawing cannot be shown as an image. "
    "Install it (Debian/Ubuntu: apt-get install graphviz; conda: conda install -c conda-forge "
    "graphviz; macOS: brew install graphviz) and display it again; `.source` holds the dot text "
    "meanwhile, and symgrad.viz.render(drawing, path) writes it to a file."
)


@functools.cache
def _drawing_class() -> type[graphviz.Digraph]:
    """`graphviz.Digraph` that, displayed in Jupyter without `dot`, shows `NO_DOT` and its dot
    source instead of raising ExecutableNotFound (made on first use: graphviz loads lazily)."""
    import graphviz

    class Drawing(graphviz.Digraph):  # type: ignore[misc]
        """A graphviz.Digraph that degrades to text where `dot` is missing."""

        def _repr_mimebundle_(self, include: Any = None, exclude: Any = None,
                              **kw: Any) -> dict[str, Any]:
            try:
                return super()._repr_mimebundle_(include, exclude, **kw)  # type: ignore[no-any-return]
            except (graphviz.ExecutableNotFound, FileNotFoundError):
                return _without_dot(self.source)

    # importable as symgrad.viz.Drawing (the module's __getattr__ makes it), so drawings pickle
    Drawing.__module__, Drawing.__qualname__ = __name__, "Drawing"
    return Drawing


def __getattr__(name: str) -> Any:
    if name == "Drawing":
        return _drawing_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _without_dot(source: str) -> dict[str, str]:
    """What a drawing displays when `dot` is missing: the message, then its dot source."""
    return {
        "text/plain": f"{NO_DOT}\n\n{source}",
        "text/html": (f"<p><b>symgrad:</b> {html.escape(NO_DOT)}</p><details><summary>dot "
                      f"source</summary><pre>{html.escape(source)}</pre></details>"),
    }


def _escape(text: str, special: frozenset[str]) -> str:
    """User text as literal label text: specials backslash-escaped, no raw control characters."""
    out = []
    for ch in text.replace("\r\n", "\n").replace("\r", "\n"):
        if ch == "\n":
            out.append("\\n")  # dot's own line-break escape, never a raw newline
        elif ch in special:
            out.append("\\" + ch)
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\\\x{ord(ch):02x}")  # shown as the text \x00: dot may choke on them
        else:
            out.append(ch)
    return "".join(out)


def draw_dot(
    root: Value | Iterable[Value], rankdir: str = "LR", format: str = "svg"
) -> graphviz.Digraph:
    """Draw the graph that computes `root`, as in the lecture.

    Each Value is a record ``{ label | data 2.0000 | grad 0.0000 }`` (no label cell when it
    has no label); each non-leaf also gets a small node showing its op (``+``, ``*``, ``tanh``)
    with edges from its operands, in operand order, so ``x * x`` shows two edges.

    Args:
        root: a Value, or a list of Values drawn together (shared nodes appear once).
        rankdir: graphviz layout direction, ``"LR"`` (left to right) or ``"TB"``.
        format: the output format used when the drawing is rendered (``"svg"``, ``"png"``).

    Returns:
        A ``graphviz.Digraph``; it displays inline in Jupyter (without graphviz's ``dot``
        program, as a message saying how to install it, and the dot text), ``.source`` is the
        dot text, and `render` writes it to a file. Node names are positions in the
        topological order, so equal graphs give identical source.
    """
    import graphviz

    nodes = topological_order(as_outputs(root, "draw_dot: root"))
    index = {id(n): i for i, n in enumerate(nodes)}
    dot = _drawing_class()(format=format, graph_attr={"rankdir": rankdir})
    for i, n in enumerate(nodes):
        fields = [f"data {n.data:.4f}", f"grad {n.grad:.4f}"]
        if n.label:
            fields.insert(0, _escape(n.label, _RECORD_SPECIAL))
        # nohtml: a label that happens to look like <...> must stay a record, not HTML
        dot.node(f"v{i}", graphviz.nohtml("{ " + " | ".join(fields) + " }"), shape="record")
        if n._op:
            dot.node(f"op{i}", graphviz.nohtml(_escape(n._op, _PLAIN_SPECIAL)))
            dot.edge(f"op{i}", f"v{i}")
            for child in n._prev:
                dot.edge(f"v{index[id(child)]}", f"op{i}")
    return dot


def draw_ir(func: Func | Any, rankdir: str = "LR", format: str = "svg") -> graphviz.Digraph:
    """Draw an IR function (or a compiled object's ``.ir``): what the compiler did, as a graph.

    Arguments are boxes, each instruction an ellipse ``name = op`` with edges from its operands
    in order (literals written on the edge), derivative instructions shaded, and the results
    marked ``return k``. Names are those of the printed IR, so the drawing and ``print(f.ir)``
    can be read side by side.

    Args:
        func: an `ir.Func`, or anything with an ``.ir`` attribute holding one (``sg.compile``'s
            result).
        rankdir, format: as for `draw_dot`.
    """

    f = getattr(func, "ir", func)
    if not isinstance(f, Func):
        raise TypeError(f"draw_ir: expected an IR Func or a compiled function, got "
                        f"{type(func).__name__}")
    nm = names(f)

    def nid(v: Var) -> str:  # graphviz ids: values, literals and results never share one
        return "n_" + nm[v]

    dot = _drawing_class()(format=format, graph_attr={"rankdir": rankdir})
    for a in f.args:
        dot.node(nid(a), nm[a], shape="box")
    for ins in f.body:
        params = "".join(f" {k}={v:g}" for k, v in ins.param_dict().items())
        style = {"style": "filled", "fillcolor": "lightgrey"} if ins.origin is not None else {}
        dot.node(nid(ins.out), f"{nm[ins.out]} = {ins.op}{params}", **style)
        for i, a in enumerate(ins.args):
            if isinstance(a, Var):
                dot.edge(nid(a), nid(ins.out), label=str(i) if len(ins.args) > 1 else "")
            else:
                lit = f"lit_{nm[ins.out]}_{i}"
                dot.node(lit, atom_text(a, nm), shape="plaintext")
                dot.edge(lit, nid(ins.out))
    for k, r in enumerate(f.results):
        dot.node(f"ret_{k}", f"return {k}", shape="plaintext")
        src = nid(r) if isinstance(r, Var) else f"ret_lit_{k}"
        if not isinstance(r, Var):
            dot.node(src, atom_text(r, nm), shape="plaintext")
        dot.edge(src, f"ret_{k}")
    return dot


def _dot_program() -> str | None:
    return shutil.which("dot")


def render(dot: graphviz.Digraph, path: str | Path, format: str = "svg") -> Path:
    """Write a drawing to `path`, falling back to its dot source when graphviz is missing.

    Args:
        dot: a drawing, e.g. from `draw_dot`.
        path: the output file; ``.<format>`` is appended unless it already ends so.
        format: any graphviz output format (``"svg"``, ``"png"``, ``"pdf"``).

    Returns:
        The path written: the rendered file, or, when graphviz's ``dot`` program is not
        installed, the same path with a ``.dot`` suffix holding the source (with a warning).
    """
    import graphviz

    out = Path(path)
    if out.suffix.lower() != f".{format.lower()}":
        out = out.with_name(f"{out.name}.{format}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if _dot_program() is not None:
        try:
            out.write_bytes(dot.pipe(format=format))
            return out
        except graphviz.ExecutableNotFound:
            pass  # on PATH but not runnable: fall back like a missing one
    src = out.with_suffix(".dot")
    src.write_text(dot.source, encoding="utf-8")
    warnings.warn(
        f"graphviz's `dot` program was not found, so no {format} was rendered; wrote the dot "
        f"source to {src} instead (install the Debian package `graphviz`, e.g. "
        f"`apt-get install graphviz`, then run `dot -T{format} -O {src.name}`)",
        RuntimeWarning,
        stacklevel=2,
    )
    return src

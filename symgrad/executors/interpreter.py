"""The tape executor: one Numba-compiled interpreter, built once, runs every model's tape.

Imports `ops`, `jit`, `layout`, `tape`, `vecmath` and this package's `dense`, `tape_plan`,
`threads` and `base`. Numba's compile time grows faster than linearly with the length of
straight-line code, so big graphs are lowered to a `tape.Tape`, planned (`tape_plan`: dense
layers become calls of the order-exact dense kernels, weight gradients outer products) and run by
one generic interpreter: its static part is real code (`interpreter_static`), and only
``run_elementwise``, one branch per op of the op table, is generated. Transcendental ops run the
exact vectorised ports of `symgrad.vecmath` where they verify on this machine (checked with this
very interpreter), libm elsewhere: the engine's numbers either way. The module is compiled once
(and kept in Numba's disk cache), whatever the model.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from .. import cache, jit, layout, tape
from ..ir import Func, Instr, Var
from ..layout import Kernel
from ..ops import OPS
from .base import BatchMode, Executor, TapeExecutor
from .tape_plan import DENSE, BlockPlan, pack, plan

if TYPE_CHECKING:
    from .threads import Pace

__all__ = ["TapeInterpreter", "interpreter_source", "run_tape"]

BLOCK = 64  # examples per block: a multiple of the dense kernels' tile and of layout.ALIGN
PORTED = ("tanh", "exp", "log")  # the libm functions templates call that vecmath ports
LIBM = {fn: f"{fn}_libm" for fn in PORTED}
HERE = Path(__file__).parent
# what the generated module's compiled code inlines from other files: their text is hashed into
# the module's (so into its cache key), since Numba's cache notices changes to one file only
_INLINED = (HERE / "interpreter_static.py", HERE / "dense.py", HERE / "threads.py",
            HERE / "native_threads.py")
_NO_CHUNKS = np.zeros((0, 0))  # a per-row batch's (absent) chunk sums
WAIT_POLLS = 100_000  # polls for helpers finishing their last chunk before yielding the core
_yield_core = getattr(os, "sched_yield", lambda: time.sleep(1e-5))


def _ports() -> dict[str, str]:
    """The vecmath function each transcendental template call becomes, e.g. ``tanh_fma``: the
    port of the build glibc runs on a CPU like this one (verified before use, `_verify`)."""
    import llvmlite.binding as llvm

    try:
        fma = bool(llvm.get_host_cpu_features().get("fma", False))
    except RuntimeError:  # no feature list on this host
        fma = False
    variant = "fma" if fma else "nofma"
    return {fn: f"{fn}_{variant}" for fn in PORTED}


def _expression(op_name: str, ports: dict[str, str] | None) -> str:
    """An op's template over ``work[a, e]``/``work[b, e]``, with libm calls swapped for ports."""
    op = OPS[op_name]
    expr = op.py.format(*["work[a, e]", "work[b, e]", "work[c, e]"][: op.arity], p="pk")
    for fn, port in (ports or {}).items():
        expr = expr.replace(f"np.{fn}(", f"{port}(")
    return expr


def _elementwise_source(ops: Sequence[str], ports: dict[str, str]) -> str:
    """``run_elementwise``: a run of one op of `ops` over a block; a port's loop and libm's loop
    for the ops whose template calls a ported function (``exact[op]`` picks one at run time).
    libm is called through vecmath's ``*_libm``, which no vectoriser (Intel's SVML) may
    replace."""
    lines = [
        "def run_elementwise(op, lo, hi, out, a0, a1, a2, p, work, nb, exact):",
        '    """A run of one op over one block (generated from the op table)."""',
    ]

    def loop(indent: str, expr: str) -> list[str]:
        return [
            f"{indent}for k in range(lo, hi):",
            f"{indent}    o, a, b, c, pk = out[k], a0[k], a1[k], a2[k], p[k]",
            f"{indent}    for e in range(nb):",
            f"{indent}        work[o, e] = {expr}",
        ]

    for i, name in enumerate(sorted(ops)):
        code = tape.OPCODES[name]
        lines.append(f"    {'if' if i == 0 else 'elif'} op == {code}:  # {name}")
        plain, ported = _expression(name, LIBM), _expression(name, ports)
        if ported == plain:
            lines += loop("        ", plain)
        else:
            lines += ["        if exact[op]:", *loop("            ", ported), "        else:",
                      *loop("            ", plain)]
    return "\n".join(lines) + "\n"


def _imports(ops: Sequence[str], ports: dict[str, str]) -> set[str]:
    """The vecmath functions the templates of `ops` call: ports and libm's."""
    fns = {fn for name in ops for fn in PORTED if f"np.{fn}(" in OPS[name].py}
    return {ports[fn] for fn in fns} | {LIBM[fn] for fn in fns}


def interpreter_source() -> str:
    """The interpreter module's source: the static part, then the generated part."""
    ops = sorted(tape.OPCODES)
    ports = _ports()
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in _INLINED))
    from .. import vecmath

    head = [
        "# generated by symgrad from the op table: the tape interpreter",
        f"# inlined code: {digest.hexdigest()[:16]}, vecmath {vecmath.CACHE_TAG}",
    ]
    static = (HERE / "interpreter_static.py").read_text(encoding="utf-8")
    tail = [
        f"from symgrad.vecmath import {', '.join(sorted(_imports(ops, ports)))}",
        "",
        f"DOT_STEP = {tape.DOT}",
        f"DENSE_STEP = {DENSE}",
        f"CHUNK_ROWS = {layout.CHUNK_ROWS}",
        f"MAX_CHUNKS = {layout.MAX_CHUNKS}",
        f"ALIGN = {layout.ALIGN}",
        "",
        "",
        _elementwise_source(ops, ports),
    ]
    return "\n".join(head) + "\n" + static + "\n\n" + "\n".join(tail)


class _Interpreter:
    """The compiled interpreter (one per process, built on first use)."""

    _lock = threading.Lock()
    _build: ClassVar[Future[_Interpreter] | None] = None
    built: ClassVar[_Interpreter | None] = None  # once built: no Future to ask at each call
    QUIET_WAIT: ClassVar[float] = 3.0  # seconds waited at exit before saying why

    def __init__(self) -> None:
        ns, cached = jit.load(interpreter_source(), "tape_interpreter", True)
        self.ns = ns
        for name in ("run_elementwise", "run_dot", "run_block", "sum_results",
                     "scatter_grids", "row_results", "setup"):
            if not hasattr(ns[name], "py_func"):
                ns[name] = jit.helper(ns[name], cached)
        for name in ("run_sums", "run_rows", "add_in_order", "post", "finish", "run_posted",
                     "serve"):
            if not hasattr(ns[name], "py_func"):
                ns[name] = jit.helper(ns[name], cached, nogil=True)
        import numba

        from .native_threads import Helpers

        self.helpers = Helpers(ns["serve"], max(1, numba.config.NUMBA_NUM_THREADS - 1))
        self.exact = np.zeros(len(tape.OPCODES), np.int64)
        self.verdicts: dict[str, str] = {}
        for name, code in tape.OPCODES.items():
            used = [fn for fn in PORTED if f"np.{fn}(" in OPS[name].py]
            if used:
                self.exact[code], self.verdicts[name] = self._verify(name, code, used)
        self._compile_entries()

    def _compile_entries(self) -> None:
        """Compile every entry point now, by running them on a tiny tape (Numba compiles what a
        function can reach whatever the data), so that the first real call runs at once."""
        w, x = Var(1, "w"), Var(2, "x")
        body = (Instr(Var(3), "mul", (w, x)), Instr(Var(4), "tanh", (Var(3),)))
        func = Func("warm_up", (w, x), body, (Var(4), Var(3)))
        tp = tape.lower(func, 1, 1)
        pl = plan(tp, 1, 1)
        X, params = np.zeros((2, 1)), np.zeros(1)
        for per_row in (False, True):
            acc = np.zeros((2 if per_row else 1, 1))
            for threads in (1, 2):  # both ways of taking chunks
                self.run(pack(pl), pl, params, X, np.zeros((2, 1)), acc, per_row, threads)
        from .native_threads import BOX_LEN

        self.ns["serve"](np.zeros(BOX_LEN, np.int64), 0)  # a parked box: returns at once

    def _verify(self, name: str, code: int, used: list[str]) -> tuple[int, str]:
        """Whether op `name`'s ported loop gives the op table's rule's bits on vecmath's sample
        of the functions it uses (nan matching any nan), run through this very interpreter."""
        from .. import vecmath

        xs = np.concatenate([vecmath.sample(fn) for fn in used])
        impl = OPS[name].impl
        want = np.array([impl(x) for x in xs.tolist()])
        work = np.stack([xs, np.zeros_like(xs)])
        idx = np.zeros(1, np.int64)
        exact = np.zeros_like(self.exact)
        exact[code] = 1
        self.ns["run_elementwise"](code, 0, 1, idx + 1, idx, idx, idx, np.zeros(1), work,
                                   len(xs), exact)
        bad = vecmath.mismatches(work[1], want)
        if bad.size == 0:
            return 1, "exact vectorised port"
        j = int(bad[0])
        return 0, (f"libm: the port differs on {bad.size} of {xs.size} inputs, first at "
                   f"x={xs[j].hex()}")

    @classmethod
    def get(cls) -> _Interpreter:
        """The interpreter, built now if need be."""
        return cls.built or cls.building().result()

    @classmethod
    def building(cls) -> Future[_Interpreter]:
        """The interpreter: built, or being built on a thread of its own (a first-ever build
        compiles for seconds; later ones load Numba's disk cache). A build that failed is
        started again."""
        with cls._lock:
            fut = cls._build
            if fut is None or (fut.done() and fut.exception() is not None):
                fut = cls._build = Future()
                threading.Thread(target=cls._run_build, args=(fut,), daemon=True,
                                 name="symgrad-compile").start()
            return fut

    @staticmethod
    def _run_build(fut: Future[_Interpreter]) -> None:
        try:
            interp = _Interpreter()
        except BaseException as e:  # raised where the interpreter is waited for
            fut.set_exception(e)
            return
        _Interpreter.built = interp
        fut.set_result(interp)

    @classmethod
    def finish_build(cls) -> None:
        """At exit: wait for a first build under way, so that what it compiled reaches the
        cache (saying so, unless it ends within `QUIET_WAIT` seconds: a load from the cache
        does; Ctrl-C skips it). With the cache off there is nothing to keep."""
        fut = cls._build
        if fut is None or fut.done() or cache.cache_dir() is None:
            return
        try:
            fut.result(timeout=cls.QUIET_WAIT)
        except KeyboardInterrupt:
            return
        except BaseException:  # TimeoutError: still building; a failed build is not ours to report
            pass
        if fut.done():
            return
        print("symgrad: finishing the first build of the tape interpreter, so that the next "
              "run finds it in the cache (Ctrl-C skips) ...", file=sys.stderr, flush=True)
        with contextlib.suppress(BaseException):
            fut.result()

    @classmethod
    def forget_build(cls) -> None:
        """In a forked child: the thread building the interpreter is the parent's, not ours
        (the child starts its own build when it needs one)."""
        cls._lock = threading.Lock()
        if cls._build is not None and not cls._build.done():
            cls._build = None
            cls.built = None

    def run(self, packed: tuple[np.ndarray, np.ndarray], pl: BlockPlan, params: np.ndarray,
            X: np.ndarray, values: np.ndarray, acc: np.ndarray, per_row: bool,
            threads: int, n_chunks: int | None = None) -> None:
        """Run plan `pl` (`packed`) over the rows of `X` on `threads` threads, sums in
        `n_chunks` chunks (default `layout.n_chunks`)."""
        counter = np.zeros(1 if threads > 1 else 0, np.int64)
        head = (counter, *packed, pl.p, pl.uniform_value, pl.n_slots, pl.n_rows, BLOCK)
        if per_row:
            chunk_acc, n_grid = None, 0
            fn, args = self.ns["run_rows"], (*head, params, X, values, acc, self.exact)
        else:
            chunks = layout.n_chunks(X.shape[0]) if n_chunks is None else n_chunks
            chunk_acc, n_grid = np.empty((chunks, acc.shape[1])), len(pl.grid_cols)
            fn = self.ns["run_sums"]
            args = (*head, n_grid, params, X, values, acc, chunk_acc, self.exact)
        if threads <= 1:
            fn(*args)
            return
        # the job as helpers get it: run_sums's arguments (a per-row batch has no chunk sums)
        job = (int(per_row), *head, n_grid, params, X, values, acc,
               _NO_CHUNKS if chunk_acc is None else chunk_acc, self.exact)
        self._shared(fn, args, job, threads)
        if chunk_acc is not None:
            self.ns["add_in_order"](chunk_acc, acc)

    def _shared(self, fn: Callable[..., None], args: tuple[object, ...],
                job: tuple[object, ...], threads: int) -> None:
        """``fn(*args)`` on this thread and `threads - 1` helpers waiting in compiled code
        (`native_threads`): ``post`` hands them `job`, ``finish`` waits for those that joined,
        polling `WAIT_POLLS` times, then yielding this thread's core (a helper descheduled
        mid-chunk on a busy machine needs it).

        The helpers have the job's arrays by address only, nothing keeps them alive for them:
        this thread waits for every helper that took the job even when an exception (Ctrl-C's
        KeyboardInterrupt, raised where the wait checks for signals) comes meanwhile, and
        raises it after. The wait is written out here, not in a method of its own, since a
        pending signal is raised on entering a Python function, before it could wait."""
        boxes, job_id = self.helpers.boxes(threads - 1), self.helpers.job_id()
        finish, polls, interrupted = self.ns["finish"], WAIT_POLLS, None
        try:
            self.ns["post"](boxes, job_id, *job)
            fn(*args)
        finally:
            while True:
                try:
                    while finish(boxes, job_id, polls):
                        polls = 0
                        _yield_core()
                    break
                except BaseException as e:  # raised once no helper has the job
                    interrupted, polls = interrupted or e, 0
        if interrupted is not None:
            raise interrupted
        self.helpers.raise_errors()


atexit.register(_Interpreter.finish_build)
os.register_at_fork(after_in_child=_Interpreter.forget_build)


class TapeInterpreter(TapeExecutor):
    """The tape run by the compiled interpreter over blocks of `BLOCK` examples.

    Batches are summed in the chunks of `symgrad.layout`; a batch of at least `THREAD_WORK`
    instruction-rows may run its chunks on all of Numba's threads (helpers waiting in compiled
    code, `native_threads`), when that has been faster lately (`threads.Pace`).
    The interpreter is built on a thread of its own; until it is ready, calls and batches of
    at most `FALLBACK_WORK` instruction-rows run the same kernels as plain-Python line code
    (`lines.PythonLines`), which gives the same bits (one summation order for every
    lowering), and larger ones wait for it.
    """

    name = "tape"
    preparing = "planning the tape (its interpreter builds in the background)"
    THREAD_WORK: ClassVar[int] = 40_000
    FALLBACK_WORK: ClassVar[int] = 300_000
    FALLBACK_LENGTH: ClassVar[int] = 20_000  # longer kernels: Python source too costly to make

    def __init__(self, kernels: Sequence[Kernel], title: str, header: str) -> None:
        super().__init__(kernels, title, header)
        self.plans: dict[str, BlockPlan] = {}
        for k in kernels:
            pl = plan(self.tapes[k.name], k.layout.n_uniform(), k.layout.n_assigned())
            self.plans[k.name] = pl
            self.source = self.source.replace(f"# {k.name}\n", f"# {k.name}\n{pl.describe()}\n", 1)
        self.source += "\n\n" + interpreter_source()
        self._packed = {name: pack(pl) for name, pl in self.plans.items()}
        self._fallback: Executor | None = None
        self._fallback_lock = threading.Lock()
        self._paces: dict[tuple[str, bool, int], Pace] = {}
        self.last_threads = 1  # the threads the last batch ran on (for tests and curious users)
        _Interpreter.building()  # start it now

    def prepare(self) -> None:
        """Start building the interpreter (once per process); see the class."""

    @property
    def ready(self) -> bool:
        """Whether the compiled interpreter is built (else small calls run as plain Python)."""
        fut = _Interpreter.building()
        return fut.done() and fut.exception() is None

    def wait(self) -> None:
        """Block until the compiled interpreter is built (re-raising what its build raised)."""
        _Interpreter.building().result()

    def call(self, kernel: str, arrays: Sequence[np.ndarray]) -> None:
        """One row (as plain Python while the interpreter is being built)."""
        if self._use_python(kernel, 1):
            self._python().call(kernel, arrays)
            return
        super().call(kernel, arrays)

    def batch(self, kernel: str, arrays: Sequence[np.ndarray], mode: BatchMode,
              n_chunks: int | None = None) -> None:
        """Rows of the per-row arguments (small batches as plain Python while the interpreter
        is being built)."""
        n = arrays[self.kernels[kernel].layout.first_per_row()].shape[0]
        if self._use_python(kernel, n):
            self._python().batch(kernel, arrays, mode, n_chunks)
            return
        super().batch(kernel, arrays, mode, n_chunks)

    def _use_python(self, kernel: str, rows: int) -> bool:
        """Whether to run `rows` rows as plain Python: only while the interpreter is being
        built, and only when that is quicker than waiting (a short kernel, few rows)."""
        if _Interpreter.built is not None or _Interpreter.building().done():
            self._fallback = None  # never needed again
            return False
        length = len(self.tapes[kernel].out)
        return length <= self.FALLBACK_LENGTH and rows * length <= self.FALLBACK_WORK

    def _python(self) -> Executor:
        with self._fallback_lock:
            if self._fallback is None:
                from .lines import PythonLines

                self._fallback = PythonLines(list(self.kernels.values()), self.title,
                                             self.header)
            return self._fallback

    def run_tape(self, kernel: str, params: np.ndarray, X: np.ndarray, n_out: int,
                 values: np.ndarray, acc: np.ndarray, per_row: bool,
                 n_chunks: int | None = None) -> None:
        """See `TapeExecutor.run_tape`."""
        pl = self.plans[kernel]
        interp = _Interpreter.get()
        most = 1 if n_chunks is not None else self._threads(X.shape[0], len(pl.tape.out))
        if most <= 1:
            interp.run(self._packed[kernel], pl, params, X, values, acc, per_row, 1, n_chunks)
            self.last_threads = 1
            return
        pace = self._pace(kernel, X.shape[0], per_row)
        threads = pace.choose(most)
        start = time.perf_counter()
        interp.run(self._packed[kernel], pl, params, X, values, acc, per_row, threads)
        pace.record(threads, (time.perf_counter() - start) / X.shape[0])
        self.last_threads = threads

    def _threads(self, n_rows: int, length: int) -> int:
        """The most threads a batch may use: 1 below `THREAD_WORK`, else one per chunk, at
        most Numba's thread count."""
        if n_rows * length < self.THREAD_WORK or layout.n_chunks(n_rows) < 2:
            return 1
        from .threads import n_threads

        return min(n_threads(), layout.n_chunks(n_rows))

    def _pace(self, kernel: str, n_rows: int, per_row: bool) -> Pace:
        """The thread choice for batches of this kernel, mode and size (to a power of 2)."""
        key = (kernel, per_row, n_rows.bit_length())
        pace = self._paces.get(key)
        if pace is None:
            from .threads import Pace  # imports numba: not when symgrad is imported

            pace = self._paces[key] = Pace()
        return pace


def run_tape(tp: tape.Tape, params: np.ndarray, X: np.ndarray, n_out: int,
             values: np.ndarray, acc: np.ndarray, per_row: bool = False) -> None:
    """Plan `tp` (its first ``len(params)`` arguments uniform) and run it over the rows of `X`
    on this thread: values ``(N, n_out)``; acc ``(1 or N, n_acc)`` added into."""
    pl = plan(tp, len(params), n_out)
    _Interpreter.get().run(pack(pl), pl, params, X, values, acc, per_row, 1)

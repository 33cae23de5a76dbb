"""Chunks of a batch on threads: Python threads calling compiled code that releases the GIL.

Imports numba (this module is imported only by executors that run Numba code). A batch is split
into the chunks `symgrad.layout.n_chunks` fixes; each thread calls the same compiled function,
which takes chunk numbers from a shared counter (`fetch_add`, an atomic add) until none is left,
so a thread that gets less CPU (another process busy on its core) simply does fewer chunks. The
calling thread works too, and never waits for a helper thread that has not started: whatever
it has not claimed when the calling thread runs out of chunks is not waited for.

Results do not depend on which thread ran which chunk: each chunk sums into its own buffer, and
the buffers are added in chunk order afterwards.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import numba
from numba import types
from numba.extending import intrinsic

__all__ = ["Pace", "fetch_add", "n_threads", "run_on_threads"]


@intrinsic
def fetch_add(typingctx: Any, counter: Any) -> Any:
    """``counter[0] += 1`` atomically, returning the old value (compiled code only)."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
        return None
    sig = types.int64(counter)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        one = context.get_constant(types.int64, 1)
        return builder.atomic_rmw("add", ary.data, one, "seq_cst")

    return sig, codegen


def n_threads() -> int:
    """Threads a batch may use: Numba's setting (``NUMBA_NUM_THREADS``, `numba.set_num_threads`)."""
    return int(numba.get_num_threads())


class _Job:
    """One batch's call of a chunk function on several threads."""

    __slots__ = ("active", "args", "closed", "error", "finished", "fn", "lock")

    def __init__(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args
        self.lock = threading.Lock()
        self.closed = False  # the calling thread is done: late helpers stay out
        self.active = 0  # helpers inside fn
        self.finished = threading.Event()
        self.error: BaseException | None = None

    def help(self) -> None:
        """A helper thread's part: join unless the calling thread has finished already."""
        with self.lock:
            if self.closed:
                return
            self.active += 1
        try:
            self.fn(*self.args)
        except BaseException as e:
            self.error = e
        finally:
            with self.lock:
                self.active -= 1
                if self.closed and self.active == 0:
                    self.finished.set()

    def run(self) -> None:
        """The calling thread's part, then wait for the helpers that joined."""
        try:
            self.fn(*self.args)
        finally:
            with self.lock:
                self.closed = True
                wait = self.active > 0
            if wait:
                self.finished.wait()
        if self.error is not None:
            raise self.error


_jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
_helpers: list[threading.Thread] = []
_start_lock = threading.Lock()


def _helper_loop() -> None:
    while True:
        job = _jobs.get()
        with contextlib.suppress(BaseException):  # errors are the calling thread's to raise
            job.help()


def _ensure_helpers(n: int) -> None:
    with _start_lock:
        while len(_helpers) < n:
            t = threading.Thread(target=_helper_loop, name=f"symgrad-{len(_helpers)}",
                                 daemon=True)
            t.start()
            _helpers.append(t)


def _forget_helpers() -> None:
    """In a forked child: the parent's helper threads do not exist here; start afresh."""
    global _jobs, _start_lock
    _jobs = queue.SimpleQueue()
    _helpers.clear()
    _start_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_helpers)


def run_on_threads(fn: Callable[..., None], args: tuple[Any, ...], threads: int) -> None:
    """Call ``fn(*args)`` on `threads` threads at once (this one included) and wait.

    `fn` must be compiled with ``nogil=True`` and share its work through a counter it reads
    with `fetch_add`, so that any number of threads, starting at any time, completes it.
    """
    if threads <= 1:
        fn(*args)
        return
    _ensure_helpers(threads - 1)
    job = _Job(fn, args)
    for _ in range(threads - 1):
        _jobs.put(job)
    job.run()


class Pace:
    """Whether one thread or several have been faster lately for one kind of batch: threads
    that help and never hurt.

    On an idle machine a batch on every core is faster; with other processes busy on the cores,
    a helper thread can be descheduled holding a chunk, and the batch then ends when that
    thread runs again: one thread is faster. Both give the same bits (a batch's sums do not
    depend on who ran which chunk), so the choice is free to follow the clock: `choose` takes
    one thread or `most`, whichever has had the faster recent calls (per unit of work, the best
    of its last `KEEP` timings), trying the other every `EXPLORE` calls and before it has any
    timing; `record` adds a call's timing. Every count above one shares one record: `most`
    may differ from call to call (batches of one size class have different chunk counts, or
    Numba's thread count changes), and the choice is between one thread and all of them.
    """

    EXPLORE = 32
    KEEP = 3

    def __init__(self) -> None:
        self._times: dict[bool, deque[float]] = {}  # keyed by "on several threads"
        self._calls = 0
        self._last = 1  # the thread count of the last call recorded
        self._again = False  # the last call woke the helpers for a try: time one more

    def choose(self, most: int) -> int:
        """1 or `most` threads for the next call.

        A try of several threads after calls on one is two calls, and only the second is timed:
        the helpers have been asleep, and the first call pays for waking them (or, the first
        time, for starting them), which says nothing of the next calls' speed.
        """
        if most <= 1:
            return 1
        self._calls += 1
        if self._again:
            self._again = False
            return most
        untried = [many for many in (True, False) if many not in self._times]
        if untried:
            many = untried[0]
        else:
            best = min((True, False), key=lambda k: min(self._times[k]))
            explore = self._calls % self.EXPLORE == 0
            many = not best if explore else best
        self._again = many and self._last == 1
        return most if many else 1

    def record(self, threads: int, seconds_per_unit: float) -> None:
        """A call's time on `threads` threads, per unit of work (say per row); the first call
        on several threads after one (see `choose`) is not kept."""
        many = threads > 1
        cold = many and self._last == 1
        self._last = threads
        if not cold:
            self._times.setdefault(many, deque(maxlen=self.KEEP)).append(seconds_per_unit)

"""Helper threads that wait in compiled code, so that a batch starts on every core at once.

Imports numba and llvmlite only. A helper of `threads.run_on_threads` waits on a Python queue:
waking it, and then handing it the GIL so that it can call the compiled function, takes two
wake-ups of a sleeping thread, long enough on a busy or virtual machine to cost a fast batch a
noticeable part of its time (and as much again when the calling thread waits for it at the
end). The helpers here avoid both: after a job a helper stays in compiled code (no GIL),
watching a mailbox, for `SPIN` polls; a job posted meanwhile reaches it at once, with its
arrays as addresses and shapes, and the calling thread waits for it in compiled code too. A
helper that saw no job for that long parks on a queue and is woken the slow way.

The mailbox (`BOX_LEN` int64) protocol, one word ``box[STATE] = job_id * 8 + state``:

- the helper polls while the state is ``SPINNING``; after `SPIN` polls it moves
  ``SPINNING -> PARKED`` (compare-and-swap) and returns to Python to sleep;
- a calling thread claims a spinning helper (``SPINNING -> CLAIMED``, with its job id), writes
  the job into ``box[JOB:]`` and publishes it (``POSTED``);
- the helper takes a posted job (``POSTED -> RUNNING``), runs it, and goes back to
  ``SPINNING``;
- the calling thread, once its own share is done, withdraws a job no helper took
  (``POSTED -> SPINNING``, only its own job id) and otherwise waits while the helper runs it.

Jobs share their work through a counter of chunks (`threads.fetch_add`), so a helper that comes
late, or never, only does less of it: nothing waits for a helper that has not started.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import types
from numba.extending import intrinsic

__all__ = [
    "BOX_LEN", "CLAIMED", "JOB", "PARKED", "POSTED", "RUNNING", "SPIN", "SPINNING", "STATE",
    "TAKEN", "Helpers", "atomic_load", "atomic_store", "compare_swap", "float_pointer",
    "int_pointer",
]

STATE, JOB = 0, 1  # the state word; the job's fields from here on
TAKEN = 63  # how many jobs the helper has taken (written by the helper only)
BOX_LEN = 64  # int64 words per mailbox (the state word, a job's fields): 512 bytes, so that
# two helpers' state words never share a cache line
PARKED, SPINNING, CLAIMED, POSTED, RUNNING = range(5)
SPIN = 500_000  # polls of the state word before a helper parks (a fraction of a millisecond)


def _is_box(box: Any, i: Any) -> bool:
    return (isinstance(box, types.Array) and box.dtype == types.int64 and box.ndim == 1
            and isinstance(i, types.Integer))


def _slot(context: Any, builder: Any, sig: Any, args: Any) -> Any:
    ary = context.make_array(sig.args[0])(context, builder, args[0])
    i = context.cast(builder, args[1], sig.args[1], types.int64)
    return builder.gep(ary.data, [i])


@intrinsic
def atomic_load(typingctx: Any, box: Any, i: Any) -> Any:
    """``box[i]``, read atomically (acquire): what another thread stored before its release."""
    if not _is_box(box, i):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.load_atomic(_slot(context, builder, sig, args), "acquire", 8)

    return types.int64(box, i), codegen


@intrinsic
def atomic_store(typingctx: Any, box: Any, i: Any, v: Any) -> Any:
    """``box[i] = v``, stored atomically (release): every earlier store is seen before it."""
    if not (_is_box(box, i) and isinstance(v, types.Integer)):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        value = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.store_atomic(value, _slot(context, builder, sig, args), "release", 8)
        return context.get_dummy_value()

    return types.void(box, i, v), codegen


@intrinsic
def compare_swap(typingctx: Any, box: Any, i: Any, old: Any, new: Any) -> Any:
    """``box[i] = new`` if it holds `old`, atomically; whether it did."""
    if not (_is_box(box, i) and isinstance(old, types.Integer) and isinstance(new, types.Integer)):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        o, n = (context.cast(builder, a, t, types.int64)
                for a, t in zip(args[2:], sig.args[2:], strict=True))
        pair = builder.cmpxchg(_slot(context, builder, sig, args), o, n, "seq_cst", "seq_cst")
        return builder.extract_value(pair, 1)

    return types.boolean(box, i, old, new), codegen


def _pointer_at(dtype: Any) -> Any:
    @intrinsic
    def pointer(typingctx: Any, address: Any) -> Any:
        if not isinstance(address, types.Integer):
            return None

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            target = context.get_data_type(dtype).as_pointer()
            return builder.inttoptr(context.cast(builder, args[0], sig.args[0], types.int64),
                                    target)

        return types.CPointer(dtype)(address), codegen

    return pointer


# an address written into a mailbox as a typed pointer again, for numba.carray
float_pointer = _pointer_at(types.float64)
int_pointer = _pointer_at(types.int64)


class _Helper:
    """One helper thread, serving its mailbox `box` (a row of `Helpers`' array) for good."""

    def __init__(self, serve: Callable[[np.ndarray, int], None], box: np.ndarray) -> None:
        self.box = box
        self.wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self._serve = serve
        threading.Thread(target=self._loop, name="symgrad-native", daemon=True).start()

    def _loop(self) -> None:
        while True:
            self.wake.get()
            try:
                self._serve(self.box, SPIN)
            except BaseException as e:  # raised by the job: the calling thread re-raises it
                self.error = e
                self.box[STATE] = PARKED  # not RUNNING: the calling thread stops waiting


class Helpers:
    """Helper threads for one compiled ``serve(box, spin)`` function (see the module).

    `serve` polls ``box`` for at most `spin` polls between jobs, runs the jobs posted to it and
    returns once it has parked; jobs are posted and waited for by the caller's compiled code.
    At most `most` helpers (their mailboxes are allocated once: a spinning helper keeps
    watching the same memory).
    """

    def __init__(self, serve: Callable[[np.ndarray, int], None], most: int) -> None:
        self._serve = serve
        self._all = np.zeros((most, BOX_LEN), np.int64)  # every state PARKED
        self._lock = threading.Lock()
        self._helpers: list[_Helper] = []
        self._ids = itertools.count(1)
        os.register_at_fork(after_in_child=self._forget)

    def boxes(self, n: int) -> np.ndarray:
        """The mailboxes of `n` helpers (at most `most`), as rows: started if need be, woken
        if parked."""
        with self._lock:
            n = min(n, self._all.shape[0])
            while len(self._helpers) < n:
                self._helpers.append(_Helper(self._serve, self._all[len(self._helpers)]))
            for h in self._helpers[:n]:
                if h.box[STATE] % 8 == PARKED:
                    h.box[STATE] = SPINNING
                    h.wake.put(None)
            return self._all[:n]

    def job_id(self) -> int:
        """A new job id (each posted job has its own)."""
        return next(self._ids)

    def raise_errors(self) -> None:
        """Re-raise what a helper's job raised (once)."""
        for h in self._helpers:
            if h.error is not None:
                error, h.error = h.error, None
                raise error

    def _forget(self) -> None:
        """In a forked child: the helper threads are the parent's; start afresh."""
        self._lock = threading.Lock()
        self._helpers = []
        self._all = np.zeros_like(self._all)

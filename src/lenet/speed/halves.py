"""A CPU training step's two halves at once, each with half the threads (``Speed.parallel_halves``).

By default PyTorch splits every operation of a step across its intra-op threads, so what
one thread writes the next operation often reads on another core, and on some machines
that sharing is slow for minutes at a time: two threads then step no faster than one.
Computing the batch's two halves at once, each on one thread with its own activations
(on more threads, each half on half of them), keeps the data of each half on its core.
What it gives, and when: docs/speed.md.

The halves' gradients reach each parameter's ``.grad`` by one addition, and
a + b == b + a exactly in floating point, so which half finishes first changes no bit:
a run in halves is as reproducible, and resumes as exactly, as one in whole batches.
Each half's mean loss is weighted by its share of the batch, as micro-batches are.
There is one worker per process: runs in halves in several threads of one process take
turns on it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from typing import Callable, Iterator, TypeVar

import torch

T = TypeVar("T")


class _Worker:
    """The one thread that computes second halves, created on first use. Its intra-op
    thread count is its own (OpenMP keeps one per thread) and is set while it is idle:
    torch.set_num_threads also clears ideep's cache of convolutions."""

    def __init__(self) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lenet-half")
        self.threads = 0

    def use_threads(self, threads: int) -> None:
        if self.threads != threads:
            self.pool.submit(torch.set_num_threads, threads).result()
            self.threads = threads


_worker: _Worker | None = None
_caller = threading.local()  # .held: this thread is inside halved_threads()


@contextlib.contextmanager
def halved_threads() -> Iterator[int]:
    """This thread and the worker each with half of torch's intra-op threads (at least
    one) while the block runs, which yields that number; the count is restored after.

    Held for a whole epoch, not set per step: after any operation split across this
    thread's OpenMP team, the team's idle threads spin for a while before they sleep,
    on the cores the halves need (set per step, a step took twice as long)."""
    global _worker
    if _worker is None:
        _worker = _Worker()
    threads = torch.get_num_threads()
    each = max(1, threads // 2)
    _worker.use_threads(each)
    torch.set_num_threads(each)
    held, _caller.held = getattr(_caller, "held", False), True
    try:
        yield each
    finally:
        _caller.held = held
        torch.set_num_threads(threads)


def threads_for(halves: bool) -> contextlib.AbstractContextManager:
    """The threads a run of steps takes: ``halved_threads()`` for steps in halves, else
    torch's own setting, untouched."""
    return halved_threads() if halves else contextlib.nullcontext()


def in_halves(part: Callable[[torch.Tensor, torch.Tensor], T], x: torch.Tensor,
              y: torch.Tensor) -> tuple[T, T | None]:
    """``(part(first half), part(second half))``, computed at once: the first on this
    thread, the second on the worker. Meant to run inside ``halved_threads()``; outside
    it, it holds them for this call alone (the same result, slower: see there). A batch
    of one image is not split: the second result is None then."""
    if _worker is None or not getattr(_caller, "held", False):
        with halved_threads():
            return in_halves(part, x, y)
    half = (len(x) + 1) // 2
    if half == len(x):
        return part(x, y), None
    future = _worker.pool.submit(part, x[half:], y[half:])
    try:
        first = part(x[:half], y[:half])
    finally:
        _wait_out(future)
    return first, future.result()


def _wait_out(future: concurrent.futures.Future) -> None:
    """Wait until the other half is done, through a Ctrl-C too (raised after): a step
    left running would write gradients after the caller has moved on."""
    interrupt = None
    while not future.done():
        try:
            concurrent.futures.wait([future])
        except KeyboardInterrupt as exc:
            interrupt = exc
    if interrupt is not None:
        raise interrupt

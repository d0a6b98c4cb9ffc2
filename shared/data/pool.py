"""Decoding many files in worker processes: results as they finish, progress lines.

`run_jobs` maps a function over jobs in a process pool (workers that die with the parent)
or in this process, yielding (job index, result) as each job (or batch of jobs) finishes,
in any order, and
`None` after each second in which nothing finished: a caller saves its work then (a file
that never answers, a FIFO or a stalled mount, does not hold back the saving of the
others). `Progress` logs count, rate and ETA about every 5% of the work, at most one line
per 10 s (and at least one per minute), then a last line with the total.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import TypeVar

J = TypeVar("J")
R = TypeVar("R")
PR_SET_PDEATHSIG = 1  # linux/prctl.h
TICK_S = 1.0  # a None is yielded after this long without a finished job
BATCH = 16  # jobs per task sent to a worker (a task costs about a millisecond of CPU)
IN_FLIGHT = 4  # tasks queued per worker (bounds the results held in memory)


def alive(pid: int) -> bool:
    """Whether process `pid` exists (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def worker_start(parent: int) -> None:
    """In each worker: killed when the parent dies (Linux), even mid-decode; the default
    SIGTERM (the parent's own handler, inherited by the fork, would be caught as a task's
    error and ignored); Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if not alive(parent):  # it died before the prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def _run_batch(fn: Callable[[J], R], batch: Sequence[J]) -> list[R]:
    return [fn(job) for job in batch]


def run_jobs(
    fn: Callable[[J], R], jobs: Sequence[J], workers: int
) -> Generator[tuple[int, R] | None, None, None]:
    """(index, fn(jobs[index])) as each job finishes; None after TICK_S without one. With
    `workers` > 0 and more than one job, in that many processes that die with this one, in
    batches of up to BATCH jobs (fewer when there are few: every worker gets work); on any
    failure (or the caller stopping early) the jobs not started are dropped."""
    if workers <= 0 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            yield i, fn(job)
        return
    size = max(1, min(BATCH, len(jobs) // (workers * 4)))
    starts = range(0, len(jobs), size)
    ex = ProcessPoolExecutor(max_workers=workers, initializer=worker_start, initargs=(os.getpid(),))
    try:
        pending: dict[Future[list[R]], int] = {}
        nxt = 0
        while nxt < len(starts) or pending:
            while nxt < len(starts) and len(pending) < workers * IN_FLIGHT:
                pending[ex.submit(_run_batch, fn, jobs[starts[nxt] : starts[nxt] + size])] = starts[nxt]
                nxt += 1
            done, _ = wait(pending, timeout=TICK_S, return_when=FIRST_COMPLETED)
            if not done:
                yield None
            for fut in sorted(done, key=pending.__getitem__):
                first = pending.pop(fut)
                for k, result in enumerate(fut.result()):
                    yield first + k, result
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown()


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """Progress lines for `total` items of work named `what` (count, rate, ETA)."""

    def __init__(self, log: logging.Logger, what: str, total: int, every_s: float = 10.0) -> None:
        self.log, self.what, self.total, self.every_s = log, what, total, every_s
        self.done = 0
        self.start = self.last = time.monotonic()
        self.step = max(1, -(-total // 20))  # 5% of the work
        self.next = self.step

    def add(self, n: int = 1) -> None:
        """`n` more items done: a line when 5% more are done and 10 s have passed, or a minute."""
        self.done += n
        now = time.monotonic()
        due = self.done >= self.next and now - self.last >= self.every_s
        slow = self.every_s > 0 and now - self.last >= 6 * self.every_s  # a minute without a line
        if self.done < self.total and (due or slow):
            rate = self.done / max(now - self.start, 1e-9)
            eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
            self.log.info(
                "%s: %d/%d (%.0f%%), %.1f/s, ETA %s",
                self.what,
                self.done,
                self.total,
                100 * self.done / self.total,
                rate,
                eta,
            )
            self.last = now
            self.next = (self.done // self.step + 1) * self.step

    def finish(self) -> None:
        took = time.monotonic() - self.start
        rate = self.done / max(took, 1e-9)
        self.log.info("%s: %d done in %s (%.1f/s)", self.what, self.done, _duration(took), rate)

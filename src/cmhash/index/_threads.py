"""The helper threads of the numba index kernels: a call's tasks (zero-argument functions that
release the GIL) are shared by the calling thread and helper threads kept for reuse.

Starting threads on every call cost as much as a small scan, and under load a pool thread can
take milliseconds to be scheduled, so the caller claims tasks too and never waits idle for one
no helper has taken. A plain queue instead of numba's ``parallel=True`` keeps compilation to
seconds. After a fork the child starts its own helpers.
"""

from __future__ import annotations

import os
import queue
import threading


class _Batch:
    """The tasks of one kernel call, claimed one at a time by the caller and the helper threads."""

    def __init__(self, tasks):
        self.tasks = tasks
        self.results = [None] * len(tasks)
        self.errors: list[BaseException] = []
        self._next = 0
        self._left = len(tasks)
        self._lock = threading.Lock()
        self.finished = threading.Lock()
        self.finished.acquire()  # released when the last task is done

    def work(self) -> None:
        """Run unclaimed tasks until none is left."""
        while True:
            with self._lock:
                i = self._next
                self._next += 1
            if i >= len(self.tasks):
                return
            try:
                self.results[i] = self.tasks[i]()
            except BaseException as exc:  # handed to the caller, which re-raises it
                self.errors.append(exc)
            with self._lock:
                self._left -= 1
                if self._left == 0:
                    self.finished.release()


_HELPERS_LOCK = threading.Lock()
_helpers: tuple[queue.SimpleQueue, list[threading.Thread]] | None = None  # (work queue, threads)


def _helper(work: queue.SimpleQueue) -> None:
    while True:
        work.get().work()


def _work_queue(helpers: int) -> queue.SimpleQueue:
    """The queue of at least ``helpers`` helper threads, started on first need."""
    global _helpers
    with _HELPERS_LOCK:
        if _helpers is None:
            _helpers = (queue.SimpleQueue(), [])
        work, threads = _helpers
        while len(threads) < helpers:
            thread = threading.Thread(target=_helper, args=(work,), name=f"cmhash-index-{len(threads)}", daemon=True)
            thread.start()
            threads.append(thread)
        return work


def _forget_helpers() -> None:
    """In a forked child: the parent's helper threads are not there (and the lock may have been
    held by one of its threads), so start afresh."""
    global _HELPERS_LOCK, _helpers
    _HELPERS_LOCK, _helpers = threading.Lock(), None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helpers)


def run_tasks(tasks, threads: int | None = None) -> list:
    """Run the zero-argument ``tasks`` on ``threads`` threads (default: one per task), the
    calling thread being one of them; the results in task order (the kernels release the GIL;
    why helpers are kept and shared: the module docstring)."""
    threads = len(tasks) if threads is None else min(int(threads), len(tasks))
    if threads <= 1:
        return [task() for task in tasks]
    batch = _Batch(tasks)
    work = _work_queue(threads - 1)
    for _ in range(threads - 1):
        work.put(batch)
    batch.work()
    batch.finished.acquire()  # the helpers' tasks write into the caller's arrays: wait for all
    if batch.errors:
        raise batch.errors[0]
    return batch.results

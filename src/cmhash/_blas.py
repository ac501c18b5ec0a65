"""BLAS thread control for fits made of many small products (``threadpoolctl``; no-ops without it).

:class:`BlasThreads` serves DCGH (``methods/_dcgh_linalg.py``: one thread for the solver's small
products, the configured count for its n x a products) and CCA-ITQ (one thread for its whole fit:
on a loaded 2-core machine its 64-bit WIKI fit took 15-19 s with the default BLAS threads
against 0.3-0.6 s with one, issue 14).
"""

from __future__ import annotations

from contextlib import contextmanager


class BlasThreads:
    """BLAS threads during a fit: one for everything inside ``small()`` (the solver's many small
    products and LAPACK calls, where thread start-up costs more than it saves and, on a loaded
    machine, spinning idle threads slow everything down), and the count the process was
    configured with (OPENBLAS_NUM_THREADS, threadpoolctl) inside ``wide()`` (the n x a products:
    RBF distances, X W, X^T B, the ridge Gram). Without threadpoolctl both are no-ops."""

    def __init__(self):
        self._ctl, self._wide = None, None

    def _controller(self):
        if self._ctl is None:
            try:
                from threadpoolctl import ThreadpoolController
            except ImportError:
                self._ctl = False
            else:
                self._ctl = ThreadpoolController()
        return self._ctl

    @contextmanager
    def small(self):
        ctl, outer = self._controller(), self._wide
        if not ctl:
            yield
            return
        if outer is None:
            self._wide = max((i["num_threads"] for i in ctl.info() if i["user_api"] == "blas"), default=1)
        try:
            with ctl.limit(limits=1, user_api="blas"):
                yield
        finally:
            self._wide = outer

    @contextmanager
    def wide(self):
        if not self._ctl or not self._wide or self._wide == 1:
            yield
            return
        with self._ctl.limit(limits=self._wide, user_api="blas"):
            yield

    def workers(self) -> int:
        """Inside ``small()``: the configured BLAS thread count, the number of Python threads
        that independent single-threaded steps may use side by side (1 without threadpoolctl)."""
        return self._wide or 1

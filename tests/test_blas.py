"""BLAS thread bounds of fits made of small products (cmhash/_blas.py; DCGH's use: tests/methods/test_dcgh.py)."""

from __future__ import annotations

import numpy as np
import pytest

threadpoolctl = pytest.importorskip("threadpoolctl")


def blas_threads() -> list[int]:
    return [info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]


def test_one_blas_thread_inside_small_and_restored_after():
    from cmhash._blas import BlasThreads

    np.ones((4, 4)) @ np.ones((4, 4))  # load the BLAS library
    before = blas_threads()
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        with BlasThreads().small():
            assert set(blas_threads()) <= {1}
        assert set(blas_threads()) <= {2}
    assert blas_threads() == before


def test_cca_itq_fits_under_one_blas_thread(monkeypatch):
    import cmhash
    from cmhash.data.synthetic import make_synthetic
    from cmhash.methods import cca_itq

    seen = []
    original = cca_itq.cca_directions

    def spy(*args, **kwargs):
        seen.append(blas_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(cca_itq, "cca_directions", spy)
    data = make_synthetic(200, image_dim=16, text_dim=8, num_classes=3, seed=1)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        cmhash.get_method("cca-itq").fit(data.train, 8, seed=0)
        assert set(blas_threads()) <= {2}  # restored after the fit
    assert seen and set(seen[0]) <= {1}

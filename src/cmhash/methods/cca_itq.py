"""CCA-ITQ: canonical correlation analysis followed by an iterative-quantisation rotation.

A simple unsupervised baseline (Gong et al., TPAMI 2013, "Iterative Quantization", Sec. 4 uses
CCA as the projection): project both modalities onto the top-``bits`` canonical directions,
then learn one orthogonal rotation R minimising ||B - V R||_F^2 over the stacked projections
(ITQ, alternating B = sgn(V R) and R from the SVD of V^T B).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg as sla

from cmhash._blas import BlasThreads
from cmhash.codes import PackedCodes, pack, sign
from cmhash.data.dataset import CrossModalDataset
from cmhash.methods.base import HashingMethod, HashModel
from cmhash.methods.registry import register_method
from cmhash.progress import Progress


class LinearSignModel(HashModel):
    """Codes = sgn((x - mean_m) W_m R): a linear projection per modality and a rotation."""

    method = "cca-itq"

    def __init__(self, *, mean: dict[str, np.ndarray], proj: dict[str, np.ndarray], **common: Any):
        super().__init__(**common)
        self.mean = mean
        self.proj = proj

    def encode(self, modality: str, x: np.ndarray) -> PackedCodes:
        x = self.check_input(modality, x, {m: p.shape[0] for m, p in self.proj.items()})
        return pack(sign((x - self.mean[modality]) @ self.proj[modality]))

    def state(self):
        arrays = {f"{k}_{m}": v[m] for k, v in (("mean", self.mean), ("proj", self.proj)) for m in v}
        return arrays, {}

    @classmethod
    def from_state(cls, arrays, config, **common):
        mods = ("image", "text")
        return cls(
            mean={m: arrays[f"mean_{m}"] for m in mods},
            proj={m: arrays[f"proj_{m}"] for m in mods},
            **common,
        )


def cca_directions(x: np.ndarray, y: np.ndarray, k: int, reg: float) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` canonical directions (Wx, Wy) of centred x, y with ridge ``reg`` on covariances."""
    n = x.shape[0]
    cxx = x.T @ x / n + reg * np.eye(x.shape[1])
    cyy = y.T @ y / n + reg * np.eye(y.shape[1])
    cxy = x.T @ y / n
    # Generalised symmetric problem: Cxy Cyy^-1 Cyx w = rho^2 Cxx w.
    m = cxy @ sla.solve(cyy, cxy.T, assume_a="pos")
    m = (m + m.T) / 2
    rho2, wx = sla.eigh(m, cxx)
    order = np.argsort(rho2)[::-1][:k]
    wx = wx[:, order]
    rho = np.sqrt(np.clip(rho2[order], 1e-12, None))
    wy = sla.solve(cyy, cxy.T @ wx, assume_a="pos") / rho
    return wx, wy


@register_method
class CCAITQ(HashingMethod):
    name = "cca-itq"
    supervised = False
    model_class = LinearSignModel
    defaults = {"reg": 1e-4, "itq_iters": 50}

    def _fit(self, train: CrossModalDataset, bits: int, *, seed: int, progress: Progress | None) -> HashModel:
        # Every product here is small (features x bits, bits x bits; 50 ITQ rounds): one BLAS thread.
        with BlasThreads().small():
            return self._fit_single_thread(train, bits, seed=seed)

    def _fit_single_thread(self, train: CrossModalDataset, bits: int, *, seed: int) -> HashModel:
        rng = np.random.default_rng(seed)
        mean = {m: train.features(m).mean(axis=0) for m in ("image", "text")}
        x, y = train.image - mean["image"], train.text - mean["text"]
        k = min(bits, x.shape[1], y.shape[1])
        wx, wy = cca_directions(x, y, k, self.hparams["reg"])
        if k < bits:  # fewer canonical pairs than bits: fill with random directions of the span
            wx = np.hstack([wx, wx @ rng.standard_normal((k, bits - k))])
            wy = np.hstack([wy, wy @ rng.standard_normal((k, bits - k))])
        # Each modality's projections scaled to unit variance so both weigh equally in ITQ.
        scale_x = (x @ wx).std(axis=0) + 1e-12
        scale_y = (y @ wy).std(axis=0) + 1e-12
        v = np.vstack([x @ wx / scale_x, y @ wy / scale_y])
        r = sla.qr(rng.standard_normal((bits, bits)))[0]
        for _ in range(int(self.hparams["itq_iters"])):
            b = np.where(v @ r >= 0, 1.0, -1.0)
            u, _, vt = sla.svd(v.T @ b, full_matrices=False)
            r = u @ vt
        proj = {"image": (wx / scale_x) @ r, "text": (wy / scale_y) @ r}
        return LinearSignModel(mean=mean, proj=proj, bits=bits, hparams=self.hparams)

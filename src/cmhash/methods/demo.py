"""DEMO: A Statistical Perspective for Efficient Image-Text Matching (Zhang, Hua, Chen, Luo, NAACL 2024), unsupervised.

No public code; every step follows ``papers/DEMO.txt`` and METHODS.md.

Structure mining (Sec. 3.2), once before training:

- Views: M augmented views per image. The dataset's ``views`` (n x M x d) when present;
  otherwise feature-space augmentation (each view: a random dropout mask, rate ``aug_dropout``,
  plus Gaussian noise of ``aug_noise`` x the per-dimension std), recorded in the run.
- Divergence d(x_i, x_j) = energy distance 2A - B - C between the two view sets (Eq. 6-8) with
  rho = cosine distance. Because cos(u, v) = <u/|u|, v/|v|>, the averages of Eq. 6 are inner
  products of the mean unit views zbar_i = (1/M) sum_m z_im / |z_im|: A = 1 - <zbar_i, zbar_j>,
  B = 1 - |zbar_i|^2, C = 1 - |zbar_j|^2, so d(x_i, x_j) = |zbar_i - zbar_j|^2 exactly. Any block
  of distances is computed from the (n x d) means: nothing n x n x M x M, nor n x n, is held.
- S_ij (Eq. 11) = 1 if d < tau, else alpha S^v_ij + (1 - alpha) S^t_ij with S^v the cosine of the
  summed views (Eq. 9) and S^t the cosine of the texts (Eq. 10). tau: a value (the paper's 1.25
  is on its feature scale) or a quantile of the pairwise distances (*decision*: default 5%;
  exact for up to 3,000 items, else over 2,000,000 seeded random pairs).

Consistency learning (Sec. 3.3), per batch of relaxed codes b = tanh(.) (*decision*: means
over pairs/items instead of sums, unit weights):

- L_gui (Eq. 12) = sum over e1, e2 in {v, t} of mean (cos(b_i^e1, b_j^e2) - S_ij)^2: four ordered
  terms (v,v), (v,t), (t,v), (t,t), so the image-text term counts twice (paper, Eq. 12:
  ``gui_terms="ordered"``, the default); ``gui_terms="unordered"`` = (v,v), (t,t), (v,t) once each
  (this library's reading before issue 11);
- L_ret (Eq. 13-16) = mean_i KL(sharpen(p_i^I2T) || p_i^T2I) + KL(sharpen(p_i^T2I) || p_i^I2T),
  p = softmax of cosine similarities over the batch (*decision*), sharpen(p) = p^(1/T) / sum
  with T = 0.25, the sharpened target detached;
- L_co (Eq. 17) = mean_i (cos(b_i^v, b_i^t) - gamma)^2, gamma = 1.5.

Ablations (Table 2) as presets: ``wo_d`` (M = 1: the original image feature as its only view,
d = |x_i/|x_i| - x_j/|x_j||^2 = 2 x cosine distance), ``wo_r`` (no L_ret), ``wo_s`` (no sharpening).
Optimiser: the engine's Adam (the paper uses SGD, lr 1e-3, batch 128).
"""

from __future__ import annotations

from typing import Any

from cmhash.nn.engine import UNSUPERVISED_ENGINE_DEFAULTS, Batch, DeepHashingMethod, TrainContext  # first: clear error without torch

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cmhash.methods.registry import register_method  # noqa: E402

#: pairs of items used to estimate a quantile of the distances when n is large
QUANTILE_EXACT_MAX_ITEMS = 3000
QUANTILE_SAMPLE_PAIRS = 2_000_000


# --------------------------------------------------------------------------- structure mining
def augment_views(x: np.ndarray, views: int, dropout: float, noise: float, rng: np.random.Generator
                  ) -> np.ndarray:
    """Feature-space views (n x M x d): x * Bernoulli(1 - dropout) mask + noise * std_d * N(0, 1)."""
    std = x.std(axis=0)
    out = np.empty((x.shape[0], views, x.shape[1]), dtype=np.float64)
    for m in range(views):
        mask = rng.random(x.shape) >= dropout
        out[:, m] = x * mask + noise * std * rng.standard_normal(x.shape)
    return out


def unit_view_means(views: np.ndarray) -> np.ndarray:
    """zbar_i = mean over m of z_im / |z_im| (n x d); a zero view counts as the zero vector."""
    norms = np.linalg.norm(views, axis=2, keepdims=True)
    unit = np.divide(views, norms, out=np.zeros_like(views, dtype=np.float64), where=norms > 0)
    return unit.mean(axis=1)


def energy_distances(zbar_a: np.ndarray | torch.Tensor, zbar_b: np.ndarray | torch.Tensor, *,
                     block_rows: int = 1024):
    """d(x_i, x_j) of Eq. 8 (cosine rho) for all i in a, j in b, from the mean unit views.

    Computed ``block_rows`` rows at a time (|a - b|^2 = |a|^2 + |b|^2 - 2 a.b, clipped at 0).
    Works on numpy arrays or torch tensors (returns the same kind).
    """
    is_torch = isinstance(zbar_a, torch.Tensor)
    lib = torch if is_torch else np
    sq_b = (zbar_b * zbar_b).sum(1)
    blocks = []
    for start in range(0, zbar_a.shape[0], block_rows):
        a = zbar_a[start:start + block_rows]
        d = (a * a).sum(1)[:, None] + sq_b[None, :] - 2 * (a @ zbar_b.T)
        blocks.append(d.clamp_min(0) if is_torch else np.maximum(d, 0))
    if not blocks:
        return lib.zeros((0, zbar_b.shape[0]))
    return torch.cat(blocks) if is_torch else np.concatenate(blocks)


def distance_quantile(zbar: np.ndarray, q: float, rng: np.random.Generator) -> float:
    """The q-quantile of d over pairs i < j: exact for small n, else on sampled pairs."""
    n = zbar.shape[0]
    if n <= QUANTILE_EXACT_MAX_ITEMS:
        values = [energy_distances(zbar[i:i + 256], zbar[i + 1:]) for i in range(0, n, 256)]
        upper = np.concatenate([
            v[np.triu_indices(v.shape[0], 0, m=v.shape[1])] for v in values if v.size
        ])
        return float(np.quantile(upper, q))
    i = rng.integers(0, n, QUANTILE_SAMPLE_PAIRS)
    j = rng.integers(0, n - 1, QUANTILE_SAMPLE_PAIRS)
    j = j + (j >= i)  # j != i
    return float(np.quantile(((zbar[i] - zbar[j]) ** 2).sum(1), q))


def similarity_structure(d: torch.Tensor, s_views: torch.Tensor, s_text: torch.Tensor,
                         tau: float, alpha: float) -> torch.Tensor:
    """S of Eq. 11: 1 where d < tau, else alpha S^v + (1 - alpha) S^t."""
    return torch.where(d < tau, torch.ones_like(d), alpha * s_views + (1 - alpha) * s_text)


# --------------------------------------------------------------------------------- the losses
def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


#: the (e1, e2) modality pairs of Eq. 12's inner sum, per reading
GUI_TERMS = {
    "ordered": (("v", "v"), ("v", "t"), ("t", "v"), ("t", "t")),   # e1, e2 in {v, t} (the paper)
    "unordered": (("v", "v"), ("t", "t"), ("v", "t")),             # the image-text term once
}


def guided_consistency(bv: torch.Tensor, bt: torch.Tensor, s: torch.Tensor, terms: str = "ordered") -> torch.Tensor:
    """Eq. 12: sum over the (e1, e2) of ``GUI_TERMS[terms]`` of the mean of (cos(b_i^e1, b_j^e2) - S_ij)^2."""
    if terms not in GUI_TERMS:
        raise ValueError(f"gui_terms must be one of {sorted(GUI_TERMS)}, got {terms!r}")
    b = {"v": bv, "t": bt}
    return sum(((cosine_matrix(b[e1], b[e2]) - s) ** 2).mean() for e1, e2 in GUI_TERMS[terms])


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 15: p^(1/T) / sum p^(1/T), row-wise."""
    return F.softmax(torch.log(p.clamp_min(1e-30)) / temperature, dim=1)


def retrieval_consistency(bv: torch.Tensor, bt: torch.Tensor, temperature: float | None) -> torch.Tensor:
    """Eq. 13-16: mean_i KL(sharpen(p_i^I2T) || p_i^T2I) + KL(sharpen(p_i^T2I) || p_i^I2T).

    p_i^I2T = softmax_j cos(b_i^v, b_j^t); targets are detached; ``temperature=None`` = no
    sharpening (the w/o S ablation).
    """
    log_i2t = F.log_softmax(cosine_matrix(bv, bt), dim=1)
    log_t2i = F.log_softmax(cosine_matrix(bt, bv), dim=1)

    def kl(target_log: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        p = target_log.exp().detach()
        if temperature is not None:
            p = sharpen(p, temperature)
        return (p * (torch.log(p.clamp_min(1e-30)) - log_q)).sum(dim=1).mean()

    return kl(log_i2t, log_t2i) + kl(log_t2i, log_i2t)


def co_occurrence(bv: torch.Tensor, bt: torch.Tensor, gamma: float) -> torch.Tensor:
    """Eq. 17: mean_i (cos(b_i^v, b_i^t) - gamma)^2."""
    return ((F.cosine_similarity(bv, bt, dim=1) - gamma) ** 2).mean()


# ---------------------------------------------------------------------------------- the method
@register_method
class DEMO(DeepHashingMethod):
    """DEMO on the shared deep engine (the maths above; batching etc. from the engine)."""

    name = "demo"
    supervised = False
    defaults = {
        **UNSUPERVISED_ENGINE_DEFAULTS,
        "views": 5,                 # M, when the dataset has no views of its own
        "aug_dropout": 0.2,
        "aug_noise": 0.1,
        "tau": None,                # threshold of Eq. 11 by value ...
        "tau_quantile": 0.05,       # ... or by quantile of the pairwise divergences
        "alpha": 0.5,               # Eq. 11
        "sharpen_T": 0.25,          # Eq. 15
        "gamma": 1.5,               # Eq. 17
        "gui_terms": "ordered",     # Eq. 12: (v,t) and (t,v) both ("unordered": once)
        "distribution": True,       # False: w/o D (the original feature as the only view)
        "retrieval": True,          # False: w/o R
        "sharpening": True,         # False: w/o S
    }
    presets = {
        "wo_d": {"distribution": False},
        "wo_r": {"retrieval": False},
        "wo_s": {"sharpening": False},
    }

    def _check_hparams(self) -> dict[str, Any]:
        h = super()._check_hparams()
        if (h["tau"] is None) == (h["tau_quantile"] is None):
            raise ValueError("demo: set exactly one of 'tau' (a value) and 'tau_quantile' (in (0, 1))")
        if h["tau_quantile"] is not None and not 0 < h["tau_quantile"] < 1:
            raise ValueError(f"demo: 'tau_quantile' must be in (0, 1), got {h['tau_quantile']!r}")
        if h["gui_terms"] not in GUI_TERMS:
            raise ValueError(f"demo: 'gui_terms' must be one of {sorted(GUI_TERMS)}, got {h['gui_terms']!r}")
        if int(h["views"]) != h["views"] or h["views"] < 1:
            raise ValueError(f"demo: 'views' must be a positive integer, got {h['views']!r}")
        if not (0 <= h["aug_dropout"] < 1 and h["aug_noise"] >= 0 and 0 <= h["alpha"] <= 1
                and h["sharpen_T"] > 0):
            raise ValueError("demo: need 0 <= aug_dropout < 1, aug_noise >= 0, 0 <= alpha <= 1, sharpen_T > 0")
        return h

    def setup(self, ctx: TrainContext) -> None:
        """Sec. 3.2: per-item statistics from which any block of S is computed (Eq. 8-11)."""
        h = ctx.hparams
        image = ctx.data["image"].cpu().numpy().astype(np.float64)
        text = ctx.data["text"].cpu().numpy().astype(np.float64)
        # The run's seed (the engine seeds torch with it): the same views for every code length.
        rng = np.random.default_rng([torch.initial_seed(), 0xDE30])
        if not h["distribution"]:
            views, source = image[:, None, :], "original feature only (w/o D)"
        elif "views" in ctx.data:
            views = ctx.data["views"].cpu().numpy().astype(np.float64)
            source = f"dataset views (M = {views.shape[1]})"
        else:
            views = augment_views(image, int(h["views"]), h["aug_dropout"], h["aug_noise"], rng)
            source = (f"feature-space augmentation (M = {int(h['views'])}, dropout {h['aug_dropout']}, "
                      f"noise {h['aug_noise']} x per-dimension std)")
        zbar = unit_view_means(views)
        tau = h["tau"] if h["tau"] is not None else distance_quantile(zbar, h["tau_quantile"], rng)
        summed = views.sum(axis=1)
        as_t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=ctx.device)  # noqa: E731
        ctx.state["zbar"] = as_t(zbar)
        ctx.state["views_unit"] = as_t(summed / np.maximum(np.linalg.norm(summed, axis=1, keepdims=True), 1e-12))
        ctx.state["text_unit"] = as_t(text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12))
        ctx.state["tau"] = float(tau)
        ctx.state["record"] = {"demo": {"views": source, "tau": float(tau), "tau_quantile": h["tau_quantile"]}}

    def batch_structure(self, ctx: TrainContext, index: torch.Tensor) -> torch.Tensor:
        """S (Eq. 11) among the batch items."""
        d = energy_distances(ctx.state["zbar"][index], ctx.state["zbar"][index])
        sv = ctx.state["views_unit"][index] @ ctx.state["views_unit"][index].T
        st = ctx.state["text_unit"][index] @ ctx.state["text_unit"][index].T
        return similarity_structure(d, sv, st, ctx.state["tau"], ctx.hparams["alpha"])

    def batch_loss(self, ctx: TrainContext, batch: Batch, codes: dict[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, dict[str, float]]:
        h = ctx.hparams
        bv, bt = codes["image"], codes["text"]
        s = self.batch_structure(ctx, batch.index)
        l_gui = guided_consistency(bv, bt, s, h["gui_terms"])
        l_co = co_occurrence(bv, bt, h["gamma"])
        loss = l_gui + l_co
        logs = {"gui": float(l_gui.detach()), "co": float(l_co.detach()),
                "positives": float((s == 1).float().mean())}
        if h["retrieval"]:
            l_ret = retrieval_consistency(bv, bt, h["sharpen_T"] if h["sharpening"] else None)
            loss = loss + l_ret
            logs["ret"] = float(l_ret.detach())
        return loss, logs

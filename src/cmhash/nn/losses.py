"""Pairwise similarities and triplet losses for hashing, without B x B x B tensors.

:func:`weighted_triplet_loss` is the batch-all triplet loss
``sum_{a,p,n} w_ap [d_ap - d_an + margin]_+ / #{active triplets}`` over every anchor a, every
positive p of a (``w_ap > 0``) and every negative n of a, computed exactly in O(A x N log N)
time and O(A x N) memory: for each anchor the negatives' distances are sorted once, and each
positive counts (and sums) the negatives below ``d_ap + margin``; on CPU a numba merge of the
sorted positives and negatives does this in one pass per anchor (:mod:`cmhash.nn._numba`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """cos(a_i, b_j) for all pairs: (n_a x n_b)."""
    return F.normalize(a, dim=1, eps=eps) @ F.normalize(b, dim=1, eps=eps).T


def shared_labels(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """Number of shared labels l_a . l_b (n_a x n_b); relevance is ``> 0``."""
    return labels_a @ labels_b.T


def ndcg_gains(shared: torch.Tensor) -> torch.Tensor:
    """Graded relevance (2^{s_ij} - 1) / Z_i, Z_i the ideal DCG of row i (IDGH's triplet weights).

    Z_i = sum_r (2^{s_i(r)} - 1) / log2(r + 1) over row i's values sorted descending (r = 1..n).
    A row without any relevant item keeps gains 0.
    """
    gains = torch.exp2(shared) - 1.0
    ideal = _sorted_descending(gains)                            # the gain is monotone in s_ij
    ranks = torch.arange(2, shared.shape[1] + 2, device=shared.device, dtype=gains.dtype)
    z = (ideal / torch.log2(ranks)).sum(dim=1, keepdim=True)
    return gains / z.clamp_min(1e-12)


def _sorted_descending(t: torch.Tensor) -> torch.Tensor:
    """Each row's values in descending order (numpy's sort, without indices, for CPU tensors
    that need no gradient)."""
    if t.device.type != "cpu" or t.requires_grad:
        return torch.sort(t, dim=1, descending=True).values
    return torch.from_numpy(np.ascontiguousarray(np.sort(t.contiguous().numpy(), axis=1)[:, ::-1]))


def weighted_triplet_loss(
    d_pos: torch.Tensor,
    w_pos: torch.Tensor,
    d_neg: torch.Tensor,
    neg_mask: torch.Tensor,
    margin: float,
) -> tuple[torch.Tensor, int]:
    """Batch-all weighted triplet loss, exact, without a cubic tensor.

    Parameters (A anchors; P candidate positives; N candidate negatives per anchor)
    - ``d_pos`` (A x P): anchor-positive distances; ``w_pos`` (A x P): weights, 0 = not a positive.
    - ``d_neg`` (A x N): anchor-negative distances; ``neg_mask`` (A x N) bool: is a negative.

    Returns (sum over triplets of w_ap [d_ap - d_an + margin]_+ divided by the number of
    triplets with a positive hinge (1 if none), that number).

    With x_ap = d_ap + margin, count_ap = #{n : d_an < x_ap} and below_ap = sum of those d_an,
    sum_n [x_ap - d_an]_+ = count_ap x_ap - below_ap; its gradient is count_ap for x_ap and
    -m_an = -sum_{p : x_ap > d_an} w_ap for d_an. These piecewise-constant coefficients are
    computed without gradient (:func:`triplet_coefficients`); :class:`_TripletSum` applies them.
    """
    if d_pos.shape != w_pos.shape or d_neg.shape != neg_mask.shape or d_pos.shape[0] != d_neg.shape[0]:
        raise ValueError(
            f"weighted_triplet_loss: shapes differ: d_pos {tuple(d_pos.shape)}, w_pos {tuple(w_pos.shape)}, "
            f"d_neg {tuple(d_neg.shape)}, neg_mask {tuple(neg_mask.shape)}"
        )
    x = d_pos.detach() + margin                                   # hinge is active where d_an < x_ap
    count, below, m = triplet_coefficients(x, w_pos, d_neg, neg_mask, same_order=d_pos is d_neg)
    hinge_sum = count.to(x.dtype) * x - below                     # sum_n [x_ap - d_an]_+ (0 off the positives)
    total = _TripletSum.apply(d_pos, w_pos, d_neg, count, hinge_sum, m)
    n_active = int(count.sum())
    return total / max(n_active, 1), n_active


class _TripletSum(torch.autograd.Function):
    """sum_ap w_ap hinge_ap, with d/d d_ap = w_ap count_ap, d/d w_ap = hinge_ap, d/d d_an = -m_an."""

    @staticmethod
    def forward(ctx, d_pos, w_pos, d_neg, count, hinge_sum, m):
        ctx.save_for_backward(w_pos, count, hinge_sum, m)
        return (w_pos.to(hinge_sum.dtype) * hinge_sum).sum()

    @staticmethod
    def backward(ctx, grad):
        w_pos, count, hinge_sum, m = ctx.saved_tensors
        g_pos = grad * w_pos * count if ctx.needs_input_grad[0] else None
        g_w = grad * hinge_sum if ctx.needs_input_grad[1] else None
        g_neg = -grad * m if ctx.needs_input_grad[2] else None
        return g_pos, g_w, g_neg, None, None, None


def triplet_coefficients(
    x: torch.Tensor, w_pos: torch.Tensor, d_neg: torch.Tensor, neg_mask: torch.Tensor, *,
    same_order: bool = False, backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(count, below, m) of :func:`weighted_triplet_loss`, without gradient.

    count_ap = #{negatives n : d_an < x_ap} and below_ap = their distance sum (A x P, 0 where
    w_ap <= 0); m_an = sum of w_ap over positives with x_ap > d_an (A x N, 0 for non-negatives).
    ``backend``: "numba" (CPU; argsorts and one merge per anchor, :mod:`cmhash.nn._numba`),
    "torch" (sort and searchsorted, any device) or "auto" (numba for CPU tensors when installed).
    ``same_order=True`` says x is d_neg + margin, so one argsort serves both.
    """
    if backend not in ("auto", "numba", "torch"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'torch', got {backend!r}")
    x, w_pos, d_neg = x.detach(), w_pos.detach().to(x.dtype), d_neg.detach().to(x.dtype)
    if backend == "auto":
        backend = "numba" if x.device.type == "cpu" and _numba_kernel() is not None else "torch"
    if backend == "numba":
        return _coefficients_numba(x, w_pos, d_neg, neg_mask, same_order)
    return _coefficients_torch(x, w_pos, d_neg, neg_mask)


def _numba_kernel():
    try:
        from cmhash.nn._numba import triplet_coefficients as kernel
    except ImportError:
        return None
    return kernel


def _coefficients_numba(x, w_pos, d_neg, neg_mask, same_order):
    kernel = _numba_kernel()
    if kernel is None:
        raise ValueError("backend='numba' needs numba: pip install 'cmhash[fast]'")
    if x.device.type != "cpu":
        raise ValueError(f"backend='numba' needs CPU tensors, got {x.device}")
    xn, wn, yn = (t.contiguous().numpy() for t in (x, w_pos, d_neg))
    mask = neg_mask.detach().to(torch.bool).contiguous().numpy()
    neg_order = np.argsort(yn, axis=1)
    pos_order = neg_order if same_order else np.argsort(xn, axis=1)
    count = np.empty(xn.shape, dtype=np.int64)
    below, m = np.empty_like(xn), np.empty_like(yn)
    kernel(xn, pos_order, wn, yn, neg_order, mask, count, below, m)
    return torch.from_numpy(count), torch.from_numpy(below), torch.from_numpy(m)


def _coefficients_torch(x, w_pos, d_neg, neg_mask):
    big = (x.abs().max() if x.numel() else torch.tensor(0.0)) + d_neg.abs().max() + 1.0
    y = torch.where(neg_mask, d_neg, big.to(d_neg.dtype))         # non-negatives sit above every x
    y_sorted, order = torch.sort(y, dim=1)
    prefix = torch.cumsum(y_sorted, dim=1)
    prefix = torch.cat([torch.zeros_like(prefix[:, :1]), prefix], dim=1)   # prefix[:, k] = sum of k smallest
    count = torch.searchsorted(y_sorted.contiguous(), x.contiguous(), side="left")
    count = torch.minimum(count, neg_mask.sum(dim=1, keepdim=True))  # safety: only true negatives
    active = w_pos > 0
    count = count * active
    below = torch.gather(prefix, 1, count)
    # m in sorted order: sorted negative j lies below x_ap iff j < count_ap
    hist = torch.zeros_like(prefix).scatter_add_(1, count, w_pos * active)
    above = hist.flip(1).cumsum(1).flip(1)[:, 1:]                  # above[:, j] = sum of hist[:, j+1:]
    m = torch.zeros_like(d_neg).scatter_(1, order, above) * neg_mask
    return count, below, m


def triplet_loss_from_similarity(
    sim: torch.Tensor, shared: torch.Tensor, margin: float, weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Cosine-distance triplet loss within one (anchor set x item set) similarity matrix.

    ``sim`` (A x N) cosine similarities, ``shared`` (A x N) shared-label counts: positives share
    a label with the anchor, negatives none. Distance = 1 - cos. ``weights`` (A x N) weigh each
    anchor-positive pair (default 1).
    """
    dist = 1.0 - sim
    pos = shared > 0
    w = pos.to(dist.dtype) if weights is None else weights * pos
    return weighted_triplet_loss(dist, w, dist, ~pos, margin)


def multilabel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the label distribution l / |l| (plain CE for single-label data)."""
    target = labels / labels.sum(dim=1, keepdim=True).clamp_min(1.0)
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()

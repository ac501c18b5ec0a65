"""Pairwise similarities and triplet losses for hashing, without B x B x B tensors.

:func:`weighted_triplet_loss` is the batch-all triplet loss
``sum_{a,p,n} w_ap [d_ap - d_an + margin]_+ / #{active triplets}`` over every anchor a, every
positive p of a (``w_ap > 0``) and every negative n of a, computed exactly in O(A x N log N)
time and O(A x N) memory: for each anchor the negatives' distances are sorted once, and each
positive sums its hinge over the negatives below ``d_ap + margin`` with a prefix sum.
"""

from __future__ import annotations

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
    ideal = torch.sort(shared, dim=1, descending=True).values
    ranks = torch.arange(2, shared.shape[1] + 2, device=shared.device, dtype=shared.dtype)
    z = ((2.0 ** ideal - 1.0) / torch.log2(ranks)).sum(dim=1, keepdim=True)
    return (2.0 ** shared - 1.0) / z.clamp_min(1e-12)


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
    """
    if d_pos.shape != w_pos.shape or d_neg.shape != neg_mask.shape or d_pos.shape[0] != d_neg.shape[0]:
        raise ValueError(
            f"weighted_triplet_loss: shapes differ: d_pos {tuple(d_pos.shape)}, w_pos {tuple(w_pos.shape)}, "
            f"d_neg {tuple(d_neg.shape)}, neg_mask {tuple(neg_mask.shape)}"
        )
    x = d_pos + margin                                            # hinge is active where d_an < x_ap
    big = (x.detach().abs().max() if x.numel() else torch.tensor(0.0)) + d_neg.detach().abs().max() + 1.0
    y = torch.where(neg_mask, d_neg, big.to(d_neg.dtype))         # non-negatives sit above every x
    y_sorted, _ = torch.sort(y, dim=1)
    prefix = torch.cumsum(y_sorted, dim=1)
    prefix = torch.cat([torch.zeros_like(prefix[:, :1]), prefix], dim=1)   # prefix[:, k] = sum of k smallest
    count = torch.searchsorted(y_sorted.detach().contiguous(), x.detach().contiguous(), side="left")
    count = torch.minimum(count, neg_mask.sum(dim=1, keepdim=True))  # safety: only true negatives
    hinge_sum = count.to(x.dtype) * x - torch.gather(prefix, 1, count)  # sum_n [x - y_n]_+
    active = w_pos > 0
    total = (w_pos * hinge_sum * active).sum()
    n_active = int((count * active).sum())
    return total / max(n_active, 1), n_active


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

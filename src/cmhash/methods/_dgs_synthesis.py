"""DGHDGH's per-triplet synthetic negatives (Eq. 7) without a (triplets x K) tensor.

z_apn = (1 - r) h_a + r h_n channel-wise, r = (1 - m_an) rho_apn + m_an, with m = lambda tau
(one value per anchor-negative pair and channel) and rho = d+ / d- one scalar per triplet. With
e = h_n - h_a, c_an = h_a + m e and v_an = (1 - m) e this is z_apn = c_an + rho_apn v_an, so

    h_a . z = h_a . c + rho h_a . v,      |z|^2 = |c|^2 + 2 rho c . v + rho^2 |v|^2,
    W z + b = (W c + b) + rho W v.

The (A x N x K) work is done once per anchor-negative pair; each triplet then costs O(1) (O(C)
for class logits). The test suite checks both against the synthetic negatives built explicitly
(:func:`cmhash.methods.dghdgh.synthetic_negatives`).
"""

from __future__ import annotations

import torch


class PairTerms:
    """The anchor-negative inner products that determine every triplet's synthetic negative."""

    def __init__(self, anchors: torch.Tensor, negatives: torch.Tensor, m: torch.Tensor):
        a = anchors[:, None, :]
        e = negatives[None, :, :] - a
        self.c = a + m * e                       # A x N x K
        self.v = e - m * e
        self.ac, self.av = (a * self.c).sum(-1), (a * self.v).sum(-1)
        self.cc, self.cv, self.vv = (self.c * self.c).sum(-1), (self.c * self.v).sum(-1), (self.v * self.v).sum(-1)
        self.anchor_norm = anchors.norm(dim=1)

    def cosine(self, t_a: torch.Tensor, t_n: torch.Tensor, rho: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """cos(h_a, z_apn) of each triplet (a = t_a, n = t_n, ratio rho)."""
        pair = t_a * self.c.shape[1] + t_n
        ac, av, cc, cv, vv = _gather(torch.stack([self.ac, self.av, self.cc, self.cv, self.vv], dim=-1), pair).unbind(1)
        num = ac + rho * av
        sq = cc + 2.0 * rho * cv + rho * rho * vv
        return num / (self.anchor_norm[t_a] * sq.clamp_min(eps * eps).sqrt()).clamp_min(eps)

    def logits(self, weight: torch.Tensor, bias: torch.Tensor, t_a: torch.Tensor, t_n: torch.Tensor,
               rho: torch.Tensor) -> torch.Tensor:
        """W z_apn + b of each triplet (T x C) for a linear classifier (W: C x K)."""
        pair = t_a * self.c.shape[1] + t_n
        lc = self.c @ weight.T + bias            # A x N x C
        lv = self.v @ weight.T
        return _gather(lc, pair) + rho[:, None] * _gather(lv, pair)


def _gather(pairs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` of an (A x N [x D]) tensor flattened over its first two axes. index_select's
    backward is an index_add (fast on CPU), where 2-D advanced indexing accumulates by sorting."""
    return pairs.reshape(pairs.shape[0] * pairs.shape[1], *pairs.shape[2:]).index_select(0, index)

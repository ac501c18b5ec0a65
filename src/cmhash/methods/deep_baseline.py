"""The plain supervised deep baseline: the deep methods' networks with only real-pair losses.

Loss on each batch of relaxed codes h^I, h^T = tanh(F(x)) (the hash-learning part shared by
IDGH and DGHDGH, without any synthetic item):

    L = sum_{(u, v) in {(I,I), (I,T), (T,I), (T,T)}} L_tri(h^u, h^v) + w_cls * CE(CL(h^u), l)

L_tri is the batch-all cosine triplet loss (DGHDGH Eq. 14; distance 1 - cos, ``margin``),
CE the classification loss of a classifier CL shared by both modalities (DGHDGH Eq. 12).
Measuring IDGH or DGHDGH against this isolates what their synthetic items add.
"""

from __future__ import annotations

from typing import Any

from cmhash.nn.engine import ENGINE_DEFAULTS, Batch, DeepHashingMethod, TrainContext  # first: clear error without torch

import torch  # noqa: E402
from torch import nn  # noqa: E402

from cmhash.methods.registry import register_method  # noqa: E402
from cmhash.nn.losses import (  # noqa: E402
    cosine_similarity_matrix,
    multilabel_cross_entropy,
    shared_labels,
    triplet_loss_from_similarity,
)

PAIRS = (("image", "image"), ("image", "text"), ("text", "image"), ("text", "text"))


def real_triplet_loss(codes: dict[str, torch.Tensor], labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Eq. 14 of DGHDGH: the triplet loss summed over the four modality pairs of the batch."""
    shared = shared_labels(labels, labels)
    return sum(
        triplet_loss_from_similarity(cosine_similarity_matrix(codes[u], codes[v]), shared, margin)[0]
        for u, v in PAIRS
    )


@register_method
class DeepBaseline(DeepHashingMethod):
    """Real-pair triplet + classification loss on the shared deep engine."""

    name = "deep-baseline"
    supervised = True
    defaults = {**ENGINE_DEFAULTS, "margin": 0.25, "cls_weight": 1.0}

    def setup(self, ctx: TrainContext) -> None:
        if self.hparams["cls_weight"] > 0:
            ctx.add_module("classifier", nn.Linear(ctx.bits, ctx.num_classes))

    def batch_loss(self, ctx: TrainContext, batch: Batch, codes: dict[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, dict[str, Any]]:
        tri = real_triplet_loss(codes, batch.labels, self.hparams["margin"])
        loss, logs = tri, {"triplet": float(tri.detach())}
        if self.hparams["cls_weight"] > 0:
            ce = sum(multilabel_cross_entropy(ctx.modules["classifier"](codes[m]), batch.labels)
                     for m in ("image", "text"))
            loss = loss + self.hparams["cls_weight"] * ce
            logs["cls"] = float(ce.detach())
        return loss, logs

"""The plain supervised deep baseline: the deep methods' networks with only real-pair losses.

Loss on each batch of relaxed codes h^I, h^T = tanh(F(x)) (the hash-learning part shared by
IDGH and DGHDGH, without any synthetic item):

    L = sum_{(u, v) in {(I,I), (I,T), (T,I), (T,T)}} L_tri(h^u, h^v) + w_cls * CE(CL(h^u), l)

L_tri is the batch-all cosine triplet loss (DGHDGH Eq. 14; distance 1 - cos, ``margin``),
CE the classification loss of a classifier CL shared by both modalities (DGHDGH Eq. 12).
Measuring IDGH or DGHDGH against this isolates what their synthetic items add.

How CE meets the hash layers (``classifier``):

- ``"detached"`` (default): CL is trained on detached codes, CE(CL(h.detach()), l), so CE trains
  the classifier only and the hash layers learn from the triplet loss alone. DGHDGH Eq. 12 does
  not say whether CE reaches the hash layers; the official DGHDGH code detaches the codes, and the
  official IDGH code has no classifier at all. With this default the baseline's hash layers are
  trained exactly as those of both methods without their synthetic items (and exactly as with
  ``cls_weight=0``: tested, identical codes), so "gain over the baseline" means what synthesis adds.
- ``"joint"``: CE(CL(h), l) back-propagates into the hash layers (the earlier behaviour of this
  module); a stronger, differently trained network, kept for comparison.

``cls_weight=0`` removes the classifier and its CE term altogether (no module, no gradient).
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
    defaults = {**ENGINE_DEFAULTS, "margin": 0.25, "cls_weight": 1.0, "classifier": "detached"}

    def _check_hparams(self) -> dict[str, Any]:
        h = super()._check_hparams()
        if h["classifier"] not in CLASSIFIER_MODES:
            raise ValueError(f"{self.name}: 'classifier' must be one of {CLASSIFIER_MODES}, got {h['classifier']!r}")
        if not h["cls_weight"] >= 0:
            raise ValueError(f"{self.name}: 'cls_weight' must be >= 0, got {h['cls_weight']!r}")
        return h

    def setup(self, ctx: TrainContext) -> None:
        if ctx.hparams["cls_weight"] > 0:
            # initialised from a forked RNG, so adding the classifier leaves the random stream of
            # the hash networks' training (data order, dropout) as it is without one
            with torch.random.fork_rng(devices=[]):
                ctx.add_module("classifier", nn.Linear(ctx.bits, ctx.num_classes))

    def batch_loss(self, ctx: TrainContext, batch: Batch, codes: dict[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, dict[str, Any]]:
        h = ctx.hparams
        tri = real_triplet_loss(codes, batch.labels, h["margin"])
        loss, logs = tri, {"triplet": float(tri.detach())}
        if h["cls_weight"] > 0:
            ce = classifier_loss(ctx.modules["classifier"], codes, batch.labels, detached=h["classifier"] == "detached")
            loss = loss + h["cls_weight"] * ce
            logs["cls"] = float(ce.detach())
        return loss, logs


CLASSIFIER_MODES = ("detached", "joint")


def classifier_loss(classifier: nn.Module, codes: dict[str, torch.Tensor], labels: torch.Tensor, *,
                    detached: bool) -> torch.Tensor:
    """DGHDGH Eq. 12, summed over both modalities: CE(CL(h^m), l); with ``detached`` the codes
    are detached first, so the gradient reaches the classifier only."""
    return sum(multilabel_cross_entropy(classifier(codes[m].detach() if detached else codes[m]), labels)
               for m in ("image", "text"))

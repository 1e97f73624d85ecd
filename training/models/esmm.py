"""ESMM: Entire Space Multi-task Model, all in this file.

Reference: X. Ma, L. Zhao, G. Huang, Z. Wang, Z. Hu, X. Zhu, K. Gai, "Entire Space
Multi-Task Model: An Effective Approach for Estimating Post-Click Conversion Rate",
SIGIR 2018 (arXiv 1804.07931, https://doi.org/10.1145/3209978.3210007).

    pCTR = σ(a),  a = tower_ctr(x);   pCVR = σ(b),  b = tower_cvr(x);   pCTCVR = pCTR · pCVR
    L = BCE(pCTR, click) + BCE(pCTCVR, click ∧ conversion), both over all impressions

Notation: B batch, F fields, k embedding dim, T = 2 tasks (click, conversion).

Outputs, in `spec.tasks` order: the click logit `a` and the CTCVR logit
`logit(σ(a)·σ(b))`; the trainer's BCE-with-logits on them is exactly the paper's loss.
pCVR gets no direct loss (its tower learns only through the product) and is read
with `cvr(batch)`. The CTCVR logit is computed in log space without ever forming p:

    1 − σ(a)σ(b) = (e^{−a} + e^{−b} + e^{−a−b}) · σ(a)σ(b)
    ⇒ logit(σ(a)σ(b)) = −logsumexp(−a, −b, −a−b)

exact, finite for finite a, b, and with bounded gradients (no log(1 − p) cancellation).

Resolutions (not fixed by the paper, each a config flag): `tower_dims` = (360, 200, 80)
follows the paper's MLP widths (its final 2-way softmax is our Linear → 1 logit);
the two towers read the same concatenated field embeddings (the paper shares the
embedding lookup; it has no shared MLP); the scenario id is an ordinary input field.
The tasks must be exactly two, ordered (impression → click, impression → click ∧ conversion).
Deviations: none known.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from training.data import FeatureSpec
from training.layers import FeatureEmbedding, ParallelMLP
from training.models.base import ModelConfig, MsmtModel


@dataclass
class EsmmConfig(ModelConfig):
    tower_dims: tuple[int, ...] = (360, 200, 80)  # paper: MLP 360×200×80 per tower, then Linear → 1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.tower_dims = tuple(self.tower_dims)
        if any(d < 1 for d in self.tower_dims):
            raise ValueError(f"bad tower widths {self.tower_dims}")


def esmm_ctcvr_logit(ctr_logit: torch.Tensor, cvr_logit: torch.Tensor) -> torch.Tensor:
    """logit(σ(a)·σ(b)) = −logsumexp(−a, −b, −a−b), elementwise, stable for any finite a, b."""
    a, b = -ctr_logit, -cvr_logit
    return -torch.logsumexp(torch.stack([a, b, a + b], dim=-1), dim=-1)  # (..., 3) → (...)


class Esmm(MsmtModel):
    """Shared embeddings → CTR tower and CVR tower (one ParallelMLP) → (click, CTCVR) logits.

    Example::

        model = Esmm(spec, EsmmConfig())
        logits = model(batch)  # (B, 2): click, conversion (CTCVR)
        p_cvr = model.cvr(batch)  # (B,): post-click conversion rate
    """

    Config = EsmmConfig

    def __init__(self, spec: FeatureSpec, config: EsmmConfig) -> None:
        super().__init__(spec, config)
        if self.n_tasks != 2:
            raise ValueError(f"ESMM needs exactly 2 tasks (click, click∧conversion), got {spec.tasks}")
        self.embedding = FeatureEmbedding(spec, config.emb_dim)
        # network 0 = CTR tower, 1 = CVR tower
        self.towers = ParallelMLP(
            2,
            [self.embedding.out_dim, *config.tower_dims, 1],
            dropout=config.dropout,
            activate_last=False,
            norm=config.norm,
        )

    def tower_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch → `(B, 2)`: the CTR logit `a` and the CVR logit `b`."""
        x = self.embedding.flat(batch)  # (B, F*k)
        return self.towers(x).squeeze(-1)  # (B, 2, 1) → (B, 2)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch (see `TensorData.batches`) → logits `(B, 2)`: click, CTCVR = logit(pCTR·pCVR)."""
        ab = self.tower_logits(batch)  # (B, 2)
        ctcvr = esmm_ctcvr_logit(ab[:, 0], ab[:, 1])  # (B,)
        return torch.stack([ab[:, 0], ctcvr], dim=1)  # (B, 2)

    def cvr(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """pCVR = P(conversion | click, x) `(B,)`, as probabilities."""
        return self.tower_logits(batch)[:, 1].sigmoid()  # (B,)


MODEL = Esmm
DESCRIPTION = "ESMM (Ma et al., SIGIR 2018): pCTCVR = pCTR·pCVR on the entire impression space"

"""CausalInt: causal-inspired intervention for multi-scenario recommendation, all in this file.

Reference: Y. Wang et al. (Huawei Noah's Ark), "CausalInt: Causal Inspired Intervention for
Multi-Scenario Recommendation", KDD 2022 (https://doi.org/10.1145/3534678.3539221).
Only the abstract and a talk summary are public (no code), so everything below the
module level is a resolution (MODELS.md §5 [R]); the paper's three modules are:

    Invariant Representation Modeling:  h_inv = f_inv(x) (scenario-shared), h_s = f_s(x) (scenario-specific),
        L_adv = CE(C_adv(GRL_λ(h_inv)), s),  L_cls = CE(C_cls(h_s), s),  L_orth = mean_b (ĥ_inv · ĥ_s)²
    Negative Effects Mitigating (between scenarios):  L_grad = Σ_{j<j'} cos²(∇_θ L_j, ∇_θ L_j'),
        θ = the last layer of f_inv
    Inter-Scenario Transferring (TransNet, counterfactual "what if the row came from j ≠ s"):
        α_j = softmax_{j≠s} MLP([h_s; h_j]),  c = Σ_j α_j h_j,  h_tr = σ(W [h_s; c]) ⊙ c
    logit_{s,t} = tower_{s,t}([h_inv; h_s; h_tr])

Notation: B batch, F fields, k embedding dim, S scenarios, T tasks, D representation width.

Resolutions (not paper text; each a config flag):
- `inv_dims` / `spec_dims`: ReLU MLPs on the flat embeddings (the scenario id is an
  ordinary field, which the adversary teaches f_inv to ignore); every scenario's
  f_j runs on every row, so the counterfactuals h_j (j ≠ s) are available.
- `grl_scale` λ = 0.1: the gradient-reversal coefficient of the adversarial scenario
  classifier on h_inv; `adv_weight`, `cls_weight`, `orth_weight`, `grad_orth_weight`
  weigh L_adv, L_cls, L_orth, L_grad (values not published).
- `orth_form`: "sample" = mean_b (ĥ_inv,b · ĥ_s,b)² over L2-normalised rows (MODELS.md);
  "batch" = ‖Ĥ_invᵀ Ĥ_s‖_F² / B² (Domain Separation Networks' difference loss).
- L_grad is taken on the last Linear of f_inv only (for cost), with per-scenario
  masked BCE summed over tasks, over the scenarios present in the batch; it needs
  a double backward (`create_graph=True`).
- `transnet_hidden`: width of the MLP scoring each counterfactual; with S = 1 there
  is no counterfactual and h_tr = 0.
- `scenario_towers`: one tower per (scenario, task) (Tower_s, default) or per task.

Deviations: the MAML step of "Negative Effects Mitigating" (conflicts between the
scenario-specific and invariant parts) is not implemented: it needs an inner
optimisation step that the shared trainer does not run (MODELS.md's default is
`maml=False` too). The PCGrad alternative to L_grad is not implemented either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.data import FeatureSpec
from training.layers import MLP, FeatureEmbedding, GradientReversal, ParallelMLP
from training.models.base import ModelConfig, MsmtModel

_ORTH_FORMS = ("sample", "batch")


@dataclass
class CausalIntConfig(ModelConfig):
    inv_dims: tuple[int, ...] = (128, 64)  # f_inv hidden widths; D = last [R]
    spec_dims: tuple[int, ...] = (128, 64)  # each f_j's hidden widths; last must equal D [R]
    transnet_hidden: int = 32  # width of the counterfactual scoring MLP [R]
    tower_dims: tuple[int, ...] = (64,)  # hidden widths of each tower, then Linear → 1
    scenario_towers: bool = True  # Tower_{s,t} (True) or Tower_t (False) [R]
    grl_scale: float = 0.1  # λ of the gradient-reversal layer [R, MODELS.md]
    adv_weight: float = 1.0  # λ_adv [R]
    cls_weight: float = 0.1  # λ_cls [R]
    orth_weight: float = 0.1  # λ_orth [R]
    orth_form: str = "sample"  # "sample" | "batch" [R]
    grad_orth_weight: float = 0.1  # λ_g of the gradient-based orthogonal regulariser; 0 = off [R]

    def __post_init__(self) -> None:
        super().__post_init__()
        self.inv_dims, self.spec_dims, self.tower_dims = (
            tuple(self.inv_dims),
            tuple(self.spec_dims),
            tuple(self.tower_dims),
        )
        if (
            not self.inv_dims
            or not self.spec_dims
            or any(d < 1 for d in self.inv_dims + self.spec_dims + self.tower_dims)
        ):
            raise ValueError(f"bad widths: inv {self.inv_dims}, spec {self.spec_dims}, towers {self.tower_dims}")
        if self.inv_dims[-1] != self.spec_dims[-1]:
            raise ValueError(f"h_inv and h_s need one width D, got {self.inv_dims[-1]} and {self.spec_dims[-1]}")
        if self.transnet_hidden < 1 or self.orth_form not in _ORTH_FORMS:
            raise ValueError(f"need transnet_hidden >= 1 and orth_form in {_ORTH_FORMS}")
        weights = (self.grl_scale, self.adv_weight, self.cls_weight, self.orth_weight, self.grad_orth_weight)
        if min(weights) < 0:
            raise ValueError(f"grl_scale and loss weights must be >= 0, got {weights}")


def causalint_orthogonality(h_inv: torch.Tensor, h_s: torch.Tensor, form: str = "sample") -> torch.Tensor:
    """L_orth of `(B, D)` invariant and specific representations: 0 iff they are orthogonal."""
    a, b = F.normalize(h_inv, dim=-1), F.normalize(h_s, dim=-1)  # (B, D) each
    if form == "sample":
        return (a * b).sum(-1).square().mean()
    return (a.T @ b).square().sum() / a.shape[0] ** 2  # ‖AᵀB‖_F² / B², (D, D) inside


class CausalIntTransNet(nn.Module):
    """Fuses the counterfactual representations {h_j : j ≠ s} into h_tr `(B, D)`."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.score = MLP([2 * d, hidden, 1], activate_last=False)
        self.fuse = nn.Linear(2 * d, d)

    def forward(self, h_all: torch.Tensor, h_s: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        """h_all `(B, S, D)` (every f_j on every row), h_s `(B, D)`, scenario `(B,)` → h_tr `(B, D)`."""
        B, S, D = h_all.shape
        if S == 1:  # no other scenario to intervene with
            return torch.zeros_like(h_s)
        pairs = torch.cat([h_s.unsqueeze(1).expand(B, S, D), h_all], dim=-1)  # (B, S, 2D)
        scores = self.score(pairs).squeeze(-1)  # (B, S)
        own = F.one_hot(scenario, S).bool()  # (B, S): the factual scenario is not a counterfactual
        alpha = scores.masked_fill(own, float("-inf")).softmax(-1)  # (B, S)
        c = torch.einsum("bs,bsd->bd", alpha, h_all)  # (B, D)
        return torch.sigmoid(self.fuse(torch.cat([h_s, c], dim=-1))) * c  # (B, D)


class CausalIntAdversary(nn.Module):
    """Scenario classifier behind a gradient-reversal layer: trains f_inv to hide the scenario."""

    def __init__(self, d: int, n_scenarios: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.classifier = nn.Linear(d, n_scenarios)

    def forward(self, h_inv: torch.Tensor) -> torch.Tensor:
        """h_inv `(B, D)` → scenario logits `(B, S)`; the gradient into h_inv is × −scale."""
        return self.classifier(GradientReversal.apply(h_inv, self.scale))  # (B, S)


class CausalInt(MsmtModel):
    """Embeddings → invariant f_inv and S specific f_j → TransNet → towers on [h_inv; h_s; h_tr].

    Example::

        model = CausalInt(spec, CausalIntConfig())
        logits = model(batch)  # (B, T)
        losses = model.extra_losses(batch, logits)  # adversarial, scenario_cls, orthogonality, grad_orthogonality
    """

    Config = CausalIntConfig

    def __init__(self, spec: FeatureSpec, config: CausalIntConfig) -> None:
        super().__init__(spec, config)
        S, D = spec.n_scenarios, config.inv_dims[-1]
        self.embedding = FeatureEmbedding(spec, config.emb_dim)
        d_in = self.embedding.out_dim
        self.invariant = MLP([d_in, *config.inv_dims], dropout=config.dropout)
        self.specific = ParallelMLP(S, [d_in, *config.spec_dims], dropout=config.dropout)
        self.transnet = CausalIntTransNet(D, config.transnet_hidden)
        self.adversary = CausalIntAdversary(D, S, config.grl_scale)
        self.scenario_classifier = nn.Linear(D, S)
        self.n_towers = S * self.n_tasks if config.scenario_towers else self.n_tasks
        tower_dims = [3 * D, *config.tower_dims, 1]
        self.towers = ParallelMLP(self.n_towers, tower_dims, dropout=config.dropout, activate_last=False)
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (h_inv, h_s) of the latest training forward

    def representations(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """batch → h_inv `(B, D)`, h_s `(B, D)`, h_tr `(B, D)`."""
        x = self.embedding.flat(batch)  # (B, F*k)
        scenario = batch["scenario"]  # (B,)
        h_inv = self.invariant(x)  # (B, D)
        h_all = self.specific(x)  # (B, S, D)
        h_s = h_all[torch.arange(x.shape[0], device=x.device), scenario]  # (B, D)
        return h_inv, h_s, self.transnet(h_all, h_s, scenario)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch (see `TensorData.batches`) → logits `(B, T)` from the row's scenario towers."""
        h_inv, h_s, h_tr = self.representations(batch)
        out = self.towers(torch.cat([h_inv, h_s, h_tr], dim=-1)).squeeze(-1)  # (B, n_towers)
        if self.config.scenario_towers:
            out = out.view(-1, self.spec.n_scenarios, self.n_tasks)  # (B, S, T)
            out = out[torch.arange(out.shape[0], device=out.device), batch["scenario"]]  # (B, T)
        self._last = (h_inv, h_s) if self.training and torch.is_grad_enabled() else None  # for extra_losses
        return out

    def gradient_orthogonality(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        """Σ_{j<j'} cos²(g_j, g_j'), g_j = ∇ of scenario j's masked BCE w.r.t. f_inv's last Linear (differentiable)."""
        weight = [m for m in self.invariant if isinstance(m, nn.Linear)][-1].weight
        bce = F.binary_cross_entropy_with_logits(logits, batch["labels"], reduction="none")  # (B, T)
        bce = torch.where(batch["label_mask"], bce, torch.zeros_like(bce))  # (B, T)
        grads = []
        for j in batch["scenario"].unique().tolist():
            rows = batch["scenario"] == j  # (B,)
            mask = batch["label_mask"] & rows.unsqueeze(1)  # (B, T)
            loss_j = (bce * rows.unsqueeze(1)).sum(0) / mask.sum(0).clamp(min=1)  # (T,)
            (g,) = torch.autograd.grad(loss_j.sum(), weight, create_graph=True)
            grads.append(g.flatten())  # (|θ|,)
        if len(grads) < 2:
            return logits.new_zeros(())
        g = F.normalize(torch.stack(grads), dim=-1)  # (S', |θ|)
        cos2 = (g @ g.T).square()  # (S', S')
        return cos2.triu(diagonal=1).sum()

    def compile_blocker(self) -> str | None:
        if self.config.grad_orth_weight > 0:
            return ("grad_orth_weight > 0 takes a double backward (create_graph=True), which torch.compile "
                    "does not support; set grad_orth_weight=0 or compile=false")  # fmt: skip
        return None

    def extra_losses(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"adversarial", "scenario_cls", "orthogonality", "grad_orthogonality"}, each already weighted.

        Reuses h_inv and h_s of the latest training forward (the trainer calls this right
        after it, on the same batch) and drops them; without one, recomputes them.
        """
        cached, self._last = self._last, None
        if cached is None or cached[0].shape[0] != logits.shape[0]:
            cached = self.representations(batch)[:2]
        h_inv, h_s = cached[0].float(), cached[1].float()  # (B, D) each; float even under autocast
        cfg, scenario, losses = self.config, batch["scenario"], {}
        if cfg.adv_weight > 0:
            losses["adversarial"] = cfg.adv_weight * F.cross_entropy(self.adversary(h_inv), scenario)
        if cfg.cls_weight > 0:
            losses["scenario_cls"] = cfg.cls_weight * F.cross_entropy(self.scenario_classifier(h_s), scenario)
        if cfg.orth_weight > 0:
            losses["orthogonality"] = cfg.orth_weight * causalint_orthogonality(h_inv, h_s, cfg.orth_form)
        if cfg.grad_orth_weight > 0 and logits.requires_grad and torch.is_grad_enabled():
            losses["grad_orthogonality"] = cfg.grad_orth_weight * self.gradient_orthogonality(batch, logits)
        return losses


MODEL = CausalInt
DESCRIPTION = (
    "CausalInt (Huawei, KDD 2022): invariant vs scenario-specific parts, GRL adversary, counterfactual TransNet"
)

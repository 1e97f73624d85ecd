"""CausalInt: causal-inspired intervention for multi-scenario recommendation, all in this file.

Reference: Y. Wang et al. (Huawei Noah's Ark), "CausalInt: Causal Inspired Intervention for
Multi-Scenario Recommendation", KDD 2022 (https://doi.org/10.1145/3534678.3539221).
Only the abstract and a talk summary are public (no code), so everything below the
module level is a resolution (MODELS.md §5 [R]); the paper's three modules are:

    Invariant Representation Modeling:  h_inv = f_inv(x) (scenario-shared), h_s = f_s(x) (scenario-specific),
        L_adv = CE(C_adv(GRL_λ(h_inv)), s),  L_cls = CE(C_cls(h_s), s),  L_orth = mean_b (û_inv · û_s)²,
        u = the pre-activation of h's last layer (h = ReLU(u))
    Negative Effects Mitigating (between scenarios):  L_grad = Σ_{j<j'} max(0, −cos(∇_θ L_j, ∇_θ L_j'))²,
        θ = the last layer of f_inv
    Inter-Scenario Transferring (TransNet, counterfactual "what if the row came from j ≠ s"):
        α_j = softmax_{j≠s} MLP([h_s; h_j]),  c = Σ_j α_j h_j,  h_tr = σ(W [h_s; c]) ⊙ c
    logit_{s,t} = tower_{s,t}([h_inv; h_s; h_tr])

Notation: B batch, F fields, k embedding dim, S scenarios, T tasks, D representation width.

Resolutions (not paper text; each a config flag):
- `inv_dims` / `spec_dims`: ReLU MLPs on the flat embeddings (the scenario id is an
  ordinary field, which the adversary teaches f_inv to ignore); every scenario's
  f_j runs on every row, so the counterfactuals h_j (j ≠ s) are available.
- `adversary="confusion"`: the scenario classifier C on h_inv learns the scenario from a
  detached h_inv, and f_inv is trained to make the (frozen) C's prediction uniform:
  CE(uniform, softmax C(h_inv)) >= log S, bounded. "reversal" = MODELS.md's gradient-reversal
  layer (f_inv maximises C's CE × `grl_scale`); its loss is unbounded above, because f_inv
  can push the unbounded ReLU output h_inv to make C ever more confidently wrong. On the
  ZOO world at lr 0.01 it did: L_adv grew from 40 to 149,000 over 6 epochs and the towers
  collapsed to the base rates (AUC 0.5 in every cell; docs/benchmarks.md). Confusion is the
  domain-confusion loss of Tzeng et al. (ICCV 2015); the paper says only that scenario
  information is squeezed out of the shared representation.
- `grl_scale` λ = 0.1: the weight of f_inv's side of that game (the GRL's coefficient
  under "reversal"); `adv_weight`, `cls_weight`, `orth_weight`, `grad_orth_weight`
  weigh L_adv, L_cls, L_orth, L_grad (values not published).
- `orth_form`: "sample" = mean_b (û_inv,b · û_s,b)² over L2-normalised rows (MODELS.md);
  "batch" = ‖Û_invᵀ Û_s‖_F² / B² (Domain Separation Networks' difference loss).
- `orth_input="pre_activation"`: L_orth acts on u_inv, u_s, the last layers' outputs
  before their ReLU. On the ReLU outputs h ("post_activation", the earlier choice)
  every cosine is >= 0, so the loss reaches 0 only when the two representations use
  disjoint units, i.e. it can only be met by switching units off.
- `grad_penalty="conflict"`: only conflicting gradients (negative cosine) are
  penalised, so scenarios whose gradients agree (positive transfer) are left alone;
  "cos2" = Σ cos², the literal "orthogonal" reading, which also pushes aligned
  gradients apart.
- L_grad is taken on the last Linear of f_inv only (for cost), with per-scenario
  masked BCE summed over tasks; scenarios absent from the batch have a zero gradient
  and add nothing. All scenarios at once: ∇_W L_j = Σ_{b in j} g_b a_bᵀ, with g = the
  gradient of Σ_j L_j at u_inv (row b only feeds its own scenario's loss) and a the
  input of that Linear, so one (double-)differentiable backward serves every
  scenario and nothing waits on the host; it needs `create_graph=True`.
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
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from training.data import FeatureSpec
from training.layers import (
    MLP,
    FeatureEmbedding,
    GradientReversal,
    ParallelMLP,
    ScenarioChunks,
    run_networks,
    runs_subsets,
)
from training.models.base import ModelConfig, MsmtModel

_ORTH_FORMS = ("sample", "batch")
_ORTH_INPUTS = ("pre_activation", "post_activation")
_GRAD_PENALTIES = ("conflict", "cos2")
_ADVERSARIES = ("confusion", "reversal")


@dataclass
class CausalIntConfig(ModelConfig):
    inv_dims: tuple[int, ...] = (128, 64)  # f_inv hidden widths; D = last [R]
    spec_dims: tuple[int, ...] = (128, 64)  # each f_j's hidden widths; last must equal D [R]
    transnet_hidden: int = 32  # width of the counterfactual scoring MLP [R]
    tower_dims: tuple[int, ...] = (64,)  # hidden widths of each tower, then Linear → 1
    scenario_towers: bool = True  # Tower_{s,t} (True) or Tower_t (False) [R]
    adversary: str = "confusion"  # "confusion": f_inv makes C uniform (bounded) | "reversal": GRL [R, MODELS.md]
    grl_scale: float = 0.1  # λ: weight of f_inv's side of the adversarial game (the GRL's coefficient) [R, MODELS.md]
    adv_weight: float = 1.0  # λ_adv [R]
    cls_weight: float = 0.1  # λ_cls [R]
    orth_weight: float = 0.1  # λ_orth [R]
    orth_form: str = "sample"  # "sample" | "batch" [R]
    orth_input: str = "pre_activation"  # "pre_activation" | "post_activation" (ReLU outputs: cos >= 0) [R]
    grad_orth_weight: float = 0.1  # λ_g of the gradient-based orthogonal regulariser; 0 = off [R]
    grad_penalty: str = "conflict"  # "conflict": max(0, −cos)² | "cos2": cos², aligned pairs too [R]

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
        if self.orth_input not in _ORTH_INPUTS or self.grad_penalty not in _GRAD_PENALTIES:
            raise ValueError(f"need orth_input in {_ORTH_INPUTS} and grad_penalty in {_GRAD_PENALTIES}")
        if self.adversary not in _ADVERSARIES:
            raise ValueError(f"adversary must be one of {_ADVERSARIES}, got {self.adversary!r}")
        weights = (self.grl_scale, self.adv_weight, self.cls_weight, self.orth_weight, self.grad_orth_weight)
        if min(weights) < 0:
            raise ValueError(f"grl_scale and loss weights must be >= 0, got {weights}")


def causalint_orthogonality(h_inv: torch.Tensor, h_s: torch.Tensor, form: str = "sample") -> torch.Tensor:
    """L_orth of `(B, D)` invariant and specific representations: 0 iff they are orthogonal."""
    a, b = F.normalize(h_inv, dim=-1), F.normalize(h_s, dim=-1)  # (B, D) each
    if form == "sample":
        return (a * b).sum(-1).square().mean()
    return (a.T @ b).square().sum() / a.shape[0] ** 2  # ‖AᵀB‖_F² / B², (D, D) inside


def causalint_gradient_penalty(grads: torch.Tensor, form: str = "conflict") -> torch.Tensor:
    """L_grad of per-scenario gradients `(S, P)`: Σ_{j<j'} max(0, −cos)² ("conflict") or cos² ("cos2").

    A zero row (a scenario absent from the batch) has cosine 0 with every other row and adds nothing.
    """
    g = F.normalize(grads, dim=-1)  # (S, P)
    cos = g @ g.T  # (S, S)
    term = F.relu(-cos).square() if form == "conflict" else cos.square()  # (S, S)
    return term.triu(diagonal=1).sum()


class CausalIntRepresentations(NamedTuple):
    """One forward's representations, each `(B, D)` unless stated."""

    h_inv: torch.Tensor  # ReLU(u_inv): what the towers read
    h_s: torch.Tensor  # ReLU(u_s) of the row's own scenario
    h_tr: torch.Tensor  # TransNet output
    u_inv: torch.Tensor  # pre-activation of f_inv's last layer
    u_s: torch.Tensor  # pre-activation of the own f_s's last layer
    a_inv: torch.Tensor  # `(B, H)`: the input of f_inv's last Linear (H = its width)


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
    """Scenario classifier C on h_inv, and the game that trains f_inv to hide the scenario from it."""

    def __init__(self, d: int, n_scenarios: int, scale: float, objective: str = "confusion") -> None:
        super().__init__()
        self.scale, self.objective = scale, objective
        self.classifier = nn.Linear(d, n_scenarios)

    def forward(self, h_inv: torch.Tensor) -> torch.Tensor:
        """h_inv `(B, D)` → scenario logits `(B, S)` behind the GRL: the gradient into h_inv is × −scale."""
        return self.classifier(GradientReversal.apply(h_inv, self.scale))  # (B, S)

    def loss(self, h_inv: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        """L_adv of h_inv `(B, D)`: C learns the scenario; f_inv maximises C's loss ("reversal") or
        makes C's prediction uniform ("confusion", each side trained by its own term only)."""
        if self.objective == "reversal":
            return F.cross_entropy(self(h_inv), scenario)
        learn = F.cross_entropy(self.classifier(h_inv.detach()), scenario)  # trains C only
        frozen = F.linear(h_inv, self.classifier.weight.detach(), self.classifier.bias.detach())  # (B, S)
        confuse = -frozen.log_softmax(-1).mean()  # CE(uniform, C(h_inv)) >= log S; trains f_inv only
        return learn + self.scale * confuse


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
        # both end at their last Linear (u); forward applies ReLU + dropout, so L_orth can read u
        drop, norm = config.dropout, config.norm  # the norm sits in the hidden layers, u stays the raw last Linear
        self.invariant = MLP([d_in, *config.inv_dims], dropout=drop, activate_last=False, norm=norm)
        self.specific = ParallelMLP(S, [d_in, *config.spec_dims], dropout=drop, activate_last=False, norm=norm)
        self.representation_dropout = nn.Dropout(config.dropout)
        self.transnet = CausalIntTransNet(D, config.transnet_hidden)
        self.adversary = CausalIntAdversary(D, S, config.grl_scale, config.adversary)
        self.scenario_classifier = nn.Linear(D, S)
        self.n_towers = S * self.n_tasks if config.scenario_towers else self.n_tasks
        tower_dims = [3 * D, *config.tower_dims, 1]
        self.towers = ParallelMLP(self.n_towers, tower_dims, dropout=drop, activate_last=False, norm=norm)
        self._last: CausalIntRepresentations | None = None  # of the latest training forward, for extra_losses

    def representations(self, batch: dict[str, torch.Tensor]) -> CausalIntRepresentations:
        """batch → h_inv, h_s, h_tr (and the pre-activations u_inv, u_s and a_inv), see `CausalIntRepresentations`."""
        x = self.embedding.flat(batch)  # (B, F*k)
        scenario = batch["scenario"]  # (B,)
        *hidden, last = self.invariant
        a_inv = x
        for layer in hidden:
            a_inv = layer(a_inv)  # ends (B, H)
        u_inv = last(a_inv)  # (B, D)
        u_all = self.specific(x)  # (B, S, D)
        u_s = u_all[torch.arange(x.shape[0], device=x.device), scenario]  # (B, D)
        h_inv = self.representation_dropout(F.relu(u_inv))  # (B, D)
        h_all = self.representation_dropout(F.relu(u_all))  # (B, S, D)
        h_s = h_all[torch.arange(x.shape[0], device=x.device), scenario]  # (B, D)
        return CausalIntRepresentations(h_inv, h_s, self.transnet(h_all, h_s, scenario), u_inv, u_s, a_inv)

    def tower_logits(self, reps: CausalIntRepresentations, scenario: torch.Tensor) -> torch.Tensor:
        """Representations, scenario `(B,)` → logits `(B, T)` of the row's own scenario towers (Tower_{s,t}).

        With scenario towers, rows are grouped by scenario and each group runs only its scenario's
        T towers (not all S·T), with no host sync (`ScenarioChunks`); with `norm="batch"` (statistics
        over the whole batch) every tower runs and each row reads its own.
        """
        x = torch.cat([reps.h_inv, reps.h_s, reps.h_tr], dim=-1)  # (B, 3D)
        if not self.config.scenario_towers:
            return self.towers(x).squeeze(-1)  # (B, T)
        if not runs_subsets(self.towers):
            every = self.towers(x).squeeze(-1).unflatten(1, (self.spec.n_scenarios, self.n_tasks))  # (B, S, T)
            return every[torch.arange(x.shape[0], device=x.device), scenario]  # (B, T)
        chunks = ScenarioChunks(scenario, self.spec.n_scenarios)
        tasks = torch.arange(self.n_tasks, device=x.device)  # (T,)
        index = chunks.owner[:, None] * self.n_tasks + tasks  # (K, T): tower s·T + t
        out = run_networks(self.towers, chunks.pad(x), index)  # (K, T, c, 1)
        return chunks.unpad(out.squeeze(-1).transpose(1, 2))  # (B, T)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch (see `TensorData.batches`) → logits `(B, T)` from the row's scenario towers."""
        reps = self.representations(batch)
        self._last = reps if self.training and torch.is_grad_enabled() else None  # for extra_losses
        return self.tower_logits(reps, batch["scenario"])

    def scenario_gradients(
        self, batch: dict[str, torch.Tensor], logits: torch.Tensor, reps: CausalIntRepresentations
    ) -> torch.Tensor:
        """g_j = ∇_W L_j for every scenario j, W = f_inv's last Linear weight: `(S, D*H)`, differentiable.

        L_j = Σ_t masked mean over scenario j's rows of BCE(logits, labels); `logits` must come
        from `reps` (an error otherwise). Scenarios absent from the batch get a zero row.
        """
        logits = logits.float()
        bce = F.binary_cross_entropy_with_logits(logits, batch["labels"].float(), reduction="none")  # (B, T)
        mask = batch["label_mask"].to(bce.dtype)  # (B, T)
        onehot = F.one_hot(batch["scenario"], self.spec.n_scenarios).to(bce.dtype)  # (B, S)
        counts = onehot.T @ mask  # (S, T): labelled rows per scenario and task
        row_weight = mask / counts.clamp(min=1)[batch["scenario"]]  # (B, T): 1 / |rows of s(b) labelled for t|
        (g_u,) = torch.autograd.grad((bce * row_weight).sum(), reps.u_inv, create_graph=True)  # (B, D)
        grads = torch.einsum("bs,bd,bh->sdh", onehot, g_u.float(), reps.a_inv.float())  # (S, D, H)
        return grads.flatten(1)  # (S, D*H), the layout of weight.flatten()

    def gradient_orthogonality(
        self, batch: dict[str, torch.Tensor], logits: torch.Tensor, reps: CausalIntRepresentations | None = None
    ) -> torch.Tensor:
        """L_grad (`grad_penalty`) of the per-scenario gradients w.r.t. f_inv's last Linear (differentiable).

        Without `reps` (those `logits` were computed from), both are computed again from `batch`.
        """
        if reps is None:
            reps = self.representations(batch)
            logits = self.tower_logits(reps, batch["scenario"])
        grads = self.scenario_gradients(batch, logits, reps)  # (S, D*H)
        return causalint_gradient_penalty(grads, self.config.grad_penalty)

    def compile_blocker(self) -> str | None:
        if self.config.grad_orth_weight > 0:
            return ("grad_orth_weight > 0 takes a double backward (create_graph=True), which torch.compile "
                    "does not support; set grad_orth_weight=0 or compile=false")  # fmt: skip
        return None

    def extra_losses(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"adversarial", "scenario_cls", "orthogonality", "grad_orthogonality"}, each already weighted.

        Reuses the representations of the latest training forward (the trainer calls this
        right after it, on the same batch, with its logits) and drops them; without one,
        recomputes them (and, for L_grad, the logits they give).
        """
        cached, self._last = self._last, None
        reps = cached if cached is not None and cached.h_inv.shape[0] == logits.shape[0] else None
        fresh = reps if reps is not None else self.representations(batch)
        h_inv, h_s = fresh.h_inv.float(), fresh.h_s.float()  # (B, D) each; float even under autocast
        cfg, scenario, losses = self.config, batch["scenario"], {}
        if cfg.adv_weight > 0:
            losses["adversarial"] = cfg.adv_weight * self.adversary.loss(h_inv, scenario)
        if cfg.cls_weight > 0:
            losses["scenario_cls"] = cfg.cls_weight * F.cross_entropy(self.scenario_classifier(h_s), scenario)
        if cfg.orth_weight > 0:
            pre = cfg.orth_input == "pre_activation"
            u_inv, u_s = (fresh.u_inv, fresh.u_s) if pre else (fresh.h_inv, fresh.h_s)  # (B, D) each
            orth = causalint_orthogonality(u_inv.float(), u_s.float(), cfg.orth_form)
            losses["orthogonality"] = cfg.orth_weight * orth
        if cfg.grad_orth_weight > 0 and logits.requires_grad and torch.is_grad_enabled():
            if reps is None:  # the representations behind `logits` are unknown: score the fresh ones
                logits = self.tower_logits(fresh, scenario)  # (B, T)
            losses["grad_orthogonality"] = cfg.grad_orth_weight * self.gradient_orthogonality(batch, logits, fresh)
        return losses


MODEL = CausalInt
DESCRIPTION = (
    "CausalInt (Huawei, KDD 2022): invariant vs scenario-specific parts, GRL adversary, counterfactual TransNet"
)

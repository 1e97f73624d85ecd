"""TAML: Task-Adaptive Multi-Learner network, all in this file.

Reference: Huawei Noah's Ark, most likely "Task Adaptive Multi-learner Network for
Joint CTR and CVR Estimation", WWW 2023 companion (title and DOI not confirmed,
see MODELS.md §4). Only talk summaries are public: no paper
text, no code. Known [S]: (1) a multi-level task-adaptive representation extractor
with shared, task-specific and learner-level experts fused by gates; (2) several
learners per task whose ensemble distils into each learner.

    h_{t,l} = Σ_g softmax(W_{t,l} x)_g · [E^sh; E^t; E^{t,l}]_g(x),    z_{t,l} = tower_{t,l}(h_{t,l})
    p_t = mean_l σ(z_{t,l}),    L = BCE(p_t, y_t) + Σ_{t,l} BCE(σ(z_{t,l}), y_t) + λ_kd Σ_{t,l} BCE(σ(z_{t,l}), sg(p_t))

Notation: B batch, F fields, k embedding dim, T tasks, M learners per task,
G = n_s + n_t + n_l experts seen by one learner's gate, D expert output width.

Resolutions (MODELS.md §4 [R]; none is paper text, each is a config flag):
- `n_learners` M=3; `n_shared_experts` 2, `n_task_experts` 2, `n_learner_experts` 1;
  experts are ReLU MLPs (`expert_dims`) on the flat embeddings; the scenario id is
  an ordinary field, as in MMoE.
- each learner has its own softmax gate over [shared; its task's; its own] experts
  (one Linear, `gate_bias`) and its own tower; learners differ by their parameters'
  initialisation only (no per-learner input or dropout).
- `ensemble`: the task prediction is the mean of the learners' probabilities
  ("prob", returned as its log-odds) or of their logits ("logit"); the same
  ensemble is the distillation teacher (the teacher is not a separate head).
- `kd_loss`: the distillation divergence, BCE against the soft target ("bce") or
  squared error between probabilities ("mse"); `kd_temperature` τ divides every
  learner logit on both sides and the loss is scaled by τ² (Hinton et al. 2015).
  The teacher target is always detached (sg): distillation moves the students only.
- distillation is applied on every row, labelled or not (it needs no label);
  per-learner BCE (`learner_loss_weight`) uses the label mask.
- `esmm`: optional entire-space product per learner, conversion = σ(z_click)·σ(z_cvr),
  so the conversion learner's own tower estimates pCVR; off by default because
  msmt's "conversion" label already lives on the impression space.

Deviations: the trainer's BCE supervises the ensemble output on top of the paper's
per-learner BCE (both are kept; set `learner_loss_weight=0` for ensemble-only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.data import FeatureSpec
from training.layers import FeatureEmbedding, ParallelMLP
from training.models.base import ModelConfig, MsmtModel

_ENSEMBLES = ("prob", "logit")
_KD_LOSSES = ("bce", "mse")


@dataclass
class TamlConfig(ModelConfig):
    n_learners: int = 3  # M per task [R]
    n_shared_experts: int = 2  # n_s [R]
    n_task_experts: int = 2  # n_t per task [R]
    n_learner_experts: int = 1  # n_l per learner [R]
    expert_dims: tuple[int, ...] = (128, 64)  # hidden widths of every expert; D = last
    tower_dims: tuple[int, ...] = (32,)  # hidden widths of each learner tower, then Linear → 1
    gate_bias: bool = False  # g = softmax(W x), as in MMoE
    ensemble: str = "prob"  # "prob" | "logit": how the M learners are averaged (prediction and teacher) [R]
    learner_loss_weight: float = 1.0  # weight of Σ_{t,l} BCE(z_{t,l}, y_t) [R]
    kd_weight: float = 0.5  # λ_kd [R]
    kd_loss: str = "bce"  # "bce" | "mse" [R]
    kd_temperature: float = 1.0  # τ [R]
    esmm: bool = False  # conversion learner l = σ(z_click,l)·σ(z_cvr,l) [R]

    def __post_init__(self) -> None:
        super().__post_init__()
        self.expert_dims, self.tower_dims = tuple(self.expert_dims), tuple(self.tower_dims)
        counts = (self.n_learners, self.n_shared_experts + self.n_task_experts + self.n_learner_experts)
        if self.n_learners < 1 or min(self.n_shared_experts, self.n_task_experts, self.n_learner_experts) < 0:
            raise ValueError(f"need n_learners >= 1 and expert counts >= 0, got {counts}")
        if counts[1] < 1:
            raise ValueError("every learner needs at least one expert")
        if not self.expert_dims or any(d < 1 for d in self.expert_dims + self.tower_dims):
            raise ValueError(f"bad widths: experts {self.expert_dims}, towers {self.tower_dims}")
        if self.ensemble not in _ENSEMBLES or self.kd_loss not in _KD_LOSSES:
            raise ValueError(f"ensemble must be one of {_ENSEMBLES}, kd_loss one of {_KD_LOSSES}")
        if self.kd_temperature <= 0 or self.kd_weight < 0 or self.learner_loss_weight < 0:
            raise ValueError("kd_temperature must be > 0, kd_weight and learner_loss_weight >= 0")


def taml_ensemble(learner_logits: torch.Tensor, how: str) -> torch.Tensor:
    """Learner logits `(B, T, M)` → ensemble logits `(B, T)`.

    "prob": log-odds of mean_l σ(z_l), computed stably as
    logsumexp_l log σ(z_l) − logsumexp_l log σ(−z_l) (the 1/M cancels).
    """
    if how == "logit":
        return learner_logits.mean(-1)  # (B, T)
    log_p = F.logsigmoid(learner_logits).logsumexp(-1)  # (B, T)
    log_q = F.logsigmoid(-learner_logits).logsumexp(-1)  # (B, T)
    return log_p - log_q  # (B, T)


def taml_distillation(learner_logits: torch.Tensor, how: str, kind: str, temperature: float) -> torch.Tensor:
    """Σ_{t,l} mean_b D(σ(z_{t,l}/τ), sg(p_t^τ)) · τ², the ensemble teaching each learner.

    learner_logits `(B, T, M)`; the teacher p_t^τ is the `how` ensemble of the
    tempered learners and is detached, so no gradient flows into it.
    """
    tempered = learner_logits / temperature  # (B, T, M)
    teacher = torch.sigmoid(taml_ensemble(tempered, how)).detach().unsqueeze(-1)  # (B, T, 1)
    if kind == "bce":
        loss = F.binary_cross_entropy_with_logits(tempered, teacher.expand_as(tempered), reduction="none")
    else:
        loss = (torch.sigmoid(tempered) - teacher).square()  # (B, T, M)
    return loss.mean(0).sum() * temperature**2


class TamlGates(nn.Module):
    """One softmax gate per (task, learner) over its G experts, all computed by one Linear."""

    def __init__(self, d_in: int, n_tasks: int, n_learners: int, n_experts: int, bias: bool) -> None:
        super().__init__()
        self.shape = (n_tasks, n_learners, n_experts)
        self.linear = nn.Linear(d_in, n_tasks * n_learners * n_experts, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x `(B, d_in)` → gate weights `(B, T, M, G)`, each row summing to 1."""
        return self.linear(x).view(-1, *self.shape).softmax(-1)  # (B, T, M, G)


class TamlExtractor(nn.Module):
    """Multi-level experts: shared, per task and per learner, stacked per learner as `(B, T, M, G, D)`."""

    def __init__(self, d_in: int, n_tasks: int, config: TamlConfig) -> None:
        super().__init__()
        self.n_tasks, self.n_learners = n_tasks, config.n_learners
        self.n_s, self.n_t, self.n_l = config.n_shared_experts, config.n_task_experts, config.n_learner_experts
        dims, drop, norm = [d_in, *config.expert_dims], config.dropout, config.norm
        self.shared = ParallelMLP(self.n_s, dims, dropout=drop, norm=norm) if self.n_s else None
        self.task = ParallelMLP(n_tasks * self.n_t, dims, dropout=drop, norm=norm) if self.n_t else None
        self.learner = (
            ParallelMLP(n_tasks * self.n_learners * self.n_l, dims, dropout=drop, norm=norm) if self.n_l else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x `(B, d_in)` → every learner's expert pool `(B, T, M, G, D)`."""
        B, T, M = x.shape[0], self.n_tasks, self.n_learners
        pools = []
        if self.shared is not None:
            shared = self.shared(x)  # (B, n_s, D)
            pools.append(shared[:, None, None].expand(B, T, M, self.n_s, -1))  # (B, T, M, n_s, D)
        if self.task is not None:
            task = self.task(x).view(B, T, 1, self.n_t, -1)  # (B, T, 1, n_t, D)
            pools.append(task.expand(B, T, M, self.n_t, -1))  # (B, T, M, n_t, D)
        if self.learner is not None:
            pools.append(self.learner(x).view(B, T, M, self.n_l, -1))  # (B, T, M, n_l, D)
        return torch.cat(pools, dim=3)  # (B, T, M, G, D)


class Taml(MsmtModel):
    """Embeddings → multi-level experts → T·M gated learners → per-task ensemble.

    `forward` returns the ensemble logits; `extra_losses` adds the per-learner BCE
    and the multi-learner distillation.

    Example::

        model = Taml(spec, TamlConfig(n_learners=3))
        logits = model(batch)  # (B, T)
        losses = model.extra_losses(batch, logits)  # {"learner_bce", "distillation"}
    """

    Config = TamlConfig

    def __init__(self, spec: FeatureSpec, config: TamlConfig) -> None:
        super().__init__(spec, config)
        if config.esmm and not {"click", "conversion"} <= set(spec.tasks):
            raise ValueError(f"esmm needs tasks 'click' and 'conversion', got {spec.tasks}")
        self.embedding = FeatureEmbedding(spec, config.emb_dim)
        d_in, M = self.embedding.out_dim, config.n_learners
        n_gate = config.n_shared_experts + config.n_task_experts + config.n_learner_experts
        self.extractor = TamlExtractor(d_in, self.n_tasks, config)
        self.gates = TamlGates(d_in, self.n_tasks, M, n_gate, config.gate_bias)
        tower_dims = [config.expert_dims[-1], *config.tower_dims, 1]
        self.towers = ParallelMLP(
            self.n_tasks * M, tower_dims, dropout=config.dropout, activate_last=False, norm=config.norm
        )
        self._last: torch.Tensor | None = None  # learner logits of the latest training forward

    def learner_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch → every learner's logit `(B, T, M)` (with `esmm`, conversion learners give pCTCVR)."""
        x = self.embedding.flat(batch)  # (B, F*k)
        pools = self.extractor(x)  # (B, T, M, G, D)
        gates = self.gates(x)  # (B, T, M, G)
        mixed = torch.einsum("btmg,btmgd->btmd", gates, pools)  # (B, T, M, D)
        z = self.towers(mixed.flatten(1, 2)).view(-1, self.n_tasks, self.config.n_learners)  # (B, T, M)
        if self.config.esmm:
            click, conv = self.spec.tasks.index("click"), self.spec.tasks.index("conversion")
            log_p = F.logsigmoid(z[:, click]) + F.logsigmoid(z[:, conv])  # (B, M): log pCTR·pCVR
            log_q = torch.log(-torch.expm1(log_p).clamp(max=-1e-7))  # (B, M): log(1 − pCTCVR)
            z = torch.cat([z[:, :conv], (log_p - log_q).unsqueeze(1), z[:, conv + 1 :]], dim=1)  # (B, T, M)
        return z

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch (see `TensorData.batches`) → ensemble logits `(B, T)`."""
        z = self.learner_logits(batch)  # (B, T, M)
        logits = taml_ensemble(z, self.config.ensemble)  # (B, T)
        self._last = z if self.training and torch.is_grad_enabled() else None  # for this step's extra_losses
        return logits

    def extra_losses(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"learner_bce": w·Σ_{t,l} masked BCE(z_{t,l}, y_t), "distillation": λ_kd·Σ_{t,l} D(z_{t,l}, sg(p_t))}.

        Reuses the learner logits of the latest training forward (the trainer calls this
        right after it, on the same batch) and drops them; without one, recomputes them.
        """
        cached, self._last = self._last, None
        if cached is None or cached.shape[0] != logits.shape[0]:
            cached = self.learner_logits(batch)
        z = cached.float()  # (B, T, M); float even when the forward ran under autocast
        cfg, losses = self.config, {}
        if cfg.learner_loss_weight > 0:
            labels = batch["labels"].unsqueeze(-1).expand_as(z)  # (B, T, M)
            mask = batch["label_mask"].unsqueeze(-1).expand_as(z)  # (B, T, M)
            bce = F.binary_cross_entropy_with_logits(z, labels, reduction="none")  # (B, T, M)
            bce = torch.where(mask, bce, torch.zeros_like(bce)).sum(0) / mask.sum(0).clamp(min=1)  # (T, M)
            losses["learner_bce"] = cfg.learner_loss_weight * bce.sum()
        if cfg.kd_weight > 0:
            kd = taml_distillation(z, cfg.ensemble, cfg.kd_loss, cfg.kd_temperature)
            losses["distillation"] = cfg.kd_weight * kd
        return losses


MODEL = Taml
DESCRIPTION = "TAML (Huawei, WWW'23 comp.): shared/task/learner experts, M learners per task, ensemble distillation"

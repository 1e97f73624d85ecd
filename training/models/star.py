"""STAR: Star Topology Adaptive Recommender, all in this file.

Reference: X.-R. Sheng, L. Zhao, G. Zhou, X. Ding, B. Dai, Q. Luo, S. Yang, J. Lv,
C. Zhang, H. Deng, X. Zhu, "One Model to Serve All: Star Topology Adaptive
Recommender for Multi-Domain CTR Prediction", CIKM 2021 (arXiv 2101.11427,
https://doi.org/10.1145/3459637.3481941). No official code is public; MODELS.md §7
cross-checks the public re-implementations (their pitfalls avoided here: PN over
the whole batch instead of per scenario, a ReLU on the output layer).

    PN:   z' = (γ ⊙ γ_p) ⊙ (z − μ_p) / √(σ²_p + ε) + (β + β_p)     (μ_p, σ²_p: scenario p's statistics)
    FCN:  h ← ReLU((W_p ⊙ W) h + b_p + b)                            per layer, scenario p of the row
    out:  z_t = main_t(x) + aux_t(e_scenario ⊕ context fields)       before the sigmoid

Notation: B batch, F fields, k embedding dim, S scenarios, T tasks, D layer width.

Partitioned Normalization (paper): in training each scenario's rows are
normalised with that scenario's own batch mean / variance, and every scenario
keeps its own running mean / variance; at inference a row uses its scenario's
running statistics. Statistics are computed with a one-hot `(B, S)` matmul, so a
mixed batch costs one matmul and no host sync (the paper samples one domain per
batch; computing per-scenario statistics inside a mixed batch is the same
normalisation for every row).

Resolutions (not fixed by the paper, each a config flag):
- `task_heads` (multi-task extension; STAR is single-task CTR): the star FCN is the
  shared trunk; "star" (default) puts one star-topology linear head per task on it
  (effective head of task t in scenario p = W_p[:, t] ⊙ W[:, t]), "shared" one plain
  linear head per task, the same in every scenario. The auxiliary network outputs
  one logit per task, added to that task's main logit.
- `pn_hidden`: PN only on the FCN input as in the paper's figure (default False),
  or also after every hidden star layer (Linear → PN → ReLU).
- `pn_momentum` / `pn_eps`: BatchNorm's 0.1 / 1e-5. Running variances use the
  unbiased batch variance (as BatchNorm); a scenario with one row in a batch updates
  its running mean but not its variance, one with none keeps both.
- `specific_init_std`: W_p = 1 + std·N(0, 1), b_p = 0, so at std 0 (default) every
  scenario starts as the shared FCN; W and b use nn.Linear's default init.
- `aux_fields`: the auxiliary network's input, the scenario id plus context fields
  "depicting the domain" (paper); the defaults absent from the spec are skipped, the
  scenario field is required. `aux_dims`: its hidden widths (one ReLU layer of 32).
- `scenario_in_main`: whether the scenario id's embedding also feeds the main FCN
  (default False: it is constant within a scenario, so PN maps it to 0 anyway).

Deviations: the star layer evaluates all S effective weights and keeps each row's
(S× the FLOPs of one FCN, no per-row weight gather); fine for a handful of scenarios.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from training.data import FeatureSpec
from training.layers import MLP, FeatureEmbedding
from training.models.base import ModelConfig, MsmtModel

_TASK_HEADS = ("star", "shared")


@dataclass
class StarConfig(ModelConfig):
    star_dims: tuple[int, ...] = (256, 128)  # hidden widths of the star-topology FCN; D = last
    task_heads: str = "star"  # [R] "star": per-task star head; "shared": per-task plain linear head
    pn_hidden: bool = False  # [R] PN also after each hidden star layer (paper: input only)
    pn_momentum: float = 0.1  # [R] running-statistics momentum, as BatchNorm
    pn_eps: float = 1e-5
    specific_init_std: float = 0.0  # [R] W_p = 1 + std·N(0, 1): at 0 each scenario starts as the shared FCN
    aux_fields: tuple[str, ...] = ("scenario_id", "position", "device", "hour")  # [R] absent ones skipped
    aux_dims: tuple[int, ...] = (32,)  # [R] hidden widths of the auxiliary network, then Linear → T
    scenario_in_main: bool = False  # [R] scenario id's embedding also in the main FCN input

    def __post_init__(self) -> None:
        super().__post_init__()
        self.star_dims, self.aux_dims, self.aux_fields = (
            tuple(self.star_dims),
            tuple(self.aux_dims),
            tuple(self.aux_fields),
        )
        if not self.star_dims or any(d < 1 for d in self.star_dims + self.aux_dims):
            raise ValueError(f"bad widths: star {self.star_dims}, aux {self.aux_dims}")
        if self.task_heads not in _TASK_HEADS:
            raise ValueError(f"task_heads must be one of {_TASK_HEADS}, got {self.task_heads!r}")
        if not 0.0 < self.pn_momentum <= 1.0 or self.pn_eps <= 0:
            raise ValueError(f"need 0 < pn_momentum <= 1 and pn_eps > 0, got {self.pn_momentum}, {self.pn_eps}")
        if self.specific_init_std < 0:
            raise ValueError(f"specific_init_std must be >= 0, got {self.specific_init_std}")


class StarPartitionedNorm(nn.Module):
    """Partitioned Normalization: BatchNorm with per-scenario statistics and (γ·γ_p, β+β_p).

    Statistics and the affine map are computed in float32 (the buffers' dtype), autocast off.
    Under DDP each rank normalises with its own rows' statistics (as BatchNorm without SyncBatchNorm).
    """

    def __init__(self, dim: int, n_scenarios: int, momentum: float, eps: float) -> None:
        super().__init__()
        self.n_scenarios, self.momentum, self.eps = n_scenarios, momentum, eps
        self.gamma = nn.Parameter(torch.ones(dim))  # shared γ
        self.beta = nn.Parameter(torch.zeros(dim))  # shared β
        self.scenario_gamma = nn.Parameter(torch.ones(n_scenarios, dim))  # γ_p
        self.scenario_beta = nn.Parameter(torch.zeros(n_scenarios, dim))  # β_p
        self.register_buffer("running_mean", torch.zeros(n_scenarios, dim))  # (S, D)
        self.register_buffer("running_var", torch.ones(n_scenarios, dim))  # (S, D)

    def forward(self, x: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        """x `(B, D)`, scenario `(B,)` in 0..S-1 → normalised `(B, D)`."""
        with torch.autocast(x.device.type, enabled=False):  # statistics in float32 even under bf16 autocast
            return self._normalise(x.float(), scenario).to(x.dtype)

    def _normalise(self, z: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        """float32 z `(B, D)` → (γ ⊙ γ_p) ⊙ ẑ + (β + β_p) `(B, D)`; batch statistics in training."""
        if self.training:
            onehot = F.one_hot(scenario, self.n_scenarios).to(z.dtype)  # (B, S)
            counts = onehot.sum(0)  # (S,)
            per_row = counts.clamp(min=1).unsqueeze(1)  # (S, 1)
            mean = onehot.t() @ z / per_row  # (S, D), each scenario's own rows only
            centered = z - mean[scenario]  # (B, D)
            var = onehot.t() @ centered.square() / per_row  # (S, D), biased, as BatchNorm normalises
            self._update_running(mean.detach(), var.detach(), counts)
        else:
            centered = z - self.running_mean[scenario]  # (B, D)
            var = self.running_var
        z_hat = centered * torch.rsqrt(var[scenario] + self.eps)  # (B, D)
        scale = self.gamma * self.scenario_gamma[scenario]  # (B, D)
        shift = self.beta + self.scenario_beta[scenario]  # (B, D)
        return scale * z_hat + shift  # (B, D)

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, counts: torch.Tensor) -> None:
        """Move each present scenario's running statistics towards its batch statistics."""
        m = self.momentum
        seen = (counts > 0).unsqueeze(1)  # (S, 1)
        self.running_mean.copy_(torch.where(seen, (1 - m) * self.running_mean + m * mean, self.running_mean))
        unbiased = var * (counts / (counts - 1).clamp(min=1)).unsqueeze(1)  # (S, D)
        has_var = (counts > 1).unsqueeze(1)  # (S, 1)
        self.running_var.copy_(torch.where(has_var, (1 - m) * self.running_var + m * unbiased, self.running_var))


class StarLinear(nn.Module):
    """Star-topology fully connected layer: scenario p uses W_p ⊙ W and b_p + b."""

    def __init__(self, d_in: int, d_out: int, n_scenarios: int, specific_init_std: float) -> None:
        super().__init__()
        bound = 1 / math.sqrt(d_in)  # nn.Linear's default init for the shared part
        self.shared_weight = nn.Parameter(torch.empty(d_in, d_out).uniform_(-bound, bound))  # W
        self.shared_bias = nn.Parameter(torch.empty(d_out).uniform_(-bound, bound))  # b
        specific = torch.ones(n_scenarios, d_in, d_out)
        if specific_init_std > 0:
            specific += specific_init_std * torch.randn_like(specific)
        self.weight = nn.Parameter(specific)  # W_p, (S, d_in, d_out)
        self.bias = nn.Parameter(torch.zeros(n_scenarios, d_out))  # b_p, (S, d_out)

    def effective(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every scenario's weight `(S, d_in, d_out)` = W_p ⊙ W and bias `(S, d_out)` = b_p + b."""
        return self.weight * self.shared_weight, self.bias + self.shared_bias

    def forward(self, x: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        """x `(B, d_in)`, scenario `(B,)` → `(B, d_out)`, each row through its scenario's layer."""
        weight, bias = self.effective()  # (S, d_in, d_out), (S, d_out)
        every = torch.einsum("bi,sio->bso", x, weight)  # (B, S, d_out)
        rows = torch.arange(x.shape[0], device=x.device)  # (B,)
        return every[rows, scenario] + bias[scenario]  # (B, d_out)


class Star(MsmtModel):
    """Embeddings → PN → star-topology FCN → per-task heads, plus the auxiliary network's logits.

    Example::

        model = Star(spec, StarConfig(star_dims=(128, 64)))
        logits = model(batch)  # (B, T)
    """

    Config = StarConfig

    def __init__(self, spec: FeatureSpec, config: StarConfig) -> None:
        super().__init__(spec, config)
        if spec.scenario_field not in spec.sparse_fields:
            raise ValueError(f"STAR needs the scenario field {spec.scenario_field!r} among the sparse fields")
        if spec.scenario_field not in config.aux_fields:
            raise ValueError(f"aux_fields must contain the scenario field {spec.scenario_field!r}")
        S, k = spec.n_scenarios, config.emb_dim
        self.embedding = FeatureEmbedding(spec, k)
        scenario_index = spec.sparse_fields.index(spec.scenario_field)
        main = [i for i in range(self.embedding.n_fields) if config.scenario_in_main or i != scenario_index]
        aux = [spec.sparse_fields.index(name) for name in config.aux_fields if name in spec.sparse_fields]
        self.register_buffer("main_index", torch.tensor(main), persistent=False)
        self.register_buffer("aux_index", torch.tensor(aux), persistent=False)

        dims = [len(main) * k, *config.star_dims]
        self.input_norm = StarPartitionedNorm(dims[0], S, config.pn_momentum, config.pn_eps)
        self.layers = nn.ModuleList(
            StarLinear(d_in, d_out, S, config.specific_init_std) for d_in, d_out in pairwise(dims)
        )
        self.hidden_norms = nn.ModuleList(
            StarPartitionedNorm(d, S, config.pn_momentum, config.pn_eps) for d in (dims[1:] if config.pn_hidden else [])
        )
        self.dropout = nn.Dropout(config.dropout)
        if config.task_heads == "star":
            self.head: nn.Module = StarLinear(dims[-1], self.n_tasks, S, config.specific_init_std)
        else:
            self.head = nn.Linear(dims[-1], self.n_tasks)
        self.aux = MLP(
            [len(aux) * k, *config.aux_dims, self.n_tasks],
            dropout=config.dropout,
            activate_last=False,
            norm=config.norm,
        )

    def main_logits(self, fields: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        """Field embeddings `(B, F, k)` → the star network's logits `(B, T)`."""
        h = self.input_norm(fields[:, self.main_index].flatten(1), scenario)  # (B, F_main*k)
        for i, layer in enumerate(self.layers):
            h = layer(h, scenario)  # (B, D)
            if self.hidden_norms:
                h = self.hidden_norms[i](h, scenario)  # (B, D)
            h = self.dropout(F.relu(h))  # (B, D)
        return self.head(h, scenario) if isinstance(self.head, StarLinear) else self.head(h)  # (B, T)

    def aux_logits(self, fields: torch.Tensor) -> torch.Tensor:
        """Field embeddings `(B, F, k)` → the auxiliary network's logits `(B, T)`."""
        return self.aux(fields[:, self.aux_index].flatten(1))  # (B, F_aux*k) → (B, T)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch (see `TensorData.batches`) → logits `(B, T)` = main + auxiliary."""
        fields = self.embedding(batch)  # (B, F, k)
        return self.main_logits(fields, batch["scenario"]) + self.aux_logits(fields)  # (B, T)


MODEL = Star
DESCRIPTION = "STAR (Sheng et al., CIKM 2021): partitioned norm + star-topology FCN (W_p ⊙ W) + auxiliary net"

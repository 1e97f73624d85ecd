"""DFFM: Domain Facilitated Feature Modeling, all in this file.

Reference: Huawei Noah's Ark, "DFFM: Domain Facilitated Feature Modeling for CTR
Prediction", CIKM 2023 (DOI not retrieved; method text not public, see MODELS.md §6).
Idea [P]: the domain (scenario) is injected into the *parameters* of the feature-interaction module
(DFFI) and of the user-behaviour module (DFUB) of a single-tower CTR model.

    DFFI:  W_ij = hyper_ij(e_d),  u_ij = (e_i W_ij) ⊙ e_j   for the field pairs (i, j)
    DFUB:  g = W_td [e_t; e_d] → (H, k);  Q, K, V = (E_h W_{Q,K,V}) ⊙ g per head;
           O = W_out softmax(QKᵀ/√k + mask) V;  b = Σ_l softmax_l(O_l · e_t / √k) O_l
    logit_t = tower_t(MLP([flat(e); u_ij…; b]))

Notation: B batch, F fields, k embedding dim, P field pairs, r kernel rank,
L behaviour length, H heads, S scenarios (domains), T tasks.

Resolutions (MODELS.md §6 [R]; each a config flag):
- DFFI kernel: `W_ij = diag(d_ij) + U_ij V_ijᵀ` with rank `dffi_rank` r = 4 and the
  diagonal switched by `dffi_diagonal`; all kernels come from one shared hyper-MLP
  on e_d (`dffi_hyper_dims`) whose last Linear has one output head per pair.
  `dffi_pairs` restricts the pairs (indices into the F fields of `FeatureEmbedding`:
  sparse fields, then the dense projection, then the mean behaviour); () = all pairs.
- e_d, the domain embedding: a dedicated table over the scenario id, mean-pooled with
  the embeddings of the sparse `domain_fields` (domain-side features; none by default).
- DFUB: `dfub_heads` H = 2 heads of width k; padded positions (id 0) are masked as
  keys and dropped from the pooling; `dfub_pooling` "target" attends the outputs with
  the target item e_t (the `spec.seq_vocab_field` embedding), "mean" averages them.
  A row without any behaviour gets b = 0. Without a sequence in the spec DFUB is off.
- MSMT head: a shared ReLU MLP (`mlp_dims`) on the concatenation, then one tower
  per task (`tower_dims`); the paper is single-task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import torch
from torch import nn

from training.data import FeatureSpec
from training.layers import MLP, FeatureEmbedding, ParallelMLP
from training.models.base import ModelConfig, MsmtModel

_POOLINGS = ("target", "mean")


@dataclass
class DffmConfig(ModelConfig):
    dffi_rank: int = 4  # r of the low-rank part of each W_ij [R]
    dffi_diagonal: bool = True  # add diag(d_ij) to W_ij [R]
    dffi_hyper_dims: tuple[int, ...] = (64,)  # shared hyper-MLP on e_d before the per-pair heads [R]
    dffi_pairs: tuple[tuple[int, int], ...] = ()  # field-index pairs; () = all F(F-1)/2 [R]
    domain_fields: tuple[str, ...] = ()  # sparse fields pooled into e_d besides the scenario id [R]
    dfub_heads: int = 2  # H [R]
    dfub_pooling: str = "target"  # "target" | "mean" [R]
    mlp_dims: tuple[int, ...] = (256, 128)  # shared MLP on [flat(e); DFFI; DFUB]
    tower_dims: tuple[int, ...] = (64,)  # hidden widths of each task tower, then Linear → 1 [R]

    def __post_init__(self) -> None:
        super().__post_init__()
        self.dffi_hyper_dims, self.mlp_dims, self.tower_dims = (
            tuple(self.dffi_hyper_dims), tuple(self.mlp_dims), tuple(self.tower_dims)
        )  # fmt: skip
        self.dffi_pairs = tuple((int(i), int(j)) for i, j in self.dffi_pairs)
        self.domain_fields = tuple(self.domain_fields)
        if self.dffi_rank < 0 or (self.dffi_rank == 0 and not self.dffi_diagonal):
            raise ValueError(f"W_ij needs a diagonal or a rank >= 1, got rank {self.dffi_rank}")
        if not self.mlp_dims or any(d < 1 for d in self.dffi_hyper_dims + self.mlp_dims + self.tower_dims):
            raise ValueError(f"bad widths: hyper {self.dffi_hyper_dims}, mlp {self.mlp_dims}, towers {self.tower_dims}")
        if self.dfub_heads < 1 or self.dfub_pooling not in _POOLINGS:
            raise ValueError(f"need dfub_heads >= 1 and dfub_pooling in {_POOLINGS}")


class DffmInteraction(nn.Module):
    """DFFI: pairwise interactions whose kernels W_ij are generated from the domain embedding."""

    def __init__(self, n_fields: int, k: int, config: DffmConfig) -> None:
        super().__init__()
        pairs = config.dffi_pairs or tuple(combinations(range(n_fields), 2))
        if any(not (0 <= i < n_fields and 0 <= j < n_fields) or i == j for i, j in pairs):
            raise ValueError(f"dffi_pairs must be distinct field indices in 0..{n_fields - 1}, got {pairs}")
        self.register_buffer("left", torch.tensor([i for i, _ in pairs], dtype=torch.long), persistent=False)
        self.register_buffer("right", torch.tensor([j for _, j in pairs], dtype=torch.long), persistent=False)
        self.k, self.rank, self.diagonal, self.n_pairs = k, config.dffi_rank, config.dffi_diagonal, len(pairs)
        self.per_pair = k * self.diagonal + 2 * k * self.rank  # generated numbers per W_ij
        self.hyper = MLP([k, *config.dffi_hyper_dims]) if config.dffi_hyper_dims else nn.Identity()
        hidden = config.dffi_hyper_dims[-1] if config.dffi_hyper_dims else k
        self.heads = nn.Linear(hidden, self.n_pairs * self.per_pair)
        self.out_dim = self.n_pairs * k

    def kernels(self, e_d: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """e_d `(B, k)` → diag `(B, P, k)`, U `(B, P, k, r)`, V `(B, P, k, r)` (None when switched off)."""
        B, P, k, r = e_d.shape[0], self.n_pairs, self.k, self.rank
        raw = self.heads(self.hyper(e_d)).view(B, P, self.per_pair)  # (B, P, k·diag + 2kr)
        diag = raw[..., :k] if self.diagonal else None  # (B, P, k)
        low = raw[..., k * self.diagonal :]  # (B, P, 2kr)
        u = low[..., : k * r].reshape(B, P, k, r) if r else None  # (B, P, k, r)
        v = low[..., k * r :].reshape(B, P, k, r) if r else None  # (B, P, k, r)
        return diag, u, v

    def forward(self, e: torch.Tensor, e_d: torch.Tensor) -> torch.Tensor:
        """e `(B, F, k)`, e_d `(B, k)` → concatenated u_ij `(B, P*k)`."""
        e_i, e_j = e[:, self.left], e[:, self.right]  # (B, P, k) each
        diag, u, v = self.kernels(e_d)
        projected = torch.zeros_like(e_i)  # (B, P, k): e_i W_ij
        if diag is not None:
            projected = projected + e_i * diag  # (B, P, k)
        if u is not None:
            low = torch.einsum("bpk,bpkr->bpr", e_i, u)  # (B, P, r)
            projected = projected + torch.einsum("bpr,bpkr->bpk", low, v)  # (B, P, k)
        return (projected * e_j).flatten(1)  # (B, P*k)


class DffmBehaviour(nn.Module):
    """DFUB: multi-head self-attention over the behaviours, modulated by [target item; domain], then pooled."""

    def __init__(self, k: int, heads: int, pooling: str) -> None:
        super().__init__()
        self.k, self.heads, self.pooling = k, heads, pooling
        self.modulation = nn.Linear(2 * k, heads * k)  # W_td
        self.query = nn.Linear(k, heads * k, bias=False)
        self.key = nn.Linear(k, heads * k, bias=False)
        self.value = nn.Linear(k, heads * k, bias=False)
        self.out = nn.Linear(heads * k, k)

    def forward(self, e_h: torch.Tensor, mask: torch.Tensor, e_t: torch.Tensor, e_d: torch.Tensor) -> torch.Tensor:
        """e_h `(B, L, k)`, mask `(B, L)` True = real behaviour, e_t / e_d `(B, k)` → `(B, k)`."""
        B, L, k = e_h.shape
        H = self.heads
        g = self.modulation(torch.cat([e_t, e_d], dim=-1)).view(B, 1, H, k)  # (B, 1, H, k)
        q = (self.query(e_h).view(B, L, H, k) * g).transpose(1, 2)  # (B, H, L, k)
        kk = (self.key(e_h).view(B, L, H, k) * g).transpose(1, 2)  # (B, H, L, k)
        v = (self.value(e_h).view(B, L, H, k) * g).transpose(1, 2)  # (B, H, L, k)
        scores = q @ kk.transpose(-1, -2) / math.sqrt(k)  # (B, H, L, L)
        attn = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min).softmax(
            -1
        )  # (B, H, L, L); padded keys get 0
        o = self.out((attn @ v).transpose(1, 2).reshape(B, L, H * k))  # (B, L, k)
        if self.pooling == "target":
            s = (o * e_t.unsqueeze(1)).sum(-1) / math.sqrt(k)  # (B, L)
            w = s.masked_fill(~mask, torch.finfo(s.dtype).min).softmax(-1)  # (B, L)
        else:
            w = mask / mask.sum(-1, keepdim=True).clamp(min=1)  # (B, L)
        w = w * mask  # (B, L): padded positions never pool, rows without behaviours pool to 0
        return torch.einsum("bl,blk->bk", w, o)  # (B, k)


class Dffm(MsmtModel):
    """Field embeddings + domain embedding → [flat(e); DFFI; DFUB] → shared MLP → T towers.

    Example::

        model = Dffm(spec, DffmConfig(dffi_rank=2))
        logits = model(batch)  # (B, T)
    """

    Config = DffmConfig

    def __init__(self, spec: FeatureSpec, config: DffmConfig) -> None:
        super().__init__(spec, config)
        unknown = set(config.domain_fields) - set(spec.sparse_fields)
        if unknown:
            raise ValueError(f"domain_fields {sorted(unknown)} are not sparse fields")
        k = config.emb_dim
        self.embedding = FeatureEmbedding(spec, k)
        self.register_buffer(
            "domain_index",
            torch.tensor([spec.sparse_fields.index(f) for f in config.domain_fields], dtype=torch.long),
            persistent=False,
        )
        self.domain = nn.Embedding(spec.n_scenarios, k)
        nn.init.normal_(self.domain.weight, std=0.01)  # like FeatureEmbedding's tables
        self.interaction = DffmInteraction(self.embedding.n_fields, k, config)
        self.use_seq = spec.seq_field is not None
        self.target_index = spec.sparse_fields.index(spec.seq_vocab_field) if self.use_seq else -1
        self.behaviour = DffmBehaviour(k, config.dfub_heads, config.dfub_pooling) if self.use_seq else None
        d_in = self.embedding.out_dim + self.interaction.out_dim + k * self.use_seq
        self.mlp = MLP([d_in, *config.mlp_dims], dropout=config.dropout, norm=config.norm)
        tower_dims = [config.mlp_dims[-1], *config.tower_dims, 1]
        self.towers = ParallelMLP(
            self.n_tasks, tower_dims, dropout=config.dropout, activate_last=False, norm=config.norm
        )

    def domain_embedding(self, batch: dict[str, torch.Tensor], e: torch.Tensor) -> torch.Tensor:
        """e_d `(B, k)`: the scenario's own vector mean-pooled with the `domain_fields` embeddings."""
        parts = torch.cat([self.domain(batch["scenario"]).unsqueeze(1), e[:, self.domain_index]], dim=1)  # (B, 1+n, k)
        return parts.mean(1)  # (B, k)

    def interaction_weights(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
        """The DFFI kernels for this batch: diag `(B, P, k)`, U and V `(B, P, k, r)`."""
        return self.interaction.kernels(self.domain_embedding(batch, self.embedding(batch)))

    def behaviour_vector(self, batch: dict[str, torch.Tensor], e: torch.Tensor, e_d: torch.Tensor) -> torch.Tensor:
        """DFUB output `(B, k)` over `batch["seq"]` (0 = padding) for the target item."""
        seq = batch["seq"]  # (B, L)
        e_h = self.embedding.table(seq + self.embedding.seq_offset)  # (B, L, k): the item table
        return self.behaviour(e_h, seq > 0, e[:, self.target_index], e_d)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch (see `TensorData.batches`) → logits `(B, T)`."""
        e = self.embedding(batch)  # (B, F, k)
        e_d = self.domain_embedding(batch, e)  # (B, k)
        parts = [e.flatten(1), self.interaction(e, e_d)]  # (B, F*k), (B, P*k)
        if self.behaviour is not None:
            parts.append(self.behaviour_vector(batch, e, e_d))  # (B, k)
        h = self.mlp(torch.cat(parts, dim=-1))  # (B, D)
        return self.towers(h).squeeze(-1)  # (B, T, 1) → (B, T)


MODEL = Dffm
DESCRIPTION = (
    "DFFM (Huawei, CIKM 2023): scenario-generated interaction kernels, scenario+target-conditioned behaviour attention"
)

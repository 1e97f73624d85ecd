"""OneRank: set-wise multi-task ranking of a request's candidates, all in this file.

Reference: OneRank (Shopee and Renmin University of China), KDD 2026,
arXiv:2606.16838 (https://arxiv.org/abs/2606.16838). No official code; the method
below follows the equation-level notes gathered in shared/reference/MODELS.md §3.

    per request: [user context] + for each candidate i the group [c_i, t_1, …, t_K]
    r_k^i = Encoder(...)[t_k^(i)]                       (structured mask, task-private channel)
    q_k = W_k s,   h_k = MHCA_k(q_k, {r_k^i}_{i=1..N})   (candidate-aware, per task)
    z = TaskInteraction(h)                               (K×K mask, off-diagonal K/V detached)
    logit_k^i = cos(z_k, r_k^i) / τ + b_k                (matching-based scoring)
    L = BCE (the trainer's) + λ_list · Σ_k InfoNCE_k over each request's candidates

Notation: B rows (candidates), R requests, N max candidates per request in the batch,
K tasks (= T), F fields, k embedding dim, d model width, H heads, L history length,
m anchors, C = 1 + L + m context tokens, G = 1 + K group tokens.

Batches and modes. A row is one (request, candidate). With `setwise=True` and a
"group" key (B,) in the batch (rows with equal group were shown together), forward
builds the [R, N] candidate layout itself (padded to the batch's largest request,
padding masked everywhere), so candidates of a request see each other through the
per-task cross-attention (and the anchors), and never see another request.
`batching = "request"` asks the trainer for batches of whole requests; scores depend
on the candidate set, so scoring must batch whole requests too (a request split
across two batches is scored as two smaller requests). POINTWISE mode (`setwise=False`, or
no "group" in the batch): every row is its own request of one candidate (N = 1),
so a row's score depends on that row alone and the listwise loss is empty; this is
the mode for data without requests, and it changes what the model computes (the
cross-attention then only sees the candidate itself). Rows with a negative group
(unknown request) are always their own request.

What the paper fixes and this file follows: task tokens per candidate built from
shared learnable templates e_k; the structured mask (context causal within itself,
candidate groups blind to each other, task tokens blind to each other, a task token
sees the context, its candidate token and itself); r_k^i read at the task token
(the "task-conditioned selection" of a task-private representation from shared
encoder weights); q_k = W_k s with task-specific weights; a task-specific multi-head
cross-attention over the request's candidates; self-attention over {h_k} under a
parallel / null / cascade / hybrid mask with cross-task gradient detachment (task k
reads h_j but its loss never reaches j's private path); matching score z_kᵀ r_k^i in
place of per-task towers; per-task listwise InfoNCE (multiple positives averaged)
plus pointwise BCE.

Resolutions (not paper text; each is a config flag or stated here):
- `context_fields`: sparse fields that describe the request (user, scenario, time,
  device); every other sparse field and the dense projection describe the candidate.
  Context tokens are the profile token (those fields and the mean history embedding,
  one Linear), the history items oldest → newest with learned recency positions, and
  `n_anchors` "preference anchors": the history items with the highest dot product
  (raw item embeddings) with the mean item embedding of the request's candidates.
- The request's context is read from its first row in the batch (rows of a request
  share user, scenario and history).
- The candidate token sees the context and itself; task tokens are the templates
  alone, attending to their candidate (`task_token_add_candidate=False`; True adds
  the candidate token to each task token).
- `d_model=128`, `n_layers=2`, `n_heads=8`, `ffn_mult=4`; layers do not share weights
  (weights are shared across candidates and tasks).
- Situational descriptor s = MLP(pool(context)) with `situation_pool` "mean" (masked
  mean of the encoded context) or "profile" (the encoded profile token).
- `cross_residual`: h_k = q_k + MHCA_k(…), so s still matters when N = 1.
- Task interaction default `interaction="cascade"` (task k sees tasks j ≤ k, in
  spec.tasks order); detachment is done on the interaction's input h: two K/V streams
  (live for the diagonal, from h.detach() off it), selected by an eye mask.
- `normalize_scores=True` scores with cosine(z_k, r_k^i) (False: the paper's raw dot
  product, which with τ = 0.1 starts at very large logits); `tau=0.1`; `score_bias`
  adds b_k for BCE; the bias cancels in the listwise softmax.
- `score_prior=(0.05, 0.005)`: b_k starts at logit(p_k), p_k = task k's base rate
  (msmt's click ≈ 5%, conversion ≈ 0.5% of impressions), so the first steps do not
  spend themselves pulling p from ≈ 0.5–0.8 down to the base rate; () starts b_k at 0.
  The cosine term adds a near-constant of its own at init (the candidates' r_k are
  still alike): about ±2 logits across seeds at d = 128, so the initial mean p is the
  base rate within a factor of a few, not exactly.
- Listwise loss: candidates whose label is masked for task k are left out of task k's
  softmax; requests with no positive are skipped; per task the mean over requests,
  summed over tasks, times `listwise_weight` (λ_list = 1). λ_pt is the trainer's BCE
  weight (1).

Deviations: the tasks are spec.tasks (here click and conversion, not the paper's
click / add-to-cart / order); candidate features enter as one token per candidate built from this
project's fields; no query text (the scenario id stands for the search/feed context);
the production size (up to 4,096 candidates per request) is only bounded by memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from training.data import FeatureSpec
from training.layers import MLP, FeatureEmbedding
from training.models.base import ModelConfig, MsmtModel

INTERACTIONS = ("parallel", "null", "cascade", "hybrid")


@dataclass
class OnerankConfig(ModelConfig):
    d_model: int = 128  # d  [R]
    n_layers: int = 2  # encoder blocks  [R] (2–4)
    n_heads: int = 8  # H, for every attention  [R]
    ffn_mult: int = 4  # FFN hidden width = ffn_mult · d  [R]
    context_fields: tuple[str, ...] = ("user_id", "scenario_id", "device", "hour", "user_segment")  # [R]
    n_anchors: int = 4  # m preference anchors (clipped to L; 0 = none)  [R]
    task_token_add_candidate: bool = False  # [R] paper ambiguous; default: attention only
    situation_pool: str = "mean"  # "mean" | "profile": what the descriptor s reads  [R]
    cross_residual: bool = True  # h_k = q_k + MHCA_k(q_k, r_k)  [R]
    interaction: str = "cascade"  # "parallel" | "null" | "cascade" | "hybrid"  [R default]
    hybrid_mask: tuple[tuple[int, ...], ...] = ()  # K×K, 1 = task row may read task column
    detach_cross_task: bool = True  # paper: off-diagonal keys/values are stop-gradient
    normalize_scores: bool = True  # cosine matching  [R]
    tau: float = 0.1  # score temperature  [R]
    score_bias: bool = True  # logit = s/τ + b_k  [R]
    score_prior: tuple[float, ...] = (0.05, 0.005)  # b_k init = logit(p_k), one per task; () = 0  [R]
    listwise_weight: float = 1.0  # λ_list; 0 = pointwise BCE only  [R]
    setwise: bool = True  # False: every row is its own request (pointwise mode)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.context_fields = tuple(self.context_fields)
        self.score_prior = tuple(float(p) for p in self.score_prior)
        if any(not 0.0 < p < 1.0 for p in self.score_prior):
            raise ValueError(f"score_prior values are probabilities in (0, 1), got {self.score_prior}")
        self.hybrid_mask = tuple(tuple(int(v) for v in row) for row in self.hybrid_mask)
        if min(self.d_model, self.n_layers, self.n_heads, self.ffn_mult) < 1 or self.d_model % self.n_heads:
            raise ValueError(
                f"need d_model, n_layers, n_heads, ffn_mult >= 1 and n_heads | d_model, got "
                f"{self.d_model}, {self.n_layers}, {self.n_heads}, {self.ffn_mult}"
            )
        if self.n_anchors < 0:
            raise ValueError(f"n_anchors must be >= 0, got {self.n_anchors}")
        if self.situation_pool not in ("mean", "profile"):
            raise ValueError(f"situation_pool must be 'mean' or 'profile', got {self.situation_pool!r}")
        if self.interaction not in INTERACTIONS:
            raise ValueError(f"interaction must be one of {INTERACTIONS}, got {self.interaction!r}")
        if (self.interaction == "hybrid") != bool(self.hybrid_mask):
            raise ValueError("hybrid_mask is required with interaction='hybrid' and only then")
        if self.tau <= 0 or self.listwise_weight < 0:
            raise ValueError(f"need tau > 0 and listwise_weight >= 0, got {self.tau}, {self.listwise_weight}")


def interaction_mask(kind: str, n_tasks: int, hybrid: tuple[tuple[int, ...], ...] = ()) -> torch.Tensor:
    """The K×K task-interaction mask (row = reading task, column = task read), Bool `(K, K)`."""
    eye = torch.eye(n_tasks, dtype=torch.bool)
    if kind == "parallel":
        return eye
    if kind == "null":
        return torch.ones(n_tasks, n_tasks, dtype=torch.bool)
    if kind == "cascade":
        return torch.ones(n_tasks, n_tasks, dtype=torch.bool).tril()
    mask = torch.tensor(hybrid, dtype=torch.bool) if hybrid else torch.zeros(0, dtype=torch.bool)
    if mask.shape != (n_tasks, n_tasks) or not mask.diagonal().all():
        raise ValueError(f"hybrid_mask must be {n_tasks}×{n_tasks} with a True diagonal, got {hybrid}")
    return mask


def request_layout(
    group: torch.Tensor | None, n_rows: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """Rows → padded requests: (req `(B,)`, pos `(B,)`, first `(R,)`, R, N).

    Row b sits at [req[b], pos[b]] of the [R, N] layout (rows keep their batch order
    inside a request); first[r] is the request's lowest row index. `group=None` is the
    pointwise layout (R = B, N = 1). Negative group ids are singleton requests.
    """
    rows = torch.arange(n_rows, device=device)  # (B,)
    if group is None or n_rows == 0:
        return rows, torch.zeros_like(rows), rows, n_rows, 1
    if group.shape != (n_rows,):
        raise ValueError(f"expected group (B,) = ({n_rows},), got {tuple(group.shape)}")
    group = torch.where(group < 0, group.max().clamp(min=0) + 1 + rows, group)  # (B,)
    order = torch.argsort(group, stable=True)  # (B,) rows grouped by request, in batch order inside
    ordered = group[order]  # (B,)
    first_of_request = torch.ones_like(ordered, dtype=torch.bool)  # (B,)
    first_of_request[1:] = ordered[1:] != ordered[:-1]
    req_sorted = first_of_request.cumsum(0) - 1  # (B,) request index (ascending id) of each ordered row
    req = torch.empty_like(req_sorted)
    req[order] = req_sorted  # (B,) in 0..R-1
    counts = torch.zeros_like(rows).index_add_(0, req, torch.ones_like(rows))  # (B,): R used, then zeros
    starts = counts.cumsum(0) - counts  # (B,)
    pos = torch.empty_like(req)
    pos[order] = rows - starts[req_sorted]  # (B,)
    n_req, n_cand = torch.stack([req_sorted[-1] + 1, counts.max()]).tolist()  # the layout's one host sync
    return req, pos, order[starts[:n_req]], n_req, n_cand


class OnerankContext(nn.Module):
    """User-context tokens of each request: profile, history (oldest → newest), anchors."""

    def __init__(self, d_ctx_in: int, emb_dim: int, d_model: int, seq_len: int, n_anchors: int) -> None:
        super().__init__()
        self.profile = nn.Linear(d_ctx_in, d_model)
        self.seq_len, self.n_anchors = seq_len, min(n_anchors, seq_len)
        if seq_len:
            self.item_proj = nn.Linear(emb_dim, d_model)  # history items and anchors
            self.recency = nn.Parameter(torch.randn(seq_len, d_model) * 0.02)  # 0 = newest
        if self.n_anchors:
            self.anchor_type = nn.Parameter(torch.randn(d_model) * 0.02)
        self.n_tokens = 1 + seq_len + self.n_anchors  # C

    def forward(
        self, ctx_fields: torch.Tensor, hist: torch.Tensor | None, hist_valid: torch.Tensor | None, probe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ctx_fields `(R, F_c, k)`, hist `(R, L, k)` newest first, hist_valid `(R, L)`,
        probe `(R, k)` (mean candidate item embedding) → tokens `(R, C, d)`, valid `(R, C)`."""
        profile = self.profile(ctx_fields.flatten(1)).unsqueeze(1)  # (R, 1, d)
        ones = torch.ones(profile.shape[0], 1, dtype=torch.bool, device=profile.device)  # (R, 1)
        if not self.seq_len:
            return profile, ones
        tokens = self.item_proj(hist) + self.recency  # (R, L, d)
        parts = [profile, tokens.flip(1)]  # oldest → newest, so causal = chronological
        valid = [ones, hist_valid.flip(1)]
        if self.n_anchors:
            sim = torch.einsum("rlk,rk->rl", hist, probe).masked_fill(~hist_valid, float("-inf"))  # (R, L)
            top, idx = sim.topk(self.n_anchors, dim=1)  # (R, m)
            parts.append(tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])) + self.anchor_type)
            valid.append(top.isfinite())  # padding picked only when < m valid items: masked
        return torch.cat(parts, 1), torch.cat(valid, 1)  # (R, C, d), (R, C)


class OnerankBlock(nn.Module):
    """Pre-LN Transformer block run on the context and the candidate groups under the structured mask.

    The context never attends to the groups, so the two streams share weights but the
    context stream is computed once per request; each group's queries read the keys of
    its request's context plus its own group's keys.
    """

    def __init__(self, d_model: int, n_heads: int, ffn_mult: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.ffn = MLP([d_model, ffn_mult * d_model, d_model], dropout, nn.GELU, activate_last=False)
        self.drop = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.n_heads, self.d_head)).transpose(1, 2)  # (·, S, d) → (·, H, S, dh)

    def forward(
        self, ctx: torch.Tensor, ctx_mask: torch.Tensor, grp: torch.Tensor, grp_mask: torch.Tensor, req: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ctx `(R, C, d)`, ctx_mask `(R, C, C)`, grp `(B, G, d)`, grp_mask `(B, G, C+G)`, req `(B,)` → ctx, grp."""
        qc, kc, vc = self.qkv(self.ln1(ctx)).chunk(3, dim=-1)  # (R, C, d) each
        qg, kg, vg = self.qkv(self.ln1(grp)).chunk(3, dim=-1)  # (B, G, d) each
        keys = torch.cat([kc[req], kg], dim=1)  # (B, C+G, d)
        values = torch.cat([vc[req], vg], dim=1)  # (B, C+G, d)
        ctx_att = F.scaled_dot_product_attention(
            self._heads(qc), self._heads(kc), self._heads(vc), attn_mask=ctx_mask.unsqueeze(1)
        )  # (R, H, C, dh)
        grp_att = F.scaled_dot_product_attention(
            self._heads(qg), self._heads(keys), self._heads(values), attn_mask=grp_mask.unsqueeze(1)
        )  # (B, H, G, dh)
        ctx = ctx + self.drop(self.out(ctx_att.transpose(1, 2).flatten(2)))  # (R, C, d)
        grp = grp + self.drop(self.out(grp_att.transpose(1, 2).flatten(2)))  # (B, G, d)
        ctx = ctx + self.drop(self.ffn(self.ln2(ctx)))  # (R, C, d)
        grp = grp + self.drop(self.ffn(self.ln2(grp)))  # (B, G, d)
        return ctx, grp


class OnerankEncoder(nn.Module):
    """L blocks over [context; c_i, t_1 … t_K] → encoded context and task representations r."""

    def __init__(self, config: OnerankConfig, n_tasks: int) -> None:
        super().__init__()
        d = config.d_model
        self.add_candidate = config.task_token_add_candidate
        self.templates = nn.Parameter(torch.randn(n_tasks, d) * 0.02)  # e_k, shared by every candidate
        self.blocks = nn.ModuleList(
            OnerankBlock(d, config.n_heads, config.ffn_mult, config.dropout) for _ in range(config.n_layers)
        )
        self.ln_f = nn.LayerNorm(d)
        group = torch.eye(1 + n_tasks, dtype=torch.bool)  # every token sees itself
        group[:, 0] = True  # every task token sees its candidate; the candidate sees only itself
        self.register_buffer("group_mask", group, persistent=False)  # (G, G)

    def forward(
        self, ctx: torch.Tensor, ctx_valid: torch.Tensor, cand: torch.Tensor, req: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ctx `(R, C, d)`, ctx_valid `(R, C)`, cand `(B, d)`, req `(B,)` → ctx `(R, C, d)`, r `(B, K, d)`."""
        n_rows, n_ctx = cand.shape[0], ctx.shape[1]
        tasks = self.templates.expand(n_rows, -1, -1)  # (B, K, d)
        if self.add_candidate:
            tasks = tasks + cand.unsqueeze(1)  # (B, K, d)
        grp = torch.cat([cand.unsqueeze(1), tasks], dim=1)  # (B, G, d)
        causal = torch.ones(n_ctx, n_ctx, dtype=torch.bool, device=ctx.device).tril()  # (C, C)
        ctx_mask = causal & ctx_valid.unsqueeze(1)  # (R, C, C); the profile (col 0) is always valid
        n_grp = grp.shape[1]
        grp_mask = torch.cat(
            [ctx_valid[req].unsqueeze(1).expand(-1, n_grp, -1), self.group_mask.expand(n_rows, -1, -1)], dim=2
        )  # (B, G, C+G)
        for block in self.blocks:
            ctx, grp = block(ctx, ctx_mask, grp, grp_mask, req)
        return self.ln_f(ctx), self.ln_f(grp[:, 1:])  # (R, C, d), (B, K, d)


def _per_task_linear(n_tasks: int, d_in: int, d_out: int) -> nn.Parameter:
    bound = 1 / math.sqrt(d_in)  # nn.Linear's default init, per task
    return nn.Parameter(torch.empty(n_tasks, d_in, d_out).uniform_(-bound, bound))


class OnerankTaskCrossAttention(nn.Module):
    """Per task k: q_k = W_k s, h_k = q_k + MHCA_k(q_k, {r_k^i}) over the request's candidates.

    Every parameter has a leading task axis K: slice k is task k's private path.
    """

    def __init__(self, d_model: int, n_heads: int, n_tasks: int, residual: bool) -> None:
        super().__init__()
        self.n_heads, self.d_head, self.residual = n_heads, d_model // n_heads, residual
        self.w_situation = _per_task_linear(n_tasks, d_model, d_model)  # W_k
        self.b_situation = nn.Parameter(torch.zeros(n_tasks, d_model))
        self.w_query = _per_task_linear(n_tasks, d_model, d_model)
        self.w_key = _per_task_linear(n_tasks, d_model, d_model)  # no key bias: softmax ignores it
        self.w_value = _per_task_linear(n_tasks, d_model, d_model)
        self.w_out = _per_task_linear(n_tasks, d_model, d_model)
        self.b_out = nn.Parameter(torch.zeros(n_tasks, d_model))

    def forward(self, s: torch.Tensor, r: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """s `(R, d)`, r `(R, N, K, d)` padded, valid `(R, N)` → h `(R, K, d)`."""
        q_task = torch.einsum("rd,kde->rke", s, self.w_situation) + self.b_situation  # (R, K, d)
        q = torch.einsum("rkd,kde->rke", q_task, self.w_query).unflatten(-1, (self.n_heads, self.d_head))  # (R,K,H,dh)
        k = torch.einsum("rnkd,kde->rnke", r, self.w_key).unflatten(-1, (self.n_heads, self.d_head))  # (R,N,K,H,dh)
        v = torch.einsum("rnkd,kde->rnke", r, self.w_value).unflatten(-1, (self.n_heads, self.d_head))  # (R,N,K,H,dh)
        scores = torch.einsum("rkhc,rnkhc->rkhn", q, k) / math.sqrt(self.d_head)  # (R, K, H, N)
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))  # every request has >= 1 candidate
        mixed = torch.einsum("rkhn,rnkhc->rkhc", scores.softmax(-1), v).flatten(2)  # (R, K, d)
        out = torch.einsum("rkd,kde->rke", mixed, self.w_out) + self.b_out  # (R, K, d)
        return q_task + out if self.residual else out  # (R, K, d)


class OnerankTaskInteraction(nn.Module):
    """Pre-LN self-attention over the K task states under a K×K mask, then an FFN.

    With `detach`, task k's query reads task j's keys/values (j ≠ k) computed from
    h.detach(): the forward values are unchanged, but task k's loss cannot reach h_j.
    """

    def __init__(self, d_model: int, n_heads: int, ffn_mult: int, dropout: float, mask: torch.Tensor, detach: bool):
        super().__init__()
        self.n_heads, self.d_head, self.detach = n_heads, d_model // n_heads, detach
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.query, self.key = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model, bias=False)
        self.value, self.out = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.ffn = MLP([d_model, ffn_mult * d_model, d_model], dropout, nn.GELU, activate_last=False)
        self.drop = nn.Dropout(dropout)
        self.register_buffer("allowed", mask, persistent=False)  # (K, K)
        self.register_buffer("eye", torch.eye(mask.shape[0], dtype=torch.bool), persistent=False)  # (K, K)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.n_heads, self.d_head)).transpose(1, 2)  # (R, K, d) → (R, H, K, dh)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h `(R, K, d)` → z `(R, K, d)`."""
        x = self.ln1(h)  # (R, K, d)
        q, k_live, v_live = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        k_off, v_off = k_live, v_live  # (R, H, K, dh)
        if self.detach:
            x_off = self.ln1(h.detach())  # (R, K, d): same values, no gradient into h
            k_off, v_off = self._heads(self.key(x_off)), self._heads(self.value(x_off))  # (R, H, K, dh)
        scores = torch.where(self.eye, q @ k_live.transpose(-1, -2), q @ k_off.transpose(-1, -2))  # (R, H, K, K)
        attn = (scores / math.sqrt(self.d_head)).masked_fill(~self.allowed, float("-inf")).softmax(-1)  # (R,H,K,K)
        mixed = (attn * self.eye) @ v_live + (attn * ~self.eye) @ v_off  # (R, H, K, dh): diagonal live, rest read
        z = h + self.drop(self.out(mixed.transpose(1, 2).flatten(2)))  # (R, K, d)
        return z + self.drop(self.ffn(self.ln2(z)))  # (R, K, d)


class Onerank(MsmtModel):
    """Fields → context + candidate tokens → structured encoder → per-task cross-attention
    over the request → task interaction → matching scores.

    Example::

        model = Onerank(spec, OnerankConfig(d_model=64))
        logits = model(batch)  # (B, T); batch["group"] (B,) groups rows into requests
        extra = model.extra_losses(batch, logits)  # {"listwise": scalar} or {}
    """

    Config = OnerankConfig
    batching: ClassVar[str] = "request"  # the trainer keeps each request's rows in one batch

    def __init__(self, spec: FeatureSpec, config: OnerankConfig) -> None:
        super().__init__(spec, config)
        d, k = config.d_model, config.emb_dim
        self.embedding = FeatureEmbedding(spec, k)
        n_sparse = len(spec.sparse_fields)
        self.ctx_index = [i for i, name in enumerate(spec.sparse_fields) if name in config.context_fields]
        self.cand_index = [i for i in range(n_sparse) if i not in self.ctx_index]
        if spec.dense_fields:
            self.cand_index.append(n_sparse)  # the dense projection field
        if self.embedding.use_seq:
            self.ctx_index.append(self.embedding.n_fields - 1)  # mean history embedding
        if not self.ctx_index or not self.cand_index:
            raise ValueError(
                f"context_fields {config.context_fields} must leave at least one field on each side "
                f"(context, candidate) of {spec.sparse_fields} + dense"
            )
        has_item = spec.seq_vocab_field in spec.sparse_fields
        self.item_index = spec.sparse_fields.index(spec.seq_vocab_field) if has_item else None
        seq_len = spec.seq_len if self.embedding.use_seq else 0
        n_anchors = config.n_anchors if self.item_index is not None else 0
        self.context = OnerankContext(len(self.ctx_index) * k, k, d, seq_len, n_anchors)
        self.candidate = nn.Linear(len(self.cand_index) * k, d)
        self.encoder = OnerankEncoder(config, self.n_tasks)
        self.situation = MLP([d, d, d], config.dropout, activate_last=False, norm=config.norm)  # blocks: own Pre-LN
        self.cross = OnerankTaskCrossAttention(d, config.n_heads, self.n_tasks, config.cross_residual)
        mask = interaction_mask(config.interaction, self.n_tasks, config.hybrid_mask)
        self.interaction = OnerankTaskInteraction(
            d, config.n_heads, config.ffn_mult, config.dropout, mask, config.detach_cross_task
        )
        self.score_bias = nn.Parameter(self.initial_score_bias()) if config.score_bias else None
        self._layout: tuple[torch.Tensor, tuple] | None = None  # (group, layout) of the latest training forward

    def task_private_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters with a leading task axis K; slice k belongs to task k alone."""
        names = ("w_situation", "b_situation", "w_query", "w_key", "w_value", "w_out", "b_out")
        return {"templates": self.encoder.templates, **{n: getattr(self.cross, n) for n in names}}

    def initial_score_bias(self) -> torch.Tensor:
        """b at init `(K,)`: logit(p_k) of `score_prior` (its one value for every task, or one per task), or 0."""
        prior = self.config.score_prior
        if not prior:
            return torch.zeros(self.n_tasks)
        if len(prior) not in (1, self.n_tasks):
            raise ValueError(f"score_prior needs 1 or {self.n_tasks} values (tasks {self.spec.tasks}), got {prior}")
        return torch.logit(torch.tensor(prior, dtype=torch.float32)).expand(self.n_tasks).clone()  # (K,)

    def requests(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
        """The batch's request layout (see `request_layout`); pointwise unless setwise with a "group".

        Reuses the layout the latest training forward built for this very `group` tensor (the
        trainer's extra_losses call on the same batch), so a step builds it once.
        """
        group = batch.get("group") if self.config.setwise else None
        cached, self._layout = self._layout, None
        if group is not None and cached is not None and cached[0] is group:
            return cached[1]
        layout = request_layout(group, batch["sparse"].shape[0], batch["sparse"].device)
        if group is not None and self.training:
            self._layout = (group, layout)
        return layout

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch (see `TensorData.batches`, optionally with "group" `(B,)`) → logits `(B, T)`."""
        fields = self.embedding(batch)  # (B, F, k)
        self._layout = None  # a new batch: build its layout afresh
        req, pos, first, n_req, n_cand = self.requests(batch)
        valid = torch.zeros(n_req, n_cand, dtype=torch.bool, device=fields.device)
        valid[req, pos] = True  # (R, N)
        hist = hist_valid = None
        if self.context.seq_len:
            seq = batch["seq"][first]  # (R, L)
            if seq.shape[1] != self.context.seq_len:
                raise ValueError(f"expected seq (B, {self.context.seq_len}), got {tuple(batch['seq'].shape)}")
            hist = self.embedding.table(seq + self.embedding.seq_offset)  # (R, L, k)
            hist_valid = seq > 0  # (R, L)
        probe = fields.new_zeros(n_req, fields.shape[-1])  # (R, k)
        if self.context.n_anchors:
            items = fields.new_zeros(n_req, n_cand, fields.shape[-1])  # (R, N, k)
            items[req, pos] = fields[:, self.item_index]
            probe = items.sum(1) / valid.sum(1, keepdim=True)  # (R, k): mean over the request's candidates
        ctx, ctx_valid = self.context(fields[first][:, self.ctx_index], hist, hist_valid, probe)  # (R, C, d)
        cand = self.candidate(fields[:, self.cand_index].flatten(1))  # (B, d)
        ctx, r = self.encoder(ctx, ctx_valid, cand, req)  # (R, C, d), (B, K, d)
        if self.config.situation_pool == "mean":
            weight = ctx_valid.unsqueeze(-1).to(ctx.dtype)  # (R, C, 1)
            pooled = (ctx * weight).sum(1) / weight.sum(1)  # (R, d)
        else:
            pooled = ctx[:, 0]  # (R, d)
        s = self.situation(pooled)  # (R, d)
        r_layout = r.new_zeros(n_req, n_cand, self.n_tasks, r.shape[-1])  # (R, N, K, d)
        r_layout[req, pos] = r
        z = self.interaction(self.cross(s, r_layout, valid))  # (R, K, d)
        z_rows = z[req]  # (B, K, d)
        if self.config.normalize_scores:
            z_rows, r = F.normalize(z_rows, dim=-1), F.normalize(r, dim=-1)  # (B, K, d)
        logits = (z_rows * r).sum(-1) / self.config.tau  # (B, K)
        if self.score_bias is not None:
            logits = logits + self.score_bias  # (B, K)
        return logits

    def extra_losses(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"listwise": λ_list · Σ_k mean over requests with a positive of InfoNCE_k}, or {} in pointwise mode.

        InfoNCE_k of a request = mean over its positives p of −log softmax(logit_k)_p over
        the request's candidates whose task-k label is not masked (b_k cancels, so this is
        the softmax of s/τ). Requests without a positive add nothing; the value stays finite.
        """
        if self.config.listwise_weight == 0 or not self.config.setwise or "group" not in batch:
            return {}
        req, pos, _, n_req, n_cand = self.requests(batch)
        n_tasks = logits.shape[1]
        layout = torch.zeros(n_req, n_cand, n_tasks, dtype=torch.float32, device=logits.device)  # (R, N, K)
        layout[req, pos] = logits.float()
        known = torch.zeros(n_req, n_cand, n_tasks, dtype=torch.bool, device=logits.device)  # (R, N, K)
        known[req, pos] = batch["label_mask"]
        positive = torch.zeros_like(known)  # (R, N, K)
        positive[req, pos] = batch["labels"] > 0.5
        positive &= known
        filled = layout.masked_fill(~known, torch.finfo(torch.float32).min)  # finite: no NaN on empty rows
        log_prob = filled.log_softmax(dim=1)  # (R, N, K)
        n_pos = positive.sum(1)  # (R, K)
        per_request = -torch.where(positive, log_prob, 0.0).sum(1) / n_pos.clamp(min=1)  # (R, K)
        has_pos = n_pos > 0  # (R, K)
        per_task = per_request.sum(0) / has_pos.sum(0).clamp(min=1)  # (K,)
        return {"listwise": self.config.listwise_weight * per_task.sum()}


MODEL = Onerank
DESCRIPTION = (
    "OneRank (Shopee+RUC, KDD'26): set-wise ranking, per-candidate task tokens, "
    "candidate-aware cross-attention, detached cross-task interaction, matching scores"
)

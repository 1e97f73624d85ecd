"""MDL: Multi-Distribution Learner with feature, scenario and task tokens, all in this file.

Reference: "MDL: Multi-Distribution Learner" for multi-scenario multi-task ranking in
Douyin Search (ByteDance), arXiv 2602.07520, Feb 2026 (KDD'26 per secondary notes;
https://arxiv.org/abs/2602.07520). No official code; the method follows the
equation-level notes gathered in MODELS.md §2 (Eqs. 2–16).

    F  = [W_g · concat(group g's embeddings)]_g                feature tokens    (B, N_f, d)
    S_k = ReLU(FFN_k([ê_imp; prior_k])), k = 1..N_s, global    scenario tokens   (B, N_s+1, d)
    T_n = ReLU(FFN_n([ê_imp; prior_n]))                         task tokens       (B, N_t, d)
    one block:
      F' = PerTokenFFN(LN(TokenMixing(F) + F))                  features read features only
      Ŝ = Attn(S, F') + S,   T̂ = Attn(T, F') + T               domain tokens read F', never the reverse
      T̃ = T̂ + mean(Ŝ_{s(i)}, Ŝ_global)                          each task token gets the ACTIVE scenario
      S ← FFN_s(Ŝ) + Ŝ,      T ← FFN_t(T̃) + T̃
    ŷ_n = Linear_n(T_n) after `n_blocks` blocks                N_t heads, not N_s·N_t

Notation: B batch, F fields, k embedding dim, d token width, N_f feature tokens, N_s
scenarios, N_t = T tasks, H attention heads, d_h = d / H.

No task↔task attention, no scenario↔scenario mixing, and features never read the
domain tokens (read-side conditioning only). Attention maps are `(B, H, N_s+1, N_f)`
and `(B, H, N_t, N_f)` (`forward_tokens` returns them per block).

Resolutions (not fixed by the sources; each a config flag, [R] in MODELS.md):
- `feature_groups="semantic"`: the paper hand-groups fields into N_f semantic tokens.
  Here: user (`user*` fields and the behaviour sequence), item (`item*` fields),
  context (the other sparse fields, e.g. scenario, position, device, hour), dense (the
  projection of all dense values); empty groups are dropped. "field": one token per field.
- The behaviour sequence is mean-pooled by the shared `FeatureEmbedding` (the notes
  allow mean or target-attention pooling).
- `mixer="rankmixer"`: parameter-free RankMixer token mixing (H_mix = N_f heads, so
  d must be divisible by N_f), the default backbone of the equation-level notes [S] and
  this repo's choice; "mhsa": multi-head self-attention over the feature tokens (n_heads
  heads, no positional signal), the feature-token self-attention the abstract names [P].
- `feature_ffn_residual=False`: F' = PerTokenFFN(LN(Mix(F) + F)) as in the cited
  equation; True adds RankMixer's second residual + LN around the per-token FFN.
- `ffn_mult=2`, `ffn_act="gelu"` (RankMixer): per-token FFNs d → ffn_mult·d → d.
- `important_fields=("user_id", "item_id")`: ê_imp, embedded by tables separate from the
  feature path. The scenario-specific prior ê_spec^k (e.g. the user's behaviour inside
  scenario k) is not in msmt's data: each scenario, the global token and each task gets a
  learned prior vector of `prior_dim` instead; `token_ffn_dims=()` hidden widths of the
  token initialiser FFNs (so one Linear + ReLU by default).
- `per_token_kv=True`: each feature token has its own K/V projection (each domain
  token always has its own Q projection); no output projection, as in the equations.
- `use_global_token=True` (the paper's "w/o global token" ablation is False).
- d=128, 3 blocks, 4 heads: the [R] defaults of MODELS.md.

Deviation (no effect on the output): the last block has no scenario FFN, since its
scenario tokens are read only through Ŝ in that block's aggregation.

Compute: a row reads only its active scenario token and the global one, and scenario
tokens never read each other, so `forward` carries those two only (the other S − 1
tokens' initialiser, queries and FFNs are skipped). The active token's weights differ
per row: rows are regrouped, without a host sync, into fixed-size chunks of one
scenario each (`ScenarioChunks`). `forward_tokens` still computes every token (and
every attention map) for inspection; `forward` equals its task heads, and is it with
`norm="batch"`, whose statistics are over the whole batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from training.data import FeatureSpec
from training.layers import EmbeddingTable, FeatureEmbedding, ParallelMLP, ScenarioChunks, run_networks, runs_subsets
from training.models.base import ModelConfig, MsmtModel

MIXERS = ("rankmixer", "mhsa")
FEATURE_GROUPS = ("semantic", "field")
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


@dataclass
class MdlConfig(ModelConfig):
    d_model: int = 128  # d: width of every token
    n_blocks: int = 3  # L stacked MDL blocks
    n_heads: int = 4  # H: heads of the domain attention (and of the "mhsa" mixer)
    mixer: str = "rankmixer"  # feature self-interaction: "rankmixer" | "mhsa"
    feature_groups: str = "semantic"  # feature tokenisation: "semantic" | "field"
    feature_ffn_residual: bool = False  # True: RankMixer's residual + LN around the per-token FFN
    ffn_mult: int = 2  # per-token FFN hidden width = ffn_mult · d
    ffn_act: str = "gelu"  # "gelu" | "relu"
    important_fields: tuple[str, ...] = ("user_id", "item_id")  # ê_imp, separate tables
    prior_dim: int = 16  # learned prior per scenario / global / task token
    token_ffn_dims: tuple[int, ...] = ()  # hidden widths of the token initialiser FFNs
    per_token_kv: bool = True  # own K/V projection per feature token
    use_global_token: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.important_fields, self.token_ffn_dims = tuple(self.important_fields), tuple(self.token_ffn_dims)
        for name, choices in (("mixer", MIXERS), ("feature_groups", FEATURE_GROUPS), ("ffn_act", tuple(ACTIVATIONS))):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if min(self.d_model, self.n_blocks, self.n_heads, self.ffn_mult, self.prior_dim) < 1:
            raise ValueError("d_model, n_blocks, n_heads, ffn_mult and prior_dim must be >= 1")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if not self.important_fields or any(d < 1 for d in self.token_ffn_dims):
            raise ValueError(f"need important fields and positive widths, got {self.important_fields}")


def semantic_groups(spec: FeatureSpec, feature_groups: str) -> list[list[int]]:
    """Indices into `FeatureEmbedding`'s fields (sparse…, dense, seq), one list per feature token."""
    names = list(spec.sparse_fields) + (["<dense>"] if spec.dense_fields else [])
    names += ["<seq>"] if spec.seq_field is not None else []
    if feature_groups == "field":
        return [[i] for i in range(len(names))]
    groups: dict[str, list[int]] = {"user": [], "item": [], "context": [], "dense": []}
    for i, name in enumerate(names):
        if name == "<seq>" or name.startswith("user"):
            groups["user"].append(i)
        elif name.startswith("item"):
            groups["item"].append(i)
        elif name == "<dense>":
            groups["dense"].append(i)
        else:
            groups["context"].append(i)
    return [g for g in groups.values() if g]


class MdlFeatureTokenizer(nn.Module):
    """Field embeddings → N_f feature tokens, one Linear per group of fields."""

    def __init__(self, groups: list[list[int]], emb_dim: int, d: int) -> None:
        super().__init__()
        self.sizes = [len(g) for g in groups]
        self.register_buffer("order", torch.tensor([i for g in groups for i in g]), persistent=False)
        self.projections = nn.ModuleList(nn.Linear(n * emb_dim, d) for n in self.sizes)

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        """fields `(B, F, k)` → tokens `(B, N_f, d)`."""
        chunks = fields.index_select(1, self.order).split(self.sizes, dim=1)  # N_f × (B, F_g, k)
        tokens = [p(c.flatten(1)) for p, c in zip(self.projections, chunks, strict=True)]  # N_f × (B, d)
        return torch.stack(tokens, dim=1)  # (B, N_f, d)


class MdlImportantEmbedding(nn.Module):
    """ê_imp: a few raw sparse fields embedded again, with tables of their own."""

    def __init__(self, spec: FeatureSpec, names: tuple[str, ...], emb_dim: int) -> None:
        super().__init__()
        missing = [n for n in names if n not in spec.sparse_fields]
        if missing:
            raise ValueError(f"important_fields {missing} are not sparse fields of the spec")
        vocab = [spec.vocab(n) for n in names]
        self.register_buffer("columns", torch.tensor([spec.sparse_fields.index(n) for n in names]), persistent=False)
        self.register_buffer("offsets", torch.tensor([0, *vocab[:-1]]).cumsum(0), persistent=False)
        self.table = EmbeddingTable(sum(vocab), emb_dim)
        nn.init.normal_(self.table.weight, std=0.01)
        self.out_dim = len(names) * emb_dim

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        """sparse `(B, F_s)` → `(B, n_imp·k)`."""
        return self.table(sparse.index_select(1, self.columns) + self.offsets).flatten(1)  # (B, n_imp·k)


class MdlDomainTokens(nn.Module):
    """n sample-conditioned tokens: t_m = ReLU(FFN_m([ê_imp; prior_m])), one FFN per token."""

    def __init__(self, n: int, imp_dim: int, config: MdlConfig) -> None:
        super().__init__()
        self.priors = nn.Parameter(torch.randn(n, config.prior_dim))
        self.ffn = ParallelMLP(
            n, [imp_dim + config.prior_dim, *config.token_ffn_dims, config.d_model], norm=config.norm
        )

    def forward(self, imp: torch.Tensor) -> torch.Tensor:
        """ê_imp `(B, n_imp·k)` → tokens `(B, n, d)`."""
        n = self.priors.shape[0]
        priors = self.priors.unsqueeze(0).expand(imp.shape[0], -1, -1)  # (B, n, prior_dim)
        return self.ffn(torch.cat([imp.unsqueeze(1).expand(-1, n, -1), priors], dim=-1))  # (B, n, d)

    def active(self, imp: torch.Tensor, chunks: ScenarioChunks) -> torch.Tensor:
        """ê_imp `(B, n_imp·k)` → each row's token of its own scenario `(B, d)`, computing only that one."""
        x = torch.cat([imp, self.priors[chunks.scenario]], dim=-1)  # (B, n_imp·k + prior_dim)
        out = run_networks(self.ffn, chunks.pad(x), chunks.owner.unsqueeze(1))  # (K, 1, c, d)
        return chunks.unpad(out.squeeze(1))  # (B, d)

    def one(self, imp: torch.Tensor, m: int) -> torch.Tensor:
        """ê_imp `(B, n_imp·k)` → token m of every row `(B, d)`, computing only that one."""
        x = torch.cat([imp, self.priors[m].expand(imp.shape[0], -1)], dim=-1)  # (B, n_imp·k + prior_dim)
        index = torch.full((1, 1), m, device=imp.device)
        return run_networks(self.ffn, x.unsqueeze(0), index)[0, 0]  # (1, 1, B, d) → (B, d)


class MdlTokenMixing(nn.Module):
    """RankMixer's parameter-free mixing: token h of the output = head h of every input token."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x `(B, N, d)` → `(B, N, d)` with N heads of d/N each."""
        B, N, d = x.shape
        heads = x.reshape(B, N, N, d // N).transpose(1, 2)  # (B, H=N, N, d/N)
        return heads.reshape(B, N, d)  # (B, N, d)


class MdlSelfAttentionMixing(nn.Module):
    """Multi-head self-attention over the feature tokens only."""

    def __init__(self, d: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(d, n_heads, dropout=dropout, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x `(B, N, d)` → `(B, N, d)`."""
        return self.attention(x, x, x, need_weights=False)[0]  # (B, N, d)


class MdlDomainAttention(nn.Module):
    """Domain tokens (queries, own W_Q each) attend to feature tokens (keys / values).

    Queries are [S scenario tokens; (global;) T task tokens], or with `chunks` [the row's
    active scenario token; (global;) T task tokens].
    """

    def __init__(self, n_scenarios: int, n_queries: int, n_features: int, config: MdlConfig) -> None:
        super().__init__()
        d, self.n_heads, self.n_scenarios = config.d_model, config.n_heads, n_scenarios
        bound = 1 / math.sqrt(d)  # nn.Linear's default init
        self.w_q = nn.Parameter(torch.empty(n_queries, d, d).uniform_(-bound, bound))
        n_kv = n_features if config.per_token_kv else 1
        self.w_kv = nn.Parameter(torch.empty(n_kv, d, 2 * d).uniform_(-bound, bound))

    def queries(self, domain: torch.Tensor, chunks: ScenarioChunks | None) -> torch.Tensor:
        """domain `(B, N_q, d)` → Q `(B, N_q, d)`, each token through its own W_Q."""
        if chunks is None:
            return torch.einsum("bqd,qde->bqe", domain, self.w_q)  # (B, N_q, d)
        active = torch.bmm(chunks.pad(domain[:, 0]), self.w_q[chunks.owner])  # (K, c, d): W_Q of the chunk's scenario
        rest = torch.einsum("bqd,qde->bqe", domain[:, 1:], self.w_q[self.n_scenarios :])  # (B, N_q − 1, d)
        return torch.cat([chunks.unpad(active).unsqueeze(1), rest], dim=1)  # (B, N_q, d)

    def forward(
        self, domain: torch.Tensor, features: torch.Tensor, chunks: ScenarioChunks | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """domain `(B, N_q, d)`, features `(B, N_f, d)` → output `(B, N_q, d)`, attention `(B, H, N_q, N_f)`."""
        B, N_q, d = domain.shape
        w_kv = self.w_kv.expand(features.shape[1], -1, -1)  # (N_f, d, 2d)
        q = self.queries(domain, chunks)  # (B, N_q, d)
        k, v = torch.einsum("bfd,fde->bfe", features, w_kv).chunk(2, dim=-1)  # 2 × (B, N_f, d)
        d_h = d // self.n_heads
        q, k, v = (t.unflatten(2, (self.n_heads, d_h)).transpose(1, 2) for t in (q, k, v))  # (B, H, N_q|N_f, d_h)
        attention = (q @ k.transpose(-2, -1) / math.sqrt(d_h)).softmax(dim=-1)  # (B, H, N_q, N_f)
        out = (attention @ v).transpose(1, 2).reshape(B, N_q, d)  # (B, N_q, d)
        return out, attention


class MdlBlock(nn.Module):
    """Feature self-interaction → domain-aware attention → domain-fused aggregation → per-token FFNs."""

    def __init__(self, n_features: int, n_scenarios: int, n_tasks: int, config: MdlConfig, last: bool) -> None:
        super().__init__()
        d, act = config.d_model, ACTIVATIONS[config.ffn_act]
        self.n_scenarios, self.global_token = n_scenarios, config.use_global_token
        n_scenario_tokens = n_scenarios + config.use_global_token  # global token last

        def ffn(n: int) -> ParallelMLP:
            return ParallelMLP(
                n, [d, config.ffn_mult * d, d], config.dropout, act, activate_last=False, norm=config.norm
            )

        self.mixer = MdlTokenMixing() if config.mixer == "rankmixer" else MdlSelfAttentionMixing(d, config.n_heads, 0.0)
        self.mix_norm = nn.LayerNorm(d)
        self.feature_ffn = ffn(n_features)
        self.ffn_norm = nn.LayerNorm(d) if config.feature_ffn_residual else None
        self.attention = MdlDomainAttention(n_scenarios, n_scenario_tokens + n_tasks, n_features, config)
        self.scenario_ffn = None if last else ffn(n_scenario_tokens)
        self.task_ffn = ffn(n_tasks)

    def forward(
        self,
        features: torch.Tensor,
        scenarios: torch.Tensor,
        tasks: torch.Tensor,
        scenario: torch.Tensor,
        chunks: ScenarioChunks | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """features `(B, N_f, d)`, scenario tokens `(B, N_s(+1), d)`, task tokens `(B, N_t, d)`, ids `(B,)`
        → the three updated, and the attention `(B, H, N_s(+1)+N_t, N_f)`.

        With `chunks` (the rows regrouped by scenario), the scenario tokens are only the ones a
        row reads, [active; (global)] `(B, 1(+1), d)`, and so is the attention's scenario part.
        """
        mixed = self.mix_norm(self.mixer(features) + features)  # (B, N_f, d)
        features = self.feature_ffn(mixed)  # (B, N_f, d)
        if self.ffn_norm is not None:
            features = self.ffn_norm(features + mixed)  # (B, N_f, d)
        domain = torch.cat([scenarios, tasks], dim=1)  # (B, N_s(+1)+N_t, d)
        read, attention = self.attention(domain, features, chunks)  # (B, N_s(+1)+N_t, d), (B, H, N_q, N_f)
        domain = domain + read  # (B, N_s(+1)+N_t, d)
        scenarios, tasks = domain.split([scenarios.shape[1], tasks.shape[1]], dim=1)  # Ŝ, T̂
        if chunks is None:
            active = scenarios[torch.arange(scenarios.shape[0], device=scenarios.device), scenario]  # (B, d)
        else:
            active = scenarios[:, 0]  # (B, d)
        s_avg = (active + scenarios[:, -1]) / 2 if self.global_token else active  # (B, d)
        tasks = tasks + s_avg.unsqueeze(1)  # T̃ (B, N_t, d)
        tasks = self.task_ffn(tasks) + tasks  # (B, N_t, d)
        if self.scenario_ffn is not None and chunks is None:
            scenarios = self.scenario_ffn(scenarios) + scenarios  # (B, N_s(+1), d)
        elif self.scenario_ffn is not None:  # the active token through its scenario's FFN, the global through its own
            step = run_networks(self.scenario_ffn, chunks.pad(active), chunks.owner.unsqueeze(1))  # (K, 1, c, d)
            steps = [chunks.unpad(step.squeeze(1))]  # [(B, d)]
            if self.global_token:
                index = torch.full((1, 1), self.n_scenarios, device=active.device)
                steps.append(run_networks(self.scenario_ffn, scenarios[:, -1].unsqueeze(0), index)[0, 0])  # (B, d)
            scenarios = torch.stack(steps, dim=1) + scenarios  # (B, 1(+1), d)
        return features, scenarios, tasks, attention


class Mdl(MsmtModel):
    """Feature / scenario / task tokens → L MDL blocks → one logit per task token.

    Example::

        model = Mdl(spec, MdlConfig(d_model=64, n_blocks=2))
        logits = model(batch)  # (B, T)
    """

    Config = MdlConfig

    def __init__(self, spec: FeatureSpec, config: MdlConfig) -> None:
        super().__init__(spec, config)
        self.n_scenarios = spec.n_scenarios
        self.embedding = FeatureEmbedding(spec, config.emb_dim)
        groups = semantic_groups(spec, config.feature_groups)
        self.n_features = len(groups)
        if config.mixer == "rankmixer" and config.d_model % self.n_features:
            raise ValueError(
                f"mixer='rankmixer' needs d_model={config.d_model} divisible by the {self.n_features} feature tokens"
            )
        self.tokenizer = MdlFeatureTokenizer(groups, config.emb_dim, config.d_model)
        self.important = MdlImportantEmbedding(spec, config.important_fields, config.emb_dim)
        n_scenario_tokens = self.n_scenarios + config.use_global_token  # global token last
        self.scenario_tokens = MdlDomainTokens(n_scenario_tokens, self.important.out_dim, config)
        self.task_tokens = MdlDomainTokens(self.n_tasks, self.important.out_dim, config)
        self.blocks = nn.ModuleList(
            MdlBlock(self.n_features, self.n_scenarios, self.n_tasks, config, last=i == config.n_blocks - 1)
            for i in range(config.n_blocks)
        )
        self.heads = ParallelMLP(self.n_tasks, [config.d_model, 1], activate_last=False)

    def forward_tokens(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """batch → final "features" `(B, N_f, d)`, "scenarios" `(B, N_s(+1), d)`, "tasks" `(B, N_t, d)`,
        and per block "scenario_attention" `(B, H, N_s(+1), N_f)` / "task_attention" `(B, H, N_t, N_f)`."""
        features = self.tokenizer(self.embedding(batch))  # (B, N_f, d)
        imp = self.important(batch["sparse"])  # (B, n_imp·k)
        scenarios, tasks = self.scenario_tokens(imp), self.task_tokens(imp)  # (B, N_s(+1), d), (B, N_t, d)
        scenario_attention, task_attention = [], []
        for block in self.blocks:
            features, scenarios, tasks, attention = block(features, scenarios, tasks, batch["scenario"])
            scenario_attention.append(attention[:, :, : scenarios.shape[1]])  # (B, H, N_s(+1), N_f)
            task_attention.append(attention[:, :, scenarios.shape[1] :])  # (B, H, N_t, N_f)
        return {
            "features": features,
            "scenarios": scenarios,
            "tasks": tasks,
            "scenario_attention": scenario_attention,
            "task_attention": task_attention,
        }

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch (see `TensorData.batches`) → logits `(B, T)`, carrying only the scenario tokens a row reads.

        With `norm="batch"` (statistics over every row) every scenario token is carried (`forward_tokens`).
        """
        if not runs_subsets(self.scenario_tokens.ffn):
            return self.heads(self.forward_tokens(batch)["tasks"]).squeeze(-1)  # (B, N_t, 1) → (B, T)
        features = self.tokenizer(self.embedding(batch))  # (B, N_f, d)
        imp = self.important(batch["sparse"])  # (B, n_imp·k)
        chunks = ScenarioChunks(batch["scenario"], self.n_scenarios)
        scenarios = [self.scenario_tokens.active(imp, chunks)]  # [(B, d)]: the active token
        if self.config.use_global_token:
            scenarios.append(self.scenario_tokens.one(imp, self.n_scenarios))  # the global token
        scenarios, tasks = torch.stack(scenarios, dim=1), self.task_tokens(imp)  # (B, 1(+1), d), (B, N_t, d)
        for block in self.blocks:
            features, scenarios, tasks, _ = block(features, scenarios, tasks, batch["scenario"], chunks)
        return self.heads(tasks).squeeze(-1)  # (B, N_t, 1) → (B, T)


MODEL = Mdl
DESCRIPTION = "MDL (ByteDance, arXiv 2602.07520): feature/scenario/task tokens; domain tokens read features"

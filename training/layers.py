"""Generic building blocks shared by the model zoo (nothing model-specific lives here).

Notation: B batch, F fields, k embedding dim, n parallel networks, L sequence length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from training.data import FeatureSpec

NORMS = ("none", "batch", "layer")


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


class BatchNormLastDim(nn.BatchNorm1d):
    """BatchNorm1d over the last axis of `(…, d)`: every leading axis counts as rows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).view_as(x)  # (…, d)


class MLP(nn.Sequential):
    """Linear → [norm] → activation → dropout per layer; `dims` = [in, hidden…, out].

    `activate_last=False` leaves the last Linear bare (a logit head). `norm`:
    "none" (default: no module is added, so outputs, parameter names and the
    random init are those of an MLP without the option), "batch" (BatchNorm1d)
    or "layer" (LayerNorm), between each activated Linear and its activation.
    """

    def __init__(
        self,
        dims: Sequence[int],
        dropout: float = 0.0,
        activation: type[nn.Module] = nn.ReLU,
        activate_last: bool = True,
        norm: str = "none",
    ) -> None:
        if len(dims) < 2 or any(d <= 0 for d in dims):
            raise ValueError(f"MLP needs at least [in, out] positive dims, got {list(dims)}")
        _check_norm(norm)
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(pairwise(dims)):
            layers.append(nn.Linear(d_in, d_out))
            if activate_last or i < len(dims) - 2:
                if norm != "none":
                    layers.append(BatchNormLastDim(d_out) if norm == "batch" else nn.LayerNorm(d_out))
                layers.append(activation())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class ParallelNorm(nn.Module):
    """Per-network batch or layer norm of `(n, B, d)` activations, own affine (and statistics) per network."""

    def __init__(self, kind: str, n: int, d: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "batch":
            self.norm = nn.BatchNorm1d(n * d)  # one channel per (network, unit)
        else:
            self.weight = nn.Parameter(torch.ones(n, d))
            self.bias = nn.Parameter(torch.zeros(n, d))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h `(n, B, d)` → `(n, B, d)`."""
        n, B, d = h.shape
        if self.kind == "batch":
            rows = h.transpose(0, 1).reshape(B, n * d)  # (B, n*d)
            return self.norm(rows).view(B, n, d).transpose(0, 1)  # (n, B, d)
        return torch.addcmul(self.bias.unsqueeze(1), F.layer_norm(h, (d,)), self.weight.unsqueeze(1))  # (n, B, d)


class ParallelMLP(nn.Module):
    """`n` independent MLPs evaluated as one batched matmul per layer.

    Experts and task towers are small, so on a GPU their cost is kernel launches:
    stacking their weights turns n launches per layer into one.
    Input `(B, d_in)` (shared by all n) or `(B, n, d_in)`; output `(B, n, d_out)`.
    `norm` as in `MLP` ("none" adds nothing), per network.
    """

    def __init__(
        self,
        n: int,
        dims: Sequence[int],
        dropout: float = 0.0,
        activation: type[nn.Module] = nn.ReLU,
        activate_last: bool = True,
        norm: str = "none",
    ) -> None:
        super().__init__()
        if n < 1 or len(dims) < 2 or any(d <= 0 for d in dims):
            raise ValueError(f"ParallelMLP needs n >= 1 and positive [in, out] dims, got n={n}, dims={list(dims)}")
        _check_norm(norm)
        self.n, self.dims, self.activate_last, self.norm = n, list(dims), activate_last, norm
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in pairwise(dims):
            bound = 1 / math.sqrt(d_in)  # nn.Linear's default init, per network
            self.weights.append(nn.Parameter(torch.empty(n, d_in, d_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n, d_out).uniform_(-bound, bound)))
        n_norms = len(self.weights) if activate_last else len(self.weights) - 1  # activated layers only
        self.norms = nn.ModuleList(ParallelNorm(norm, n, d) for d in dims[1 : 1 + n_norms]) if norm != "none" else None
        self.activation = activation()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x `(B, d_in)` or `(B, n, d_in)` → `(B, n, d_out)` (a transposed view of `(n, B, d_out)`).

        A shared input is one GEMM against all n networks' weights side by side;
        after that the activations stay network-major `(n, B, d)`, the layout
        `baddbmm` wants, so no layer pays a permuting copy.
        """
        if x.shape[-1] != self.dims[0] or (x.dim() == 3 and x.shape[1] != self.n):
            expected = f"(B, {self.dims[0]}) or (B, {self.n}, {self.dims[0]})"
            raise ValueError(f"ParallelMLP expects {expected}, got {tuple(x.shape)}")
        last = len(self.weights) - 1
        h = x if x.dim() == 2 else x.transpose(0, 1)  # (B, d_in) shared, or (n, B, d_in)
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            n, d_in, d_out = w.shape
            if h.dim() == 2:
                side_by_side = w.transpose(0, 1).reshape(d_in, n * d_out)  # (d_in, n*d_out)
                h = torch.addmm(b.reshape(-1), h, side_by_side).view(-1, n, d_out).transpose(0, 1)  # (n, B, d_out)
            else:
                h = torch.baddbmm(b.unsqueeze(1), h, w)  # (n, B, d_out)
            if self.activate_last or i < last:
                if self.norms is not None:
                    h = self.norms[i](h)  # (n, B, d_out)
                h = self.dropout(self.activation(h))
        return h.transpose(0, 1)  # (B, n, d_out)


class EmbeddingTable(nn.Embedding):
    """An id table the trainer may switch to row-sparse gradients (`TrainConfig.sparse_embeddings`).

    Only a marker: the big id tables, of which a step touches a few rows, are where a
    row-wise optimiser pays; small embeddings (scenario, domain) stay plain `nn.Embedding`.
    """


class FeatureEmbedding(nn.Module):
    """Turns a batch into field embeddings `(B, F, k)`.

    Fields, in order: one per sparse field (own id range, id 0 = null / unknown),
    one Linear projection of all dense values, and, when the spec has a sequence,
    the mean of the behaviour sequence's embeddings looked up in the table of
    `spec.seq_vocab_field` (history items share the item table, so the model
    learns one vector per item). All sparse tables live in one `nn.Embedding`
    with per-field offsets: one lookup kernel instead of F.
    """

    def __init__(self, spec: FeatureSpec, emb_dim: int, init_std: float = 0.01) -> None:
        super().__init__()
        if emb_dim < 1:
            raise ValueError(f"emb_dim must be >= 1, got {emb_dim}")
        if len(spec.sparse_fields) != len(spec.vocab_sizes) or not spec.sparse_fields:
            raise ValueError("spec needs one vocab size per sparse field and at least one sparse field")
        self.n_sparse, self.n_dense, self.emb_dim = len(spec.sparse_fields), len(spec.dense_fields), emb_dim
        self.use_seq = spec.seq_field is not None
        offsets = torch.tensor([0, *spec.vocab_sizes[:-1]]).cumsum(0)  # (F_s,)
        self.register_buffer("offsets", offsets, persistent=False)
        self.table = EmbeddingTable(sum(spec.vocab_sizes), emb_dim)
        nn.init.normal_(self.table.weight, std=init_std)
        self.dense_proj = nn.Linear(self.n_dense, emb_dim) if self.n_dense else None
        self.seq_offset = int(offsets[spec.sparse_fields.index(spec.seq_vocab_field)]) if self.use_seq else 0
        self.n_fields = self.n_sparse + (self.n_dense > 0) + self.use_seq
        self.out_dim = self.n_fields * emb_dim

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch["sparse"] `(B, F_s)`, ["dense"] `(B, F_d)`, ["seq"] `(B, L)` → `(B, F, k)`."""
        sparse = batch["sparse"]
        if sparse.dim() != 2 or sparse.shape[1] != self.n_sparse:
            raise ValueError(f"expected sparse (B, {self.n_sparse}), got {tuple(sparse.shape)}")
        fields = [self.table(sparse + self.offsets)]  # (B, F_s, k)
        if self.dense_proj is not None:
            dense = batch["dense"]
            if dense.dim() != 2 or dense.shape[1] != self.n_dense:
                raise ValueError(f"expected dense (B, {self.n_dense}), got {tuple(dense.shape)}")
            fields.append(self.dense_proj(dense).unsqueeze(1))  # (B, 1, k)
        if self.use_seq:
            seq = batch["seq"]  # (B, L), 0 = padding
            mask = (seq > 0).unsqueeze(-1).to(self.table.weight.dtype)  # (B, L, 1)
            summed = (self.table(seq + self.seq_offset) * mask).sum(1)  # (B, k)
            fields.append((summed / mask.sum(1).clamp(min=1)).unsqueeze(1))  # (B, 1, k)
        return torch.cat(fields, dim=1)  # (B, F, k)

    def flat(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The field embeddings concatenated: `(B, F*k)`."""
        return self(batch).flatten(1)  # (B, F*k)


class GradientReversal(torch.autograd.Function):
    """Identity forward, gradient times `-scale` backward (Ganin & Lempitsky, ICML 2015).

    `GradientReversal.apply(x, scale)`: what follows is trained to minimise its loss
    while everything before `x` is trained to maximise it, `scale` times as strongly.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = float(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


_CHUNKS_PER_SCENARIO = 8  # chunk size ⌈B / (8·S)⌉: at most ~1/8 of the rows are padding


class ScenarioChunks:
    """The batch's rows regrouped into K fixed-size chunks of c rows, each holding rows of one scenario.

    Chunk k is a small dense batch for the weights of scenario `owner[k]`, so per-scenario
    weights (HiNet's experts, MDL's scenario tokens) run on their own rows only. K = ⌈B/c⌉ + S − 1
    chunks fit any split of B rows into S scenarios, so every shape follows from B and S: no host
    sync, and unused chunks are padding (zeros, owner S − 1) that is computed and never read.
    """

    def __init__(self, scenario: torch.Tensor, n_scenarios: int) -> None:
        B, S, device = scenario.shape[0], n_scenarios, scenario.device
        self.scenario = scenario  # (B,)
        self.size = c = max(1, math.ceil(B / (_CHUNKS_PER_SCENARIO * S)))
        self.n_chunks = math.ceil(B / c) + S - 1  # K
        counts = torch.zeros(S, dtype=torch.long, device=device).index_add_(0, scenario, torch.ones_like(scenario))
        chunks = (counts + c - 1) // c  # (S,) chunks per scenario
        order = torch.argsort(scenario, stable=True)  # (B,) rows grouped by scenario
        rank = torch.empty_like(scenario)  # (B,) rank of each row among its scenario's rows
        rank[order] = torch.arange(B, device=device) - (counts.cumsum(0) - counts)[scenario[order]]
        self.slot = (chunks.cumsum(0) - chunks)[scenario] * c + rank  # (B,): row b → flat slot of the (K·c) layout
        ends = chunks.cumsum(0)  # (S,) one past each scenario's last chunk
        self.owner = torch.searchsorted(ends, torch.arange(self.n_chunks, device=device), right=True).clamp(max=S - 1)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """x `(B, …)` → `(K, c, …)`, zeros in the padding."""
        flat = x.new_zeros(self.n_chunks * self.size, *x.shape[1:]).index_copy(0, self.slot, x)  # (K*c, …)
        return flat.view(self.n_chunks, self.size, *x.shape[1:])  # (K, c, …)

    def unpad(self, y: torch.Tensor) -> torch.Tensor:
        """y `(K, c, …)` → `(B, …)`."""
        return y.flatten(0, 1).index_select(0, self.slot)  # (B, …)


def run_networks(mlp: ParallelMLP, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Group g runs only networks `index[g]` of `mlp` on its rows.

    x `(G, r, d_in)` (shared by the group's networks) or `(G, n, r, d_in)`, index `(G, n)` → `(G, n, r, d_out)`;
    the same values as `mlp` on those rows, read at those networks. A "layer" norm is per row, so
    it runs here too; a "batch" norm's statistics are over every row of the full batch, so a
    model with one runs the full `mlp` instead (`runs_subsets`).
    """
    if not runs_subsets(mlp):
        raise ValueError("a ParallelMLP with a batch norm cannot run a subset of its networks")
    G, n = index.shape
    h, last = x, len(mlp.weights) - 1
    for i, (w, b) in enumerate(zip(mlp.weights, mlp.biases, strict=True)):
        d_in, d_out = w.shape[1:]
        w, b = w[index], b[index]  # (G, n, d_in, d_out), (G, n, d_out)
        if h.dim() == 3:  # one GEMM per group against its networks side by side
            side = w.permute(0, 2, 1, 3).reshape(G, d_in, n * d_out)  # (G, d_in, n*d_out)
            h = torch.baddbmm(b.view(G, 1, n * d_out), h, side)  # (G, r, n*d_out)
            h = h.view(G, -1, n, d_out).transpose(1, 2)  # (G, n, r, d_out)
        else:
            r = h.shape[2]
            h = torch.baddbmm(b.view(G * n, 1, d_out), h.reshape(G * n, r, d_in), w.view(G * n, d_in, d_out))
            h = h.view(G, n, r, d_out)  # (G, n, r, d_out)
        if mlp.activate_last or i < last:
            if mlp.norms is not None:
                norm = mlp.norms[i]
                w, b = norm.weight[index].unsqueeze(2), norm.bias[index].unsqueeze(2)  # (G, n, 1, d_out) each
                h = torch.addcmul(b, F.layer_norm(h, (d_out,)), w)  # (G, n, r, d_out)
            h = mlp.dropout(mlp.activation(h))
    return h


def runs_subsets(mlp: ParallelMLP) -> bool:
    """Whether `run_networks` can run a subset of `mlp`'s networks (all but a batch norm can)."""
    return mlp.norm != "batch"

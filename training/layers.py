"""Generic building blocks shared by the model zoo (nothing model-specific lives here).

Notation: B batch, F fields, k embedding dim, n parallel networks, L sequence length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from training.data import FeatureSpec


class MLP(nn.Sequential):
    """Linear → activation → dropout per layer; `dims` = [in, hidden…, out].

    `activate_last=False` leaves the last Linear bare (a logit head).
    """

    def __init__(
        self,
        dims: Sequence[int],
        dropout: float = 0.0,
        activation: type[nn.Module] = nn.ReLU,
        activate_last: bool = True,
    ) -> None:
        if len(dims) < 2 or any(d <= 0 for d in dims):
            raise ValueError(f"MLP needs at least [in, out] positive dims, got {list(dims)}")
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(pairwise(dims)):
            layers.append(nn.Linear(d_in, d_out))
            if activate_last or i < len(dims) - 2:
                layers.append(activation())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class ParallelMLP(nn.Module):
    """`n` independent MLPs evaluated as one batched matmul per layer.

    Experts and task towers are small, so on a GPU their cost is kernel launches:
    stacking their weights turns n launches per layer into one.
    Input `(B, d_in)` (shared by all n) or `(B, n, d_in)`; output `(B, n, d_out)`.
    """

    def __init__(
        self,
        n: int,
        dims: Sequence[int],
        dropout: float = 0.0,
        activation: type[nn.Module] = nn.ReLU,
        activate_last: bool = True,
    ) -> None:
        super().__init__()
        if n < 1 or len(dims) < 2 or any(d <= 0 for d in dims):
            raise ValueError(f"ParallelMLP needs n >= 1 and positive [in, out] dims, got n={n}, dims={list(dims)}")
        self.n, self.dims, self.activate_last = n, list(dims), activate_last
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in pairwise(dims):
            bound = 1 / math.sqrt(d_in)  # nn.Linear's default init, per network
            self.weights.append(nn.Parameter(torch.empty(n, d_in, d_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n, d_out).uniform_(-bound, bound)))
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
                h = self.dropout(self.activation(h))
        return h.transpose(0, 1)  # (B, n, d_out)


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
        self.table = nn.Embedding(sum(spec.vocab_sizes), emb_dim)
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

"""PEPNet: Parameter and Embedding Personalized Network, all in this file.

Reference: J. Chang, C. Zhang, Y. Hui, D. Leng, Y. Niu, Y. Song, K. Gai,
"PEPNet: Parameter and Embedding Personalized Network for Infusing with
Personalized Prior Information", KDD 2023 (arXiv 2302.01115,
https://doi.org/10.1145/3580305.3599884). Cross-checked against MODELS.md §7 and
the MMLRec benchmark's re-implementation (not copied).

    Gate NU:  δ = γ · sigmoid(W₂ ReLU(W₁ x + b₁) + b₂),  γ = 2, so δ ∈ (0, 2)
    EPNet:    δ_ep = U_ep(E(F_d) ⊕ sg(E)),   O_ep = δ_ep ⊙ E
    PPNet:    δ_t^l = U_pp^l(O_prior ⊕ sg(O_ep))_t,   H_t^{l+1} = f((δ_t^l ⊙ H_t^l) W_t^l + b_t^l),  H_t^0 = O_ep

Notation: B batch, F fields, k embedding dim, T tasks, D_E = |general fields|·k,
P = |prior fields|·k, d_l the width going into tower layer l. sg = stop-gradient:
the gates learn from the loss but send no gradient into the general embedding E
(EPNet) or the EPNet output O_ep (PPNet).

Resolutions (not fixed by the paper, each a config flag):
- `domain_fields`: the domain-side features F_d, here the scenario id's embedding
  (msmt has no per-scenario statistics features). `domain_in_general` (default
  False): whether those fields are also part of the general input E (the paper's
  figure routes domain features through EPNet only).
- `prior_fields`: the personal priors (paper: user id, item id, author id); msmt has
  no author, so the default is user id, item id and the scenario id (each task
  tower is modulated per user, item and scenario); "item_category" is the closest
  author-like field of the default spec. `sg_priors` (default False, the paper's
  formula stops only O_ep; MMLRec also stops the priors).
- `pp_gate_context`: "epnet" (default, paper) feeds sg(O_ep) to every PPNet gate;
  "hidden" feeds sg(H_t^l), the tower's own hidden state, to the gate of layer l.
- Every Linear of a task tower, the logit layer included, has its input gated
  (as MMLRec); towers are `tower_dims` ReLU layers then Linear → 1.
- `ep_gate_hidden` (128, as MMLRec) and `pp_gate_hidden` (0 = the gated width, as
  MMLRec): the Gate NUs' hidden widths. `gate_scale` = γ = 2 (paper).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

from training.data import FeatureSpec
from training.layers import FeatureEmbedding, ParallelMLP
from training.models.base import ModelConfig, MsmtModel

_CONTEXTS = ("epnet", "hidden")


@dataclass
class PepnetConfig(ModelConfig):
    tower_dims: tuple[int, ...] = (256, 128)  # hidden widths of each task tower, then Linear → 1
    gate_scale: float = 2.0  # γ: gates lie in (0, γ)
    ep_gate_hidden: int = 128  # [R] EPNet Gate NU hidden width
    pp_gate_hidden: int = 0  # [R] PPNet Gate NU hidden width; 0 = width of the layer it gates
    domain_fields: tuple[str, ...] = ("scenario_id",)  # [R] EPNet's domain-side fields F_d
    domain_in_general: bool = False  # [R] domain fields also in the general embedding E
    prior_fields: tuple[str, ...] = ("user_id", "item_id", "scenario_id")  # [R] PPNet's personal priors
    sg_priors: bool = False  # [R] stop-gradient on the prior embeddings too (MMLRec does)
    pp_gate_context: str = "epnet"  # [R] "epnet": sg(O_ep) (paper); "hidden": sg(H_t^l)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.tower_dims = tuple(self.tower_dims)
        self.domain_fields, self.prior_fields = tuple(self.domain_fields), tuple(self.prior_fields)
        if any(d < 1 for d in self.tower_dims) or self.ep_gate_hidden < 1 or self.pp_gate_hidden < 0:
            raise ValueError(f"bad widths: towers {self.tower_dims}, gates {self.ep_gate_hidden}/{self.pp_gate_hidden}")
        if self.gate_scale <= 0:
            raise ValueError(f"gate_scale must be > 0, got {self.gate_scale}")
        if not self.domain_fields or not self.prior_fields:
            raise ValueError("domain_fields and prior_fields need at least one field each")
        if self.pp_gate_context not in _CONTEXTS:
            raise ValueError(f"pp_gate_context must be one of {_CONTEXTS}, got {self.pp_gate_context!r}")


class PepnetGateNU(nn.Module):
    """n parallel Gate Neural Units: γ · sigmoid(Linear(ReLU(Linear(x)))), values in (0, γ)."""

    def __init__(self, n: int, d_in: int, d_hidden: int, d_out: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.mlp = ParallelMLP(n, [d_in, d_hidden, d_out], activate_last=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x `(B, d_in)` (shared) or `(B, n, d_in)` → gates `(B, n, d_out)`."""
        return self.scale * torch.sigmoid(self.mlp(x))  # (B, n, d_out)


class Pepnet(MsmtModel):
    """Embeddings → EPNet (scenario gate on E) → T towers whose layers PPNet gates per user/item/scenario.

    Example::

        model = Pepnet(spec, PepnetConfig(tower_dims=(128, 64)))
        logits = model(batch)  # (B, T)
        logits, gates = model.forward_with_gates(batch)  # gates["epnet"] (B, D_E), gates["ppnet"][l] (B, T, d_l)
    """

    Config = PepnetConfig

    def __init__(self, spec: FeatureSpec, config: PepnetConfig) -> None:
        super().__init__(spec, config)
        missing = sorted(set(config.domain_fields + config.prior_fields) - set(spec.sparse_fields))
        if missing:
            raise ValueError(f"domain/prior fields {missing} are not sparse fields of the spec")
        k = config.emb_dim
        self.embedding = FeatureEmbedding(spec, k)
        domain = [spec.sparse_fields.index(name) for name in config.domain_fields]
        general = [i for i in range(self.embedding.n_fields) if config.domain_in_general or i not in domain]
        prior = [spec.sparse_fields.index(name) for name in config.prior_fields]
        self.register_buffer("domain_index", torch.tensor(domain), persistent=False)
        self.register_buffer("general_index", torch.tensor(general), persistent=False)
        self.register_buffer("prior_index", torch.tensor(prior), persistent=False)

        d_general, d_domain, d_prior = len(general) * k, len(domain) * k, len(prior) * k
        self.epnet = PepnetGateNU(1, d_domain + d_general, config.ep_gate_hidden, d_general, config.gate_scale)
        dims = [d_general, *config.tower_dims, 1]
        last = len(dims) - 2
        self.tower_layers = nn.ModuleList(
            ParallelMLP(self.n_tasks, [d_in, d_out], dropout=config.dropout, activate_last=i < last, norm=config.norm)
            for i, (d_in, d_out) in enumerate(pairwise(dims))
        )
        self.ppnet = nn.ModuleList()
        for d_l in dims[:-1]:
            d_context = d_general if config.pp_gate_context == "epnet" else d_l  # sg(O_ep) or sg(H_t^l)
            hidden = config.pp_gate_hidden or d_l
            self.ppnet.append(PepnetGateNU(self.n_tasks, d_prior + d_context, hidden, d_l, config.gate_scale))

    def forward_with_gates(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """batch → logits `(B, T)` and the gates: "epnet" `(B, D_E)`, "ppnet" a list of `(B, T, d_l)`."""
        fields = self.embedding(batch)  # (B, F, k)
        general = fields[:, self.general_index].flatten(1)  # (B, D_E)
        domain = fields[:, self.domain_index].flatten(1)  # (B, |F_d|*k)
        prior = fields[:, self.prior_index].flatten(1)  # (B, P)
        if self.config.sg_priors:
            prior = prior.detach()
        ep_gate = self.epnet(torch.cat([domain, general.detach()], dim=1)).squeeze(1)  # (B, 1, D_E) → (B, D_E)
        o_ep = ep_gate * general  # (B, D_E)
        h = o_ep.unsqueeze(1).expand(-1, self.n_tasks, -1)  # (B, T, D_E), H_t^0 = O_ep
        shared_context = torch.cat([prior, o_ep.detach()], dim=1)  # (B, P + D_E)
        pp_gates = []
        for gate, layer in zip(self.ppnet, self.tower_layers, strict=True):
            if self.config.pp_gate_context == "epnet":
                delta = gate(shared_context)  # (B, T, d_l)
            else:
                own = torch.cat([prior.unsqueeze(1).expand(-1, self.n_tasks, -1), h.detach()], dim=2)  # (B, T, P + d_l)
                delta = gate(own)  # (B, T, d_l)
            pp_gates.append(delta)
            h = layer(delta * h)  # (B, T, d_{l+1})
        return h.squeeze(-1), {"epnet": ep_gate, "ppnet": pp_gates}  # (B, T, 1) → (B, T)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch (see `TensorData.batches`) → logits `(B, T)`."""
        return self.forward_with_gates(batch)[0]


MODEL = Pepnet
DESCRIPTION = "PEPNet (Chang et al., KDD 2023): EPNet scenario gate on embeddings, PPNet prior gates on task towers"

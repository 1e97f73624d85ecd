"""Scoring a zoo model: what the registered model runs at serving time, and the gate on held-out rows.

Kept apart from the trainer so that a logged ranker ships the model and this, not
the training loop (pyproject's import contracts hold the line).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from training.data import TensorData


def by_request(model: nn.Module) -> bool:
    """Set-wise models (`batching = "request"`) see whole requests in every batch."""
    return getattr(model, "batching", "row") == "request"


@torch.inference_mode()
def predict(model: nn.Module, data: TensorData, batch_size: int = 8192) -> np.ndarray:
    """Probabilities `(N, T)` (float64) in the rows' own order, batch by batch on the model's device.

    Set-wise models are scored request by request (`batching = "request"`), which
    reorders rows; the result is put back in the data's order.
    """
    model.eval()
    device = next(model.parameters()).device
    plan = data.plan(batch_size, shuffle=False, by_request=by_request(model))
    out = [torch.sigmoid(model(batch)).double().cpu() for batch in data.iter_plan(plan, device=device)]
    if not out:
        return np.zeros((0, data.labels.shape[1]))
    probs = torch.cat(out)  # (N, T) in plan order
    if plan.order is not None:
        probs = torch.empty_like(probs).index_copy_(0, plan.order, probs)
    return probs.numpy()

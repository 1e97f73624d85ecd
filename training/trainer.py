"""Fit and score any zoo model on `TensorData`, on the GPU when there is one.

What bounds a small MSMT model on a GPU is per-step host work, so the epoch's
tensors move to the device once, batches are slices there, the optimizer is
fused, and the loss is read back only every `log_every` steps.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.data import TensorData


@dataclass
class TrainConfig:
    epochs: int = 2
    batch_size: int = 2048
    lr: float = 2e-3
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"  # "auto" → cuda when available, else cpu
    log_every: int = 50  # steps between loss read-backs (each one syncs the device)


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch, as passed to on_epoch
    device: str = "cpu"
    seconds: float = 0.0  # training time, validation excluded
    samples_per_s: float = 0.0


def _progress(total: int, desc: str):
    """A tqdm bar on a terminal; None when not a tty or tqdm is absent (torch, numpy, pyarrow suffice)."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc)


def resolve_device(name: str = "auto") -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)


def masked_bce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_t mean over unmasked rows of BCE(logit, label) → (total scalar, per-task `(T,)`).

    Masked rows are zeroed with `where`, so they get no gradient even if their label is garbage.
    """
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")  # (B, T)
    bce = torch.where(mask, bce, torch.zeros_like(bce))  # (B, T)
    per_task = bce.sum(0) / mask.sum(0).clamp(min=1)  # (T,)
    return per_task.sum(), per_task


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


@torch.inference_mode()
def _valid_loss(model: nn.Module, data: TensorData, batch_size: int) -> torch.Tensor:
    """Per-task mean BCE over all unmasked rows of a split `(T,)` (not a mean of batch means)."""
    device = next(model.parameters()).device
    sums = torch.zeros(data.labels.shape[1], device=device)
    counts = torch.zeros_like(sums)
    for batch in data.batches(batch_size, shuffle=False):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        bce = F.binary_cross_entropy_with_logits(model(batch), batch["labels"], reduction="none")  # (B, T)
        sums += torch.where(batch["label_mask"], bce, torch.zeros_like(bce)).sum(0)
        counts += batch["label_mask"].sum(0)
    return sums / counts.clamp(min=1)


def fit(
    model: nn.Module,
    train: TensorData,
    valid: TensorData | None,
    cfg: TrainConfig,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train `model` in place (it stays on the chosen device) and report per-epoch losses.

    Loss = masked per-task BCE total + every `model.extra_losses(batch, logits)` value.
    `on_epoch(epoch, metrics)` gets `train_loss`, `train_loss_<task>` / `<extra>`,
    `valid_loss_<task>` (when `valid`), `seconds` and `samples_per_s`.
    """
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(f"need epochs >= 1 and batch_size >= 1, got {cfg.epochs}, {cfg.batch_size}")
    if len(train) == 0:
        raise ValueError("empty training set")
    _seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    tasks = list(getattr(getattr(model, "spec", None), "tasks", [f"task{t}" for t in range(train.labels.shape[1])]))
    model.to(device)
    train = train.to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda"
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    n_steps = -(-len(train) // cfg.batch_size)
    result = FitResult(device=str(device))
    for epoch in range(cfg.epochs):
        model.train()
        started = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}  # summed on the device, read back once per log / epoch
        bar = _progress(n_steps, f"epoch {epoch + 1}/{cfg.epochs}")
        for step, batch in enumerate(train.batches(cfg.batch_size, shuffle=True, generator=generator), 1):
            logits = model(batch)
            total, per_task = masked_bce(logits, batch["labels"], batch["label_mask"])
            extra = model.extra_losses(batch, logits)
            loss = total + sum(extra.values()) if extra else total
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            terms = {"train_loss": loss, **{f"train_loss_{t}": per_task[i] for i, t in enumerate(tasks)}, **extra}
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.detach()
            if bar is not None:
                if cfg.log_every > 0 and step % cfg.log_every == 0:
                    bar.set_postfix(loss=f"{sums['train_loss'].item() / step:.4f}")
                bar.update()
        if bar is not None:
            bar.close()
        metrics = {name: float(value) / n_steps for name, value in sums.items()}  # syncs once
        seconds = time.perf_counter() - started
        result.seconds += seconds
        metrics.update(seconds=seconds, samples_per_s=len(train) / seconds)
        if valid is not None and len(valid):
            model.eval()
            valid_loss = _valid_loss(model, valid, cfg.batch_size * 4)
            metrics.update({f"valid_loss_{t}": float(valid_loss[i]) for i, t in enumerate(tasks)})
        result.history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    result.samples_per_s = len(train) * cfg.epochs / result.seconds
    model.eval()
    return result


@torch.inference_mode()
def predict(model: nn.Module, data: TensorData, batch_size: int = 8192) -> np.ndarray:
    """Probabilities `(N, T)` (float64) on the model's device, batch by batch."""
    model.eval()
    device = next(model.parameters()).device
    out = [
        torch.sigmoid(model({k: v.to(device, non_blocking=True) for k, v in batch.items()})).double().cpu()
        for batch in data.batches(batch_size, shuffle=False)
    ]
    if not out:
        return np.zeros((0, data.labels.shape[1]))
    return torch.cat(out).numpy()

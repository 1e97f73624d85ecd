"""Fit and score any zoo model on `TensorData`, on the GPU when there is one, on one or many ranks.

What bounds a small MSMT model on a GPU is per-step host work, so the split's
tensors move to the device once when they fit (else batches are gathered on the
host, pinned and copied asynchronously), each batch is one gather there, the
optimizer is fused (on the CPU too), the forward runs under bf16 autocast (on
the CPU only with `bf16_cpu`, where the CPU has native bf16), `compile` hands
the model to `torch.compile`, and the loss is read back only every `log_every` steps.

Under torchrun (see training.distributed) the model is wrapped in
DistributedDataParallel, every rank trains on its own shard (`TensorData.shard`)
for the same number of steps (the smallest over ranks: a rank's surplus tail
batch is skipped that epoch), and epoch metrics are averaged over ranks.

Batching follows the model: `batching = "request"` on the model class keeps
every request's rows in one batch (listwise losses); anything else is row batching.

Checkpoints (`checkpoint_dir`): every `checkpoint_every` steps and at each epoch
end, rank 0 writes the model, optimizer, LR schedule, every rank's RNG states,
the position (epoch, step, the epoch's visiting order) and the metrics so far;
`resume` continues from the last one, mid-epoch included, and ends where an
uninterrupted run would (bit-for-bit on the CPU).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training import checkpoint, distributed
from training.data import TensorData

SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    epochs: int = 2
    max_steps: int = 0  # stop after this many optimizer steps in all (0 = run every epoch to its end)
    batch_size: int = 2048  # rows per step over all ranks (each rank takes batch_size / world_size)
    lr: float = 2e-3
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"  # "auto" → cuda when available, else cpu
    log_every: int = 50  # steps between loss read-backs (each one syncs the device)
    bf16: bool = True  # bfloat16 autocast of the forward on CUDA
    bf16_cpu: bool = False  # … and on the CPU (needs native bf16: AVX512-BF16 or AMX; else an error)
    compile: bool = False  # torch.compile the model (its first steps pay the compilation)
    schedule: str = "constant"  # LR after warmup: "constant" or "cosine" (down to min_lr_ratio × lr at the end)
    warmup_steps: int = 0  # linear warmup from lr / warmup_steps to lr
    min_lr_ratio: float = 0.0
    patience: int = 0  # epochs without a lower validation loss before stopping; 0 = never stop early
    restore_best: bool = True  # with patience: end on the weights of the best validation epoch
    pin_memory: bool = True  # pinned host batches when the split stays on the host (CUDA only)
    device_budget: float = 0.5  # keep the split on the GPU when it takes at most this share of free memory
    checkpoint_dir: str = ""  # "" = no checkpoints
    checkpoint_every: int = 0  # steps between checkpoints; 0 = only at epoch ends
    resume: bool = True  # continue from checkpoint_dir's last checkpoint when there is one
    find_unused_parameters: bool = False  # DDP: models whose forward skips some parameters

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"need epochs >= 1 and batch_size >= 1, got {self.epochs}, {self.batch_size}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if min(self.max_steps, self.warmup_steps, self.patience, self.checkpoint_every) < 0:
            raise ValueError("max_steps, warmup_steps, patience and checkpoint_every must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch, as passed to on_epoch
    device: str = "cpu"
    seconds: float = 0.0  # training time, validation excluded
    samples_per_s: float = 0.0
    world_size: int = 1
    stopped_early: bool = False
    best_epoch: int | None = None  # with patience: the epoch whose weights the model ends with
    resumed_from: dict | None = None  # {"epoch", "step"} of the checkpoint this run continued


def _progress(total: int, desc: str):
    """A tqdm bar on a terminal; None when not a tty or tqdm is absent (torch, numpy, pyarrow suffice)."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc)


def _by_request(model: nn.Module) -> bool:
    """Set-wise models (`batching = "request"`) see whole requests in every batch."""
    return getattr(model, "batching", "row") == "request"


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


def epoch_generator(seed: int, rank: int, epoch: int) -> torch.Generator:
    """The shuffle of (seed, rank, epoch): recomputable, so a resumed run visits the same rows."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0]))


def lr_factor(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Multiplier of `cfg.lr` before optimizer step `step` (0-based): linear warmup, then constant / cosine."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(total_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (else autocast emulates it, slower than float32)."""
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)  # newer torch; the GPU machine's may lack it
    if get_capabilities is not None:
        capabilities = get_capabilities()
        return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether the forward runs under bf16 autocast on `device` (see `TrainConfig.bf16` / `bf16_cpu`)."""
    if device.type == "cuda":
        return cfg.bf16
    if cfg.bf16_cpu and not cpu_has_bf16():
        raise ValueError("bf16_cpu needs a CPU with native bf16 (AVX512-BF16 or AMX); this one has neither")
    return cfg.bf16_cpu


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam with the fused kernel (CUDA and CPU): one pass over each parameter's state per step."""
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def _place(data: TensorData, device: torch.device, cfg: TrainConfig) -> TensorData:
    """The whole split on the device when it fits the budget (batches are gathered from it there)."""
    if device.type != "cuda":
        return data.to(device)
    free, _ = torch.cuda.mem_get_info(device)
    if data.nbytes() <= cfg.device_budget * free:
        return data.to(device)
    return data.pin_memory() if cfg.pin_memory else data


@torch.inference_mode()
def _valid_loss(model: nn.Module, data: TensorData, batch_size: int, bf16: bool = False) -> torch.Tensor:
    """Per-task mean BCE over all unmasked rows of a split (summed over ranks) `(T,)`."""
    device = next(model.parameters()).device
    sums = torch.zeros(data.labels.shape[1], device=device)
    counts = torch.zeros_like(sums)
    for batch in data.batches(batch_size, shuffle=False, by_request=_by_request(model)):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(batch).float()
        bce = F.binary_cross_entropy_with_logits(logits, batch["labels"], reduction="none")  # (B, T)
        sums += torch.where(batch["label_mask"], bce, torch.zeros_like(bce)).sum(0)
        counts += batch["label_mask"].sum(0)
    distributed.all_reduce_(sums)
    distributed.all_reduce_(counts)
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
    `on_epoch(epoch, metrics)` gets `train_loss`, `train_loss_<task>` / `<extra>`, `lr`,
    `valid_loss` and `valid_loss_<task>` (when `valid`), `seconds` and `samples_per_s`.
    Under torchrun, `train` / `valid` are this rank's shards and metrics cover all ranks.
    """
    if len(train) == 0:
        raise ValueError("empty training set")
    ctx = distributed.current()
    _seed_everything(cfg.seed + ctx.rank)
    device = ctx.device(cfg.device) if ctx.active else resolve_device(cfg.device)
    tasks = list(getattr(getattr(model, "spec", None), "tasks", [f"task{t}" for t in range(train.labels.shape[1])]))
    by_request = _by_request(model)
    local_batch = max(1, cfg.batch_size // ctx.world_size)
    bf16 = use_bf16(cfg, device)
    model.to(device)
    train = _place(train, device, cfg)
    net: nn.Module = model
    if ctx.active:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.find_unused_parameters,
        )
    if cfg.compile:
        blocker = model.compile_blocker() if hasattr(model, "compile_blocker") else None
        if blocker:
            raise ValueError(f"compile: {blocker}")
        net = torch.compile(net)
    optimizer = make_optimizer(model.parameters(), cfg)
    total_steps = cfg.epochs * -(-len(train) // local_batch)  # the schedule's horizon (rows / batch)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg))
    result = FitResult(device=str(device), world_size=ctx.world_size)
    state = {"epoch": 0, "step": 0, "sums": {}, "rows": 0, "best": math.inf, "bad_epochs": 0, "best_state": None}

    saved = checkpoint.latest(cfg.checkpoint_dir) if cfg.resume else None
    if saved is not None:
        ckpt = checkpoint.load(saved)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        rngs = ckpt["rng"]
        if len(rngs) == ctx.world_size:
            checkpoint.set_rng_state(rngs[ctx.rank])
        result.history = list(ckpt["history"])
        state.update({k: ckpt[k] for k in ("epoch", "step", "rows", "best", "bad_epochs", "best_state")})
        state["sums"] = {k: v.to(device) for k, v in ckpt["sums"].items()}
        result.resumed_from = {"epoch": ckpt["epoch"], "step": ckpt["step"]}
        if ckpt["stopped"]:
            state["epoch"] = cfg.epochs

    def save(order: torch.Tensor | None, stopped: bool = False) -> None:
        rngs = distributed.gather_objects(checkpoint.rng_state())  # every rank takes part
        if not (cfg.checkpoint_dir and ctx.is_main):
            return
        checkpoint.save(
            checkpoint.path_in(cfg.checkpoint_dir),
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rngs,
                "order": order,  # rank 0's visiting order of the epoch in progress (checked on resume)
                "history": result.history,
                "stopped": stopped,
                "config": asdict(cfg),
                "world_size": ctx.world_size,
                **{k: v for k, v in state.items() if k != "sums"},
                "sums": {k: v.detach().cpu() for k, v in state["sums"].items()},
            },
        )

    stopped = False
    for epoch in range(state["epoch"], cfg.epochs):
        model.train()
        plan = train.plan(local_batch, shuffle=True, generator=epoch_generator(cfg.seed, ctx.rank, epoch),
                          by_request=by_request)  # fmt: skip
        n_steps = distributed.min_int(len(plan), device)
        first = state["step"] if epoch == state["epoch"] else 0
        if cfg.max_steps:  # steps left = the limit minus the steps taken before this epoch
            n_steps = min(n_steps, cfg.max_steps - (scheduler.last_epoch - first))
            if n_steps <= 0:
                break
        same_order = not first or saved is None or not ctx.is_main or ckpt["order"] is None
        if not (same_order or torch.equal(ckpt["order"], plan.order)):
            raise ValueError(f"{saved} was written for other training data (the epoch's order differs)")
        if first == 0:
            state["sums"], state["rows"] = {}, 0
        started = time.perf_counter()
        bar = _progress(n_steps, f"epoch {epoch + 1}/{cfg.epochs}")
        if bar is not None:
            bar.update(first)
        batches = train.iter_plan(plan, first, n_steps, device=device, pin_memory=cfg.pin_memory)
        for step, batch in enumerate(batches, first + 1):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = net(batch)
            logits = logits.float()
            total, per_task = masked_bce(logits, batch["labels"], batch["label_mask"])
            extra = model.extra_losses(batch, logits)
            loss = total + sum(extra.values()) if extra else total
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            terms = {"train_loss": loss, **{f"train_loss_{t}": per_task[i] for i, t in enumerate(tasks)}, **extra}
            sums = state["sums"]
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float()
            state["step"], state["rows"] = step, state["rows"] + len(batch["labels"])
            if bar is not None:
                if cfg.log_every > 0 and step % cfg.log_every == 0:
                    bar.set_postfix(loss=f"{sums['train_loss'].item() / step:.4f}")
                bar.update()
            if cfg.checkpoint_every and scheduler.last_epoch % cfg.checkpoint_every == 0 and step < n_steps:
                save(plan.order)
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - started
        result.seconds += seconds
        names = sorted(state["sums"])
        packed = torch.stack([state["sums"][k] for k in names] + [torch.tensor(float(state["rows"]), device=device)])
        packed = distributed.all_reduce_(packed).cpu()  # one sync (and one collective) per epoch
        metrics = {name: float(packed[i]) / (n_steps * ctx.world_size) for i, name in enumerate(names)}
        metrics.update(lr=scheduler.get_last_lr()[0], seconds=seconds, samples_per_s=float(packed[-1]) / seconds)
        if valid is not None and len(valid):
            model.eval()
            valid_loss = _valid_loss(model, valid, local_batch * 4, bf16)
            metrics["valid_loss"] = float(valid_loss.sum())
            metrics.update({f"valid_loss_{t}": float(valid_loss[i]) for i, t in enumerate(tasks)})
            if cfg.patience:
                if metrics["valid_loss"] < state["best"]:
                    state["best"], state["bad_epochs"] = metrics["valid_loss"], 0
                    if cfg.restore_best:
                        state["best_state"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                else:
                    state["bad_epochs"] += 1
                stopped = state["bad_epochs"] >= cfg.patience
        result.history.append(metrics)
        state["epoch"], state["step"] = epoch + 1, 0
        save(None, stopped)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if stopped:
            break
    result.stopped_early = stopped or (saved is not None and bool(ckpt["stopped"]))
    if cfg.patience and state["best_state"] is not None:
        result.best_epoch = min(range(len(result.history)), key=lambda e: result.history[e]["valid_loss"])
        model.load_state_dict(copy.deepcopy(state["best_state"]))
    if result.history:
        result.samples_per_s = sum(h["samples_per_s"] * h["seconds"] for h in result.history) / max(
            sum(h["seconds"] for h in result.history), 1e-9
        )
    model.eval()
    return result


@torch.inference_mode()
def predict(model: nn.Module, data: TensorData, batch_size: int = 8192) -> np.ndarray:
    """Probabilities `(N, T)` (float64) in the rows' own order, batch by batch on the model's device.

    Set-wise models are scored request by request (`batching = "request"`), which
    reorders rows; the result is put back in the data's order.
    """
    model.eval()
    device = next(model.parameters()).device
    plan = data.plan(batch_size, shuffle=False, by_request=_by_request(model))
    out = [torch.sigmoid(model(batch)).double().cpu() for batch in data.iter_plan(plan, device=device)]
    if not out:
        return np.zeros((0, data.labels.shape[1]))
    probs = torch.cat(out)  # (N, T) in plan order
    if plan.order is not None:
        probs = torch.empty_like(probs).index_copy_(0, plan.order, probs)
    return probs.numpy()


def score_cells(model: nn.Module, data: TensorData, scenario_names, tasks) -> list[dict]:
    """Per scenario × task rows, positives, AUC and logloss of `model` on `data` (see evaluate.cell_metrics)."""
    from training.evaluate import cell_metrics

    probs = predict(model, data)
    return cell_metrics(
        probs, data.labels.numpy(), data.label_mask.numpy(), data.scenario.numpy(), scenario_names, tasks
    )

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

Checkpoints (`checkpoint_dir`: a local directory or `s3://…`, through msmt.storage):
every `checkpoint_every` steps and at each epoch end, rank 0 writes the model,
optimizer, LR schedule, every rank's RNG states, the position (epoch, step, the
epoch's visiting order) and the metrics so far; `resume` continues from the last
one, mid-epoch included, and ends where an uninterrupted run would (bit-for-bit
on the CPU).

`sparse_embeddings` gives the big id tables (`layers.EmbeddingTable`) row-sparse
gradients and a row-wise optimiser of their own (`make_optimizers`); the dense
parameters keep the fused Adam, and both follow the LR schedule and are checkpointed.
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
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from msmt.settings import Settings
from training import checkpoint, distributed
from training.data import EpochPlan, TensorData
from training.layers import EmbeddingTable
from training.scoring import by_request

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
    sparse_embeddings: bool = False  # id tables: sparse gradients + SparseAdam, no weight decay (see make_optimizers)

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


def make_optimizers(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    """The dense parameters' fused Adam and, with `cfg.sparse_embeddings`, the id tables' SparseAdam.

    Dense Adam reads and writes every row of a table and of its two moments on every step,
    though a batch touches a few thousand rows of millions. With the option the tables give
    sparse gradients (the switch is made here, before any DDP wrapping, which reads it) and
    `torch.optim.SparseAdam` ("lazy Adam") updates only the touched rows and their moments;
    a row's moments then decay only on the steps that touch it, the usual trade for big tables.
    SparseAdam rather than a row-wise Adagrad (one accumulator per row, less state): it keeps
    Adam's per-coordinate step, so `lr` and the schedule mean the same for both halves and the
    option needs no re-tuning. The tables get no weight decay (dense parameters keep `weight_decay`):
    SparseAdam has none, and decaying only touched rows would shrink frequent ids more than rare
    ones. Without the option the tables are set back to dense, so a model refitted without it
    trains as before.
    """
    tables = [m for m in model.modules() if isinstance(m, EmbeddingTable)]
    for table in tables:
        table.sparse = cfg.sparse_embeddings
    if not cfg.sparse_embeddings:
        return make_optimizer(model.parameters(), cfg), None
    if not tables:
        raise ValueError(f"sparse_embeddings: {type(model).__name__} has no EmbeddingTable to make sparse")
    in_tables = {id(t.weight) for t in tables}
    dense = [p for p in model.parameters() if id(p) not in in_tables]
    return make_optimizer(dense, cfg), torch.optim.SparseAdam([t.weight for t in tables], lr=cfg.lr)


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
    for batch in data.batches(batch_size, shuffle=False, by_request=by_request(model)):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(batch).float()
        bce = F.binary_cross_entropy_with_logits(logits, batch["labels"], reduction="none")  # (B, T)
        sums += torch.where(batch["label_mask"], bce, torch.zeros_like(bce)).sum(0)
        counts += batch["label_mask"].sum(0)
    distributed.all_reduce_(sums)
    distributed.all_reduce_(counts)
    return sums / counts.clamp(min=1)


@dataclass
class EarlyStopping:
    """Patience on the validation loss; with `restore_best`, a CPU copy of the best epoch's weights."""

    patience: int  # 0 = never stop early
    restore_best: bool
    best: float = math.inf
    bad_epochs: int = 0
    best_state: dict[str, torch.Tensor] | None = None

    def update(self, valid_loss: float, model: nn.Module) -> bool:
        """Record an epoch's validation loss; whether to stop training now."""
        if not self.patience:
            return False
        if valid_loss < self.best:
            self.best, self.bad_epochs = valid_loss, 0
            if self.restore_best:
                self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def restore(self, model: nn.Module, history: list[dict[str, float]]) -> int | None:
        """Put the best epoch's weights back into `model`; that epoch (None when none were kept)."""
        if not (self.patience and self.best_state is not None):
            return None
        model.load_state_dict(copy.deepcopy(self.best_state))
        return min(range(len(history)), key=lambda e: history[e]["valid_loss"])


@dataclass
class Training:
    """What one `fit` trains with, fixed for the whole run."""

    model: nn.Module
    net: nn.Module  # what steps: the model, wrapped in DDP and / or compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    cfg: TrainConfig
    settings: Settings  # checkpoint I/O
    ctx: distributed.DistContext
    device: torch.device
    bf16: bool
    tasks: list[str]
    local_batch: int  # this rank's rows per step
    sparse_optimizer: torch.optim.Optimizer | None = None  # the id tables' (`sparse_embeddings`)
    sparse_scheduler: torch.optim.lr_scheduler.LambdaLR | None = None  # the same schedule, for it

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer] + ([self.sparse_optimizer] if self.sparse_optimizer is not None else [])

    def schedulers(self) -> list[torch.optim.lr_scheduler.LambdaLR]:
        return [self.scheduler] + ([self.sparse_scheduler] if self.sparse_scheduler is not None else [])


@dataclass
class TrainState:
    """Where a run stands: with the model, optimizer and schedule, all that resuming it needs."""

    early: EarlyStopping
    epoch: int = 0  # the epoch in progress (the next one when `step` is 0)
    step: int = 0  # its steps done
    rows: int = 0  # this rank's rows in those steps
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # this rank's loss terms summed over those steps
    order: torch.Tensor | None = None  # the epoch's visiting order, None between epochs (rank 0's is checked on resume)
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per finished epoch
    stopped: bool = False  # early stopping ended the run

    def save(self, run: Training) -> None:
        """Checkpoint with every rank's RNG states (all ranks must call it); rank 0 writes."""
        if not run.cfg.checkpoint_dir:
            return
        rngs = distributed.gather_objects(checkpoint.rng_state())
        if not run.ctx.is_main:
            return
        state = {
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "rng": rngs,
            "order": self.order,
            "history": self.history,
            "stopped": self.stopped,
            "config": asdict(run.cfg),
            "world_size": run.ctx.world_size,
            "epoch": self.epoch,
            "step": self.step,
            "rows": self.rows,
            "best": self.early.best,
            "bad_epochs": self.early.bad_epochs,
            "best_state": self.early.best_state,
            "sums": {k: v.detach().cpu() for k, v in self.sums.items()},
        }
        if run.sparse_optimizer is not None:
            state["sparse_optimizer"] = run.sparse_optimizer.state_dict()
            state["sparse_scheduler"] = run.sparse_scheduler.state_dict()
        checkpoint.save(run.settings, checkpoint.path_in(run.cfg.checkpoint_dir), state)

    @classmethod
    def restore(cls, ckpt: dict, run: Training) -> TrainState:
        """Load a checkpoint into the model, optimizer and schedule (and this rank's RNGs, when the
        world size is the same); the position it holds."""
        if ("sparse_optimizer" in ckpt) != (run.sparse_optimizer is not None):
            raise ValueError(f"the checkpoint was written with sparse_embeddings={'sparse_optimizer' in ckpt}, "
                             f"this run has {run.cfg.sparse_embeddings}: resume with the same setting")  # fmt: skip
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        if run.sparse_optimizer is not None:
            run.sparse_optimizer.load_state_dict(ckpt["sparse_optimizer"])
            run.sparse_scheduler.load_state_dict(ckpt["sparse_scheduler"])
        if len(ckpt["rng"]) == run.ctx.world_size:
            checkpoint.set_rng_state(ckpt["rng"][run.ctx.rank])
        return cls(
            EarlyStopping(run.cfg.patience, run.cfg.restore_best, ckpt["best"], ckpt["bad_epochs"], ckpt["best_state"]),
            epoch=ckpt["epoch"],
            step=ckpt["step"],
            rows=ckpt["rows"],
            sums={k: v.to(run.device) for k, v in ckpt["sums"].items()},
            order=ckpt["order"],
            history=list(ckpt["history"]),
            stopped=bool(ckpt["stopped"]),
        )


def _prepare(model: nn.Module, train: TensorData, cfg: TrainConfig, settings: Settings) -> tuple[Training, TensorData]:
    """Model and split on the device, DDP / compile wrappers, optimizer and LR schedule."""
    ctx = distributed.current()
    device = ctx.device(cfg.device) if ctx.active else resolve_device(cfg.device)
    tasks = list(getattr(getattr(model, "spec", None), "tasks", [f"task{t}" for t in range(train.labels.shape[1])]))
    local_batch = max(1, cfg.batch_size // ctx.world_size)
    bf16 = use_bf16(cfg, device)
    model.to(device)
    train = _place(train, device, cfg)
    optimizer, sparse_optimizer = make_optimizers(model, cfg)  # before DDP: it reads which tables are sparse
    if sparse_optimizer is not None and ctx.active and dist.get_backend() != "gloo":
        raise ValueError(f"sparse_embeddings under DDP is supported on the gloo backend only (DDP all-reduces "
                         f"the sparse gradients; tested there), not {dist.get_backend()}")  # fmt: skip
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
    total_steps = cfg.epochs * -(-len(train) // local_batch)  # the schedule's horizon (rows / batch)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)

    def schedule(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, total_steps, cfg))

    scheduler = schedule(optimizer)
    sparse_scheduler = None if sparse_optimizer is None else schedule(sparse_optimizer)  # the same schedule
    run = Training(model, net, optimizer, scheduler, cfg, settings, ctx, device, bf16, tasks, local_batch,
                   sparse_optimizer, sparse_scheduler)  # fmt: skip
    return run, train


def _step(run: Training, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One optimizer step on `batch`; its loss terms (total, per task, the model's extra losses)."""
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.bf16):
        logits = run.net(batch)
    logits = logits.float()
    total, per_task = masked_bce(logits, batch["labels"], batch["label_mask"])
    extra = run.model.extra_losses(batch, logits)
    loss = total + sum(extra.values()) if extra else total
    for optimizer in run.optimizers():
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for optimizer in run.optimizers():
        optimizer.step()
    for scheduler in run.schedulers():
        scheduler.step()
    return {"train_loss": loss, **{f"train_loss_{t}": per_task[i] for i, t in enumerate(run.tasks)}, **extra}


def _train_epoch(
    run: Training, state: TrainState, train: TensorData, plan: EpochPlan, n_steps: int
) -> dict[str, float]:
    """Steps `state.step + 1 … n_steps` of epoch `state.epoch`, checkpointing every `checkpoint_every`;
    the epoch's training metrics over all ranks (one device sync and one collective: the losses
    are summed on the device)."""
    cfg, first = run.cfg, state.step
    run.model.train()
    state.order = plan.order
    if first == 0:
        state.sums, state.rows = {}, 0
    started = time.perf_counter()
    bar = _progress(n_steps, f"epoch {state.epoch + 1}/{cfg.epochs}")
    if bar is not None:
        bar.update(first)
    batches = train.iter_plan(plan, first, n_steps, device=run.device, pin_memory=cfg.pin_memory)
    for step, batch in enumerate(batches, first + 1):
        for name, value in _step(run, batch).items():
            state.sums[name] = state.sums.get(name, 0.0) + value.detach().float()
        state.step, state.rows = step, state.rows + len(batch["labels"])
        if bar is not None:
            if cfg.log_every > 0 and step % cfg.log_every == 0:
                bar.set_postfix(loss=f"{state.sums['train_loss'].item() / step:.4f}")
            bar.update()
        if cfg.checkpoint_every and run.scheduler.last_epoch % cfg.checkpoint_every == 0 and step < n_steps:
            state.save(run)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    names = sorted(state.sums)
    packed = torch.stack([state.sums[k] for k in names] + [torch.tensor(float(state.rows), device=run.device)])
    packed = distributed.all_reduce_(packed).cpu()
    metrics = {name: float(packed[i]) / (n_steps * run.ctx.world_size) for i, name in enumerate(names)}
    metrics.update(lr=run.scheduler.get_last_lr()[0], seconds=seconds, samples_per_s=float(packed[-1]) / seconds)
    return metrics


def _validate(run: Training, valid: TensorData) -> dict[str, float]:
    """`valid_loss` (summed over tasks) and `valid_loss_<task>` on the whole held-out split (all ranks)."""
    run.model.eval()
    valid_loss = _valid_loss(run.model, valid, run.local_batch * 4, run.bf16)
    return {
        "valid_loss": float(valid_loss.sum()),
        **{f"valid_loss_{t}": float(valid_loss[i]) for i, t in enumerate(run.tasks)},
    }


def fit(
    model: nn.Module,
    train: TensorData,
    valid: TensorData | None,
    cfg: TrainConfig,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    *,
    settings: Settings | None = None,
) -> FitResult:
    """Train `model` in place (it stays on the chosen device) and report per-epoch losses.

    Loss = masked per-task BCE total + every `model.extra_losses(batch, logits)` value.
    `on_epoch(epoch, metrics)` gets `train_loss`, `train_loss_<task>` / `<extra>`, `lr`,
    `valid_loss` and `valid_loss_<task>` (when `valid`), `seconds` and `samples_per_s`.
    Under torchrun, `train` / `valid` are this rank's shards and metrics cover all ranks.
    `settings` says where checkpoints are read and written (default: the local profile).
    """
    if len(train) == 0:
        raise ValueError("empty training set")
    ctx = distributed.current()
    _seed_everything(cfg.seed + ctx.rank)
    run, train = _prepare(model, train, cfg, settings or Settings())
    saved = checkpoint.latest(run.settings, cfg.checkpoint_dir) if cfg.resume else None
    if saved is None:
        state = TrainState(EarlyStopping(cfg.patience, cfg.restore_best))
    else:
        state = TrainState.restore(checkpoint.load(run.settings, saved), run)
    result = FitResult(device=str(run.device), world_size=ctx.world_size)
    if saved is not None:
        result.resumed_from = {"epoch": state.epoch, "step": state.step}

    while state.epoch < cfg.epochs and not state.stopped:
        plan = train.plan(run.local_batch, shuffle=True, generator=epoch_generator(cfg.seed, ctx.rank, state.epoch),
                          by_request=by_request(model))  # fmt: skip
        n_steps = distributed.min_int(len(plan), run.device)
        if cfg.max_steps:  # steps left = the limit minus the steps taken before this epoch
            n_steps = min(n_steps, cfg.max_steps - (run.scheduler.last_epoch - state.step))
            if n_steps <= 0:
                break
        resumed_order = state.order if state.step and ctx.is_main else None  # mid-epoch: same data, same order
        if resumed_order is not None and not torch.equal(resumed_order, plan.order):
            raise ValueError(f"{saved} was written for other training data (the epoch's order differs)")
        metrics = _train_epoch(run, state, train, plan, n_steps)
        result.seconds += metrics["seconds"]
        if valid is not None and len(valid):
            metrics.update(_validate(run, valid))
            state.stopped = state.early.update(metrics["valid_loss"], model)
        state.history.append(metrics)
        state.epoch, state.step, state.order = state.epoch + 1, 0, None
        state.save(run)
        if on_epoch is not None:
            on_epoch(state.epoch - 1, metrics)

    result.history, result.stopped_early = state.history, state.stopped
    result.best_epoch = state.early.restore(model, state.history)
    if result.history:
        result.samples_per_s = sum(h["samples_per_s"] * h["seconds"] for h in result.history) / max(
            sum(h["seconds"] for h in result.history), 1e-9
        )
    model.eval()
    return result

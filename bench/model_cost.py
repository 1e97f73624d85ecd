"""What one training row costs each zoo model: MFLOP (forward + backward) and training samples/s.

    OMP_NUM_THREADS=1 .venv/bin/python bench/model_cost.py --models mdl hinet onerank causalint
    OMP_NUM_THREADS=1 .venv/bin/python bench/model_cost.py --root /tmp/before   # another checkout's models

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on one training step (matmuls,
convolutions and attention; element-wise ops are not counted) and divided by the batch's rows.
samples/s is the plain training step (forward, masked BCE plus the model's extra losses, backward,
Adam) on `training.data.synthetic` rows, msmt's default spec, one thread, timed after warm-up steps.
`--root` imports `training` from another checkout (an older commit as a git worktree), so the same
script measures before and after a change. Imports torch and numpy only.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

TASKS = ("click", "conversion")


def _step(model, optimizer, batch: dict[str, torch.Tensor], masked_bce) -> None:
    logits = model(batch).float()
    loss, _ = masked_bce(logits, batch["labels"], batch["label_mask"])
    loss = loss + sum(model.extra_losses(batch, logits).values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def measure(name: str, batch_size: int, steps: int, warmup: int) -> dict:
    from training.data import default_spec, synthetic
    from training.models import build_model
    from training.trainer import masked_bce

    # Commits before the house took the task names as a second argument.
    takes_tasks = "tasks" in inspect.signature(default_spec).parameters
    spec = default_spec(4, TASKS) if takes_tasks else default_spec(4)
    torch.manual_seed(0)
    model = build_model(name, spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = synthetic(spec, batch_size * (steps + warmup + 1), seed=0)
    request = getattr(model, "batching", "row") == "request"
    batches = iter(
        data.batches(batch_size, shuffle=True, generator=torch.Generator().manual_seed(0), by_request=request)
    )
    model.train()
    first = next(batches)
    with FlopCounterMode(display=False) as counter:
        _step(model, optimizer, first, masked_bce)
    flops_per_row = counter.get_total_flops() / len(first["labels"])
    for _ in range(warmup):
        _step(model, optimizer, next(batches), masked_bce)
    rows, started = 0, time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        _step(model, optimizer, batch, masked_bce)
        rows += len(batch["labels"])
    return {
        "model": name,
        "mflop_per_row": flops_per_row / 1e6,
        "samples_per_s": rows / (time.perf_counter() - started),
        "params": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mmoe", "mdl", "hinet", "onerank", "causalint"])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=20, help="steps timed")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(args.root))
    torch.set_num_threads(args.threads)
    print(f"models of {args.root}, torch {torch.__version__}, {args.threads} thread(s), batch {args.batch_size}")
    print("| model | MFLOP / row | samples/s | params |\n|---|---|---|---|")
    for name in args.models:
        r = measure(name, args.batch_size, args.steps, args.warmup)
        print(f"| {name} | {r['mflop_per_row']:.2f} | {r['samples_per_s']:,.0f} | {r['params']:,} |", flush=True)


if __name__ == "__main__":
    main()

"""Training throughput: msmt's tensor data path vs the common per-row Dataset + DataLoader pattern.

    python3 bench/train_throughput.py --rows 200000 --workers 1,2

For each model (MMoE, and HiNet / MDL when their files exist) and each worker
count, trains one epoch on `training.data.synthetic` rows twice: through
`training.trainer.fit` (whole split as tensors, slices, fused optimizer, bf16 on
CUDA) and through a per-row `Dataset` whose `__getitem__` returns one row's
tensors, batched by `DataLoader` (`DistributedSampler` with 2 workers), same
model, loss and optimizer. Each measurement runs in a fresh process (its peak
RSS is its own); 2 workers are 2 gloo / NCCL ranks on one machine. Prints a
markdown table (samples/s over all ranks, peak memory of the training process
over its memory after imports, against 2× the split's compact size) and the
machine. On CUDA it adds GPU utilisation (nvidia-smi's, when pynvml is there)
and the msmt path without bf16. Imports torch, numpy and pyarrow only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from training import distributed  # noqa: E402
from training.data import default_spec, synthetic  # noqa: E402
from training.models import REGISTRY, build_model  # noqa: E402
from training.trainer import TrainConfig, fit, masked_bce, resolve_device  # noqa: E402

CANDIDATES = ("mmoe", "hinet", "mdl")


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _reset_peak() -> None:
    """Linux: restart the peak-RSS counter (VmHWM), so data generation's temporaries do not count."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_mb() -> float:
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RowDataset(torch.utils.data.Dataset):
    """The usual pattern: one row's tensors per `__getitem__`, collated by the DataLoader."""

    def __init__(self, data) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        d = self.data
        return {"sparse": d.sparse[i], "dense": d.dense[i], "seq": d.seq[i], "scenario": d.scenario[i],
                "labels": d.labels[i], "label_mask": d.label_mask[i], "group": d.group[i]}  # fmt: skip


def _rowwise(model, data, batch_size: int, device, max_steps: int, world: int) -> tuple[float, int]:
    """Seconds and rows of at most `max_steps` steps of the per-row pattern (DDP when `world` > 1)."""
    net = model.to(device)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    sampler = torch.utils.data.DistributedSampler(RowDataset(data), shuffle=True) if world > 1 else None
    loader = torch.utils.data.DataLoader(RowDataset(data), batch_size=batch_size, shuffle=sampler is None,
                                         sampler=sampler, pin_memory=device.type == "cuda")  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, fused=device.type == "cuda")
    rows, started = 0, time.perf_counter()
    for step, batch in enumerate(loader):
        if step == max_steps:
            break
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        total, _ = masked_bce(net(batch), batch["labels"], batch["label_mask"])
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        rows += len(batch["labels"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, rows


def _gpu_utilisation() -> float | None:
    try:
        return float(torch.cuda.utilization())
    except Exception:  # pynvml absent
        return None


def child(args: argparse.Namespace) -> None:
    """One measurement in this process (rank `RANK` of `WORLD_SIZE`); rank 0 prints a JSON line."""
    torch.set_num_threads(args.threads)
    ctx = distributed.init_from_env()
    base_mb = _status_mb("VmRSS") or _peak_mb()  # after imports, before the data
    spec = default_spec(4, ("click", "conversion"))
    full = synthetic(spec, args.rows, seed=0)
    compact_mb = full.nbytes() / 2**20
    data = full.shard(ctx.rank, ctx.world_size)
    del full
    torch.manual_seed(0)
    model = build_model(args.model, spec)
    device = ctx.device(args.device) if ctx.active else resolve_device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _reset_peak()
    utilisation = None
    if args.path == "msmt":
        cfg = TrainConfig(epochs=1, batch_size=args.batch_size, device=args.device, bf16=not args.no_bf16)
        result = fit(model, data, None, cfg)
        utilisation = _gpu_utilisation() if device.type == "cuda" else None
        seconds, rows = result.seconds, result.history[-1]["samples_per_s"] * result.seconds / ctx.world_size
    else:
        seconds, rows = _rowwise(
            model, data, args.batch_size // ctx.world_size, device, args.max_row_steps, ctx.world_size
        )
    rates = distributed.gather_objects(rows / seconds)
    peaks = distributed.gather_objects(_peak_mb() - base_mb)  # data + everything training added
    if ctx.is_main:
        out = {"model": args.model, "path": args.path, "workers": ctx.world_size, "bf16": not args.no_bf16,
               "samples_per_s": sum(rates), "peak_mb": max(peaks), "compact_mb": compact_mb,
               "gpu_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
               "gpu_util": utilisation}  # fmt: skip
        print("RESULT " + json.dumps(out), flush=True)
    distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(args: argparse.Namespace, model: str, path: str, workers: int, no_bf16: bool = False) -> dict:
    argv = [__file__, "--child", "--model", model, "--path", path, "--rows", str(args.rows),
            "--batch-size", str(args.batch_size), "--device", args.device, "--threads", str(args.threads),
            "--max-row-steps", str(args.max_row_steps)] + (["--no-bf16"] if no_bf16 else [])  # fmt: skip
    if workers == 1:
        command = [sys.executable, *argv]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={workers}",
                   f"--master-port={_free_port()}", *argv]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{model}/{path}/{workers} failed:\n{done.stderr[-3000:]}")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.node()}: {os.cpu_count()} logical CPUs ({cpu}), {gpu}, Python {platform.python_version()}, "
            f"torch {torch.__version__}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--workers", default="1,2", help="comma-separated rank counts")
    parser.add_argument("--models", default=",".join(CANDIDATES), help="those with a file in training/models run")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    parser.add_argument("--max-row-steps", type=int, default=30, help="steps timed for the per-row pattern")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--no-bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    models = [m for m in args.models.split(",") if m in REGISTRY]
    rows = []
    for model in models:
        for workers in [int(w) for w in args.workers.split(",")]:
            fast, slow = measure(args, model, "msmt", workers), measure(args, model, "rowwise", workers)
            fp32 = measure(args, model, "msmt", workers, no_bf16=True) if cuda else None
            rows.append((fast, slow, fp32))
            print(f"# {model} × {workers}: {fast['samples_per_s']:,.0f} vs {slow['samples_per_s']:,.0f} rows/s",
                  file=sys.stderr, flush=True)  # fmt: skip
    print(f"\n{args.rows:,} synthetic rows, batch {args.batch_size}, 1 epoch; {machine()}\n")
    head = "| model | ranks | msmt rows/s | per-row rows/s | speed-up | peak MB msmt / per-row | 2× compact MB |"
    print(head + (" GPU util % | GPU peak MB | bf16 speed-up |" if cuda else ""))
    print("|" + "---|" * (head.count("|") - 1 + (3 if cuda else 0)))
    for fast, slow, fp32 in rows:
        speed_up = fast["samples_per_s"] / slow["samples_per_s"]
        peaks = f"{fast['peak_mb']:.0f} / {slow['peak_mb']:.0f}"
        line = (f"| {fast['model']} | {fast['workers']} | {fast['samples_per_s']:,.0f} | {slow['samples_per_s']:,.0f} "
                f"| {speed_up:.1f}× | {peaks} | {2 * fast['compact_mb']:.0f} |")  # fmt: skip
        if fp32 is not None:
            util = "n/a" if fast["gpu_util"] is None else f"{fast['gpu_util']:.0f}"
            line += f" {util} | {fast['gpu_peak_mb']:.0f} | {fast['samples_per_s'] / fp32['samples_per_s']:.2f}× |"
        print(line)


if __name__ == "__main__":
    main()

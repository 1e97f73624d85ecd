"""Training throughput: msmt's tensor data path vs the common per-row Dataset + DataLoader patterns.

    python3 bench/train_throughput.py                      # MMoE, HiNet, MDL; 1 and 2 ranks
    python3 bench/train_throughput.py --models mmoe --sparse-fields 16 --batch-size 8192   # the GPU target
    python3 bench/train_throughput.py --models mmoe --workers 1 --sparse-embeddings --id-vocab 500000

For each model, rank count and precision (float32; bf16 too where the device
runs it natively), trains `--max-steps` steps on `training.data.synthetic` rows
three ways, with the same model, loss, fused Adam and autocast:

- msmt: `training.trainer.fit` (the split as tensors, one gather per batch);
- per-row tensors: a `Dataset` whose `__getitem__` returns one row of msmt's
  stacked tensors, batched by `DataLoader` (the cheapest per-row variant);
- per-row columns: torch-rechub's `TorchDataset` pattern, a dict of per-column
  arrays whose `__getitem__` returns one row's values, collated by `DataLoader`
  and stacked into the model's batch by the training loop.

DataLoaders run in the training process (`num_workers=0`): the machine's cores
are the training ranks'. 2 ranks are 2 gloo / NCCL processes (DDP,
`DistributedSampler` for the per-row patterns). Each measurement runs in a fresh
process; its peak memory is the peak RSS over the process after imports and a
warm-up step (so it covers the split itself plus everything training adds), shown
against the split's compact size. On CUDA it adds GPU utilisation and peak GPU
memory.

`--sparse-embeddings` instead measures msmt's path twice, with today's dense
fused Adam and with `TrainConfig.sparse_embeddings` (row-sparse id tables under
SparseAdam), at `--id-vocab` rows per user / item table. Imports torch, numpy and
pyarrow only.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from dataclasses import fields, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from training import distributed  # noqa: E402
from training.data import FeatureSpec, TensorData, default_spec, synthetic  # noqa: E402
from training.models import REGISTRY, build_model  # noqa: E402
from training.trainer import (  # noqa: E402
    TrainConfig,
    cpu_has_bf16,
    fit,
    make_optimizer,
    masked_bce,
    resolve_device,
    use_bf16,
)

CANDIDATES = ("mmoe", "hinet", "mdl")
PATHS = ("msmt", "rows", "columns")
OPTIMIZERS = ("dense", "sparse")  # --sparse-embeddings: fused Adam on everything vs SparseAdam on the id tables


def bench_spec(n_sparse: int, id_vocab: int = 2**16) -> FeatureSpec:
    """msmt's default spec (`id_vocab` users and items), widened with hashed id fields to `n_sparse` sparse fields."""
    spec = default_spec(4, id_vocab=id_vocab)
    extra = [f"extra_{i}" for i in range(max(0, n_sparse - len(spec.sparse_fields)))]
    return replace(spec, sparse_fields=spec.sparse_fields + extra, vocab_sizes=spec.vocab_sizes + [2**16] * len(extra))


# --- memory ----------------------------------------------------------------------------------


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _settle() -> float:
    """Collect garbage and restart the peak counter; RSS now (MB)."""
    gc.collect()
    with contextlib.suppress(OSError):  # some sandboxes refuse it: the peak then covers earlier work too
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    return _status_mb("VmRSS")


# --- the per-row patterns --------------------------------------------------------------------


class RowTensors(torch.utils.data.Dataset):
    """One row of msmt's stacked tensors per `__getitem__`."""

    def __init__(self, data: TensorData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self.data, f.name)[i] for f in fields(self.data)}


class RowColumns(torch.utils.data.Dataset):
    """torch-rechub's pattern: per-column arrays, one row's values per `__getitem__`."""

    def __init__(self, data: TensorData) -> None:
        self.columns = {f"sparse_{j}": np.ascontiguousarray(data.sparse[:, j].numpy())
                        for j in range(data.sparse.shape[1])}  # fmt: skip
        self.columns.update({f"dense_{j}": np.ascontiguousarray(data.dense[:, j].numpy())
                             for j in range(data.dense.shape[1])})  # fmt: skip
        for name in ("seq", "scenario", "labels", "label_mask", "group"):
            self.columns[name] = getattr(data, name).numpy().copy()

    def __len__(self) -> int:
        return len(self.columns["group"])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {name: column[i] for name, column in self.columns.items()}


def _stack_columns(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The training loop's side of the column pattern: per-field columns → the model's batch."""
    sparse = [batch.pop(k) for k in sorted((k for k in batch if k.startswith("sparse_")), key=_column_index)]
    dense = [batch.pop(k) for k in sorted((k for k in batch if k.startswith("dense_")), key=_column_index)]
    return {"sparse": torch.stack(sparse, 1), "dense": torch.stack(dense, 1), **batch}


def _column_index(name: str) -> int:
    return int(name.rsplit("_", 1)[1])


def _row_batches(dataset, cfg: TrainConfig, device, world: int, stack: bool):
    """`cfg.max_steps` model-ready batches through a per-row `DataLoader` (sharded when `world` > 1)."""
    sampler = torch.utils.data.DistributedSampler(dataset, shuffle=True) if world > 1 else None
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size // world, shuffle=sampler is None,
                                         sampler=sampler, pin_memory=device.type == "cuda")  # fmt: skip
    for step, batch in enumerate(loader):
        if step == cfg.max_steps:
            return
        batch = _stack_columns(batch) if stack else batch
        yield {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _msmt_batches(data: TensorData, cfg: TrainConfig, device, world: int):
    """The same batches through msmt's path (what `fit` iterates)."""
    plan = data.plan(cfg.batch_size // world, shuffle=True)
    return data.iter_plan(plan, 0, cfg.max_steps, device=device, pin_memory=True)


def _loader_only(batches) -> tuple[float, int]:
    """Seconds and rows of producing the batches alone, no model."""
    rows, started = 0, time.perf_counter()
    for batch in batches:
        rows += len(batch["labels"])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started, rows


def _per_row(model, dataset, cfg: TrainConfig, device, world: int, stack: bool) -> tuple[float, int]:
    """Seconds and rows of `cfg.max_steps` training steps through a per-row `DataLoader` (DDP when `world` > 1)."""
    net = model.to(device)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = make_optimizer(model.parameters(), cfg)
    bf16 = use_bf16(cfg, device)
    rows, started = 0, time.perf_counter()
    for batch in _row_batches(dataset, cfg, device, world, stack):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = net(batch)
        total, _ = masked_bce(logits.float(), batch["labels"], batch["label_mask"])
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        rows += len(batch["labels"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, rows


class GpuSampler:
    """Mean GPU utilisation (%) while the `with` block runs, sampled every `every` seconds.

    Reads NVML through `torch.cuda.utilization` when pynvml is installed, else `nvidia-smi`;
    `mean` stays None off CUDA or when neither answers. (One reading after training ends
    would see an idle GPU.)
    """

    def __init__(self, device: torch.device, every: float = 0.1) -> None:
        self.device, self.every, self.samples = device, every, []
        self.mean: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> float | None:
        with contextlib.suppress(Exception):
            return float(torch.cuda.utilization(self.device))
        with contextlib.suppress(Exception):
            index = self.device.index or 0
            query = ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            return float(subprocess.run(query, capture_output=True, text=True, check=True, timeout=5).stdout)
        return None

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            value = self._read()
            if value is None:
                return
            self.samples.append(value)

    def __enter__(self) -> GpuSampler:
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.mean = sum(self.samples) / len(self.samples) if self.samples else None


# --- one measurement per process -------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    """One measurement in this process (rank `RANK` of `WORLD_SIZE`); rank 0 prints a JSON line."""
    torch.set_num_threads(args.threads)
    ctx = distributed.init_from_env()
    device = ctx.device(args.device) if ctx.active else resolve_device(args.device)
    spec = bench_spec(args.sparse_fields, args.id_vocab)
    cfg = TrainConfig(epochs=1, max_steps=args.max_steps, batch_size=args.batch_size, device=str(device),
                      bf16=args.bf16, bf16_cpu=args.bf16 and device.type == "cpu",
                      sparse_embeddings=args.sparse)  # fmt: skip
    warm_up = synthetic(spec, 2 * args.batch_size, seed=1)  # first steps at these shapes pay one-off set-up
    fit(build_model(args.model, spec), warm_up, None, replace(cfg, max_steps=2))
    del warm_up
    base_mb = _settle()
    full = synthetic(spec, args.rows, seed=0)
    compact_mb = full.nbytes() / 2**20
    data = full.shard(ctx.rank, ctx.world_size)
    del full
    dataset = {"rows": RowTensors, "columns": RowColumns}.get(args.path, lambda d: d)(data)
    if args.path == "columns":
        del data  # the pattern holds its columns instead
    torch.manual_seed(0)
    model = build_model(args.model, spec)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _settle()
    with GpuSampler(device) as gpu:
        if args.path == "msmt":
            result = fit(model, dataset, None, cfg)
            seconds, rows = result.seconds, result.history[-1]["samples_per_s"] * result.seconds / ctx.world_size
        else:
            seconds, rows = _per_row(model, dataset, cfg, device, ctx.world_size, stack=args.path == "columns")
    rates = distributed.gather_objects(rows / seconds)
    peaks = distributed.gather_objects(_status_mb("VmHWM") - base_mb)
    if args.path == "msmt":
        batches = _msmt_batches(dataset, cfg, device, ctx.world_size)
    else:
        batches = _row_batches(dataset, cfg, device, ctx.world_size, stack=args.path == "columns")
    loader_seconds, loader_rows = _loader_only(batches)
    loader_rates = distributed.gather_objects(loader_rows / loader_seconds)
    if ctx.is_main:
        out = {"model": args.model, "path": args.path, "workers": ctx.world_size, "bf16": args.bf16,
               "sparse": args.sparse, "table_rows": sum(spec.vocab_sizes),
               "samples_per_s": sum(rates), "loader_per_s": sum(loader_rates), "peak_mb": max(peaks),
               "compact_mb": compact_mb / ctx.world_size,
               "gpu_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
               "gpu_util": gpu.mean}  # fmt: skip
        print("RESULT " + json.dumps(out), flush=True)
    distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(args: argparse.Namespace, model: str, path: str, workers: int, bf16: bool, sparse: bool = False) -> dict:
    argv = [__file__, "--child", "--model", model, "--path", path, "--rows", str(args.rows),
            "--batch-size", str(args.batch_size), "--device", args.device, "--threads", str(args.threads),
            "--max-steps", str(args.max_steps), "--sparse-fields", str(args.sparse_fields),
            "--id-vocab", str(args.id_vocab)]  # fmt: skip
    argv += ["--bf16"] if bf16 else []
    argv += ["--sparse"] if sparse else []
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
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()  # absent from older torch
    cpu = capabilities.get("cpu_name") or platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.node()}: {os.cpu_count()} logical CPUs ({cpu}), {gpu}, Python {platform.python_version()}, "
            f"torch {torch.__version__}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the split (its memory)")
    parser.add_argument("--max-steps", type=int, default=60, help="steps timed per measurement")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--sparse-fields", type=int, default=9, help="9 = msmt's spec; more adds hashed id fields")
    parser.add_argument("--workers", default="1,2", help="comma-separated rank counts")
    parser.add_argument("--models", default=",".join(CANDIDATES), help="those with a file in training/models run")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    parser.add_argument("--precisions", default="auto", help="fp32, bf16 or both; auto: bf16 too where native")
    parser.add_argument("--id-vocab", type=int, default=2**16, help="rows of the user_id and item_id tables")
    parser.add_argument(
        "--sparse-embeddings",
        action="store_true",
        help="msmt's path with dense Adam vs TrainConfig.sparse_embeddings, not the three paths",
    )
    parser.add_argument("--sparse", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    precisions = bf16_choices(args.precisions, native_bf16=cuda or cpu_has_bf16())
    models = [m for m in args.models.split(",") if m in REGISTRY]
    results = []
    for model in models:
        for workers in [int(w) for w in args.workers.split(",")]:
            for bf16 in precisions:
                if args.sparse_embeddings:
                    runs = {name: measure(args, model, "msmt", workers, bf16, sparse=name == "sparse")
                            for name in OPTIMIZERS}  # fmt: skip
                else:
                    runs = {path: measure(args, model, path, workers, bf16) for path in PATHS}
                results.append(runs)
                rates = " vs ".join(f"{run['samples_per_s']:,.0f}" for run in runs.values())
                print(f"# {model} × {workers} {_precision(bf16)}: {rates} rows/s", file=sys.stderr, flush=True)
    print(f"\n{args.rows:,} synthetic rows, {args.sparse_fields} sparse fields × 16 dims, {args.id_vocab:,} users "
          f"and items, batch {args.batch_size}, {args.max_steps} steps timed; {machine()}\n")  # fmt: skip
    print("\n".join(sparse_table(results) if args.sparse_embeddings else table(results, cuda)))


def bf16_choices(precisions: str, native_bf16: bool) -> list[bool]:
    """`--precisions` as bf16 flags: "auto" measures bf16 beside fp32 only where the device runs it natively."""
    if precisions == "auto":
        return [False, True] if native_bf16 else [False]
    names = precisions.split(",")
    if not set(names) <= {"fp32", "bf16"}:
        raise SystemExit(f"--precisions: fp32, bf16 or both, got {precisions!r}")
    return [name == "bf16" for name in names]


def _precision(bf16: bool) -> str:
    return "bf16" if bf16 else "fp32"


def table(results: list[dict[str, dict]], cuda: bool) -> list[str]:
    """Markdown lines: one row per model × ranks × precision, the three paths side by side."""
    columns = ["model", "ranks", "precision", "msmt rows/s", "per-row tensors", "per-row columns",
               "speed-up (tensors / columns)", "batches alone rows/s (msmt / tensors / columns)",
               "peak MB (msmt / tensors / columns)", "compact MB per rank"]  # fmt: skip
    columns += ["GPU util %", "GPU peak MB"] if cuda else []
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for runs in results:
        fast, rows, cols = (runs[p] for p in PATHS)
        cells = [fast["model"], fast["workers"], _precision(fast["bf16"])]
        cells += [f"{runs[p]['samples_per_s']:,.0f}" for p in PATHS]
        cells.append(" / ".join(f"{fast['samples_per_s'] / r['samples_per_s']:.1f}×" for r in (rows, cols)))
        cells.append(" / ".join(f"{runs[p]['loader_per_s']:,.0f}" for p in PATHS))
        cells.append(" / ".join(f"{runs[p]['peak_mb']:.0f}" for p in PATHS))
        cells.append(f"{fast['compact_mb']:.0f}")
        if cuda:
            cells += ["n/a" if fast["gpu_util"] is None else f"{fast['gpu_util']:.0f}", f"{fast['gpu_peak_mb']:.0f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def sparse_table(results: list[dict[str, dict]]) -> list[str]:
    """Markdown lines for `--sparse-embeddings`: one row per model × ranks × precision, dense vs sparse."""
    columns = ["model", "ranks", "precision", "table rows", "dense Adam rows/s", "sparse rows/s", "speed-up",
               "peak MB (dense / sparse)"]  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for runs in results:
        dense, sparse = (runs[name] for name in OPTIMIZERS)
        cells = [dense["model"], dense["workers"], _precision(dense["bf16"]), f"{dense['table_rows']:,}",
                 f"{dense['samples_per_s']:,.0f}", f"{sparse['samples_per_s']:,.0f}",
                 f"{sparse['samples_per_s'] / dense['samples_per_s']:.1f}×",
                 f"{dense['peak_mb']:.0f} / {sparse['peak_mb']:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


if __name__ == "__main__":
    main()

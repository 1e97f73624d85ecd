"""Data-parallel plumbing: the process group from torchrun's environment, and the few collectives
the trainer needs (sums of metrics, the common step count, gathering small objects).

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT in each
process; `init_from_env` joins the group (NCCL when CUDA is there, gloo on the
CPU) and pins the process to its GPU. A plain `python` process (no WORLD_SIZE,
or WORLD_SIZE=1) is a world of one and never touches torch.distributed, so
every helper below is a no-op there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def device(self, preferred: str = "auto") -> torch.device:
        """This rank's device: its own GPU under NCCL, else the trainer's usual choice."""
        if self.active and dist.get_backend() == "nccl":
            return torch.device("cuda", self.local_rank)
        if preferred == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(preferred)


def init_from_env(backend: str | None = None) -> DistContext:
    """Join torchrun's process group (once); a world of one stays ungrouped."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank)


def current() -> DistContext:
    """The group this process belongs to (a world of one when none was set up)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return DistContext()
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place sum / min / max over ranks (unchanged in a world of one)."""
    if current().active:
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
    return tensor


def min_int(value: int, device: torch.device) -> int:
    """The smallest `value` over ranks: every rank runs the same number of steps, or DDP hangs."""
    return int(all_reduce_(torch.tensor([value], device=device), "min").item())


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's small picklable `obj`, in rank order (a one-item list in a world of one)."""
    ctx = current()
    if not ctx.active:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if current().active:
        dist.barrier()

"""Training checkpoints: write atomically, read back safely, capture and restore every RNG.

A checkpoint is one file, `<dir>/last.pt`, replaced in place: written to a
temporary file in the same directory, flushed to disk, then renamed over the old
one, so a process killed at any moment leaves either the previous checkpoint or
the new one, never half a file. It holds only state dicts, plain tensors and
Python scalars / lists / dicts, and is read with `torch.load(weights_only=True)`,
which refuses anything else (no pickled code runs on load).

RNG states are stored in that form too: numpy's Mersenne-Twister key becomes an
int64 tensor, Python's `random` state a tuple of ints.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FILE_NAME = "last.pt"


def path_in(directory: str | os.PathLike) -> Path:
    return Path(directory) / FILE_NAME


def latest(directory: str | os.PathLike | None) -> Path | None:
    """The checkpoint to resume from, or None when `directory` is unset or holds none."""
    if not directory:
        return None
    path = path_in(directory)
    return path if path.is_file() else None


def save(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write `state` atomically (temporary file in the same directory + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def discard(directory: str | os.PathLike | None) -> None:
    """Remove a finished run's checkpoint (and its directory once empty).

    Once the outputs are written the checkpoint is spent; kept, it would make a
    re-run of the day on corrected data "resume" the finished training instead
    of training again, and it would fill the training pod's volume day by day.
    The temporary file of a save that a kill -9 interrupted goes too.
    """
    if not directory:
        return
    path_in(directory).unlink(missing_ok=True)
    for orphan in Path(directory).glob(f".{FILE_NAME}.*.tmp"):
        orphan.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty, or already gone
        Path(directory).rmdir()


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint onto the CPU; only tensors and plain containers are accepted."""
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and Python `random` states, weights_only-safe."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

"""Training checkpoints: write atomically, read back safely, capture and restore every RNG.

A checkpoint is one object, `<dir>/last.pt`, on the local disk or on S3 alike
(`msmt.storage`), replaced in place: `storage.write_bytes` renames a flushed
temporary file over it locally and PUTs it in one request on S3, so a process
killed at any moment leaves either the previous checkpoint or the new one,
never half of one. It holds only state dicts, plain tensors and Python scalars /
lists / dicts, and is read with `torch.load(weights_only=True)`, which refuses
anything else (no pickled code runs on load).

RNG states are stored in that form too: numpy's Mersenne-Twister key becomes an
int64 tensor, Python's `random` state a tuple of ints.
"""

from __future__ import annotations

import io
import os
import random
from typing import Any

import numpy as np
import torch

from msmt import storage
from msmt.settings import Settings

FILE_NAME = "last.pt"


def path_in(directory: str | os.PathLike) -> str:
    """The checkpoint's URI in `directory` (a local path or `s3://…`)."""
    return f"{str(directory).rstrip('/')}/{FILE_NAME}"


def latest(settings: Settings, directory: str | os.PathLike | None) -> str | None:
    """The checkpoint to resume from, or None when `directory` is unset or holds none."""
    if not directory:
        return None
    uri = path_in(directory)
    return uri if storage.exists(settings, uri) else None


def save(settings: Settings, uri: str, state: dict[str, Any]) -> str:
    """Serialize `state` in memory, then replace the checkpoint at `uri` with it atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    storage.write_bytes(settings, uri, buffer.getvalue())
    return uri


def discard(settings: Settings, directory: str | os.PathLike | None) -> None:
    """Remove a finished run's checkpoint (and its directory once empty).

    Once the outputs are written the checkpoint is spent; kept, it would make a
    re-run of the day on corrected data "resume" the finished training instead
    of training again, and it would fill the training pod's volume day by day.
    The temporary file of a save that a kill -9 interrupted goes with the directory.
    """
    if not directory:
        return
    directory = str(directory)
    storage.remove(settings, path_in(directory))
    if not storage.list_keys(settings, directory):  # left: an empty directory (marker), a killed save's temporary file
        storage.remove_prefix(settings, directory)


def load(settings: Settings, uri: str) -> dict[str, Any]:
    """Read a checkpoint onto the CPU; only tensors and plain containers are accepted."""
    return torch.load(io.BytesIO(storage.read_bytes(settings, uri)), map_location="cpu", weights_only=True)


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

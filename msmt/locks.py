"""Named locks between processes of one machine: one run per day, one champion move at a time.

A lock is an `flock` on `<home>/locks/<name>.lock`. The kernel releases it when
its holder exits, kill -9 included, so a crashed run never leaves a stale lock.
The file keeps the holder's pid, host, start time and purpose, which the refusal
quotes. It serialises processes that share `MSMT_HOME` (the local profile); a
profile whose processes run on several machines needs a lock in a shared
service instead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator

from msmt.errors import StopRun
from msmt.settings import Settings


class LockHeld(StopRun):
    """Another process holds the lock (the message names it and what it is doing)."""


@contextlib.contextmanager
def hold(settings: Settings, name: str, purpose: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold lock `name` for the block; wait up to `wait_s` seconds for it, then raise LockHeld."""
    directory = settings.home / "locks"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.lock"
    with open(path, "a+") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockHeld(f"{purpose} refused: {_holder(path)} holds the lock {path}") from None
                time.sleep(0.05)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
                  "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}  # fmt: skip
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(holder))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _holder(path) -> str:
    """Who holds the lock, in words (what the holder wrote when it took it)."""
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        holder = {}
    if not holder:
        return "another process"
    return f"process {holder['pid']} on {holder['host']} ({holder['purpose']}, since {holder['since']})"

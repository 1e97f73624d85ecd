"""Helpers of the cluster suite: the `msmt` CLI in a subprocess, this home's state and secrets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MSMT = str(Path(sys.executable).with_name("msmt"))


def msmt(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([MSMT, *args], env=env, capture_output=True, text=True, timeout=600, check=False)
    if check and done.returncode:
        raise AssertionError(f"msmt {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def state(home: Path) -> dict:
    return json.loads((home / "cluster" / "state.json").read_text())


def secret_values(home: Path) -> list[str]:
    lines = (home / "cluster" / "secrets.env").read_text().splitlines()
    return [line.split("=", 1)[1] for line in lines if not line.startswith("AWS_ACCESS_KEY_ID")]

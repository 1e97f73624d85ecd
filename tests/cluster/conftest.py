"""One `msmt cluster up` on a temp home for the whole cluster suite; `down` at the end.

The suite's files run in name order on it: test_cluster (each service), test_daily_run (msmt_daily run
by the scheduler on them, a service killed mid-run), test_shutdown (`down`, then no password anywhere).
The knobs keep a day to minutes on 2 cores; the services inherit them at `up`, as DAG tasks see them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from pathlib import Path

import pytest
from cluster_support import msmt

from pipeline.cluster_demo import TINY

# The cluster demo's tiny knobs (a first model clears the gate's floor); a failing task retried after 2 s.
KNOBS = {**{f"MSMT_{key.upper()}": str(value) for key, value in TINY.items()},
         "MSMT_RETRY_DELAY_S": "2", "MSMT_SPARK_DRIVER_MEMORY": "1g"}  # fmt: skip


@pytest.fixture(scope="session")
def cluster():
    """`msmt cluster up` on a fresh home (the env `msmt cluster env` prints), `down` at the end."""
    home = Path(tempfile.mkdtemp(prefix="msmt-cluster-"))
    home.chmod(0o711)  # the postgres OS user enters it for the data directory
    base = {**os.environ, **KNOBS, "MSMT_HOME": str(home)}
    try:
        msmt(base, "cluster", "up")
        exported = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1)
                        for line in msmt(base, "cluster", "env").stdout.splitlines())  # fmt: skip
        yield home, {**base, **exported}
    finally:
        msmt(base, "cluster", "down", check=False)
        shutil.rmtree(home, ignore_errors=True)

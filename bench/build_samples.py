"""Rows per second of `spark_jobs.build_samples` on a simulated day.

    .venv/bin/python bench/build_samples.py --impressions 1000000

Simulates `window + 1` days (the sample day's clicks and conversions land on the
following days) into a scratch home, then times the Spark job on the first day,
twice: the first run pays the JVM's warm-up, the second is the steady state.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from msmt.settings import Settings
from pipeline.simulate import simulate
from spark_jobs import build_samples
from spark_jobs.common import get_spark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impressions", type=int, default=1_000_000, help="impressions on the sample day")
    parser.add_argument("--start", default="2026-01-01")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="msmt-bench-") as home:
        settings = Settings.from_env(home=Path(home))
        days = settings.attribution_window_days + 1
        t0 = time.perf_counter()
        simulate(settings, args.start, days, args.impressions, seed=0)
        print(f"simulate: {days} days x {args.impressions:,} impressions in {time.perf_counter() - t0:.1f} s")
        spark = get_spark(settings, app_name="msmt-bench")
        for attempt in ("cold", "warm"):
            stats = build_samples.run(spark, settings, args.start)
            print(
                f"build_samples ({attempt}): {stats['raw']['impressions']:,} impressions -> {stats['samples']:,} "
                f"samples in {stats['seconds']:.1f} s = {stats['rows_per_s']:,.0f} rows/s"
            )
        spark.stop()
    print(
        f"machine: {platform.processor() or platform.machine()}, {settings.spark_master}, "
        f"driver memory {settings.spark_driver_memory}"
    )


if __name__ == "__main__":
    main()

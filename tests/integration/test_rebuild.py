"""Fixing raw data reaches training: `rebuild` reprocesses the training days, and a day whose samples
check failed is never taken as built by a later run."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from msmt import lake
from msmt.errors import StopRun
from pipeline import steps
from pipeline.simulate import SimConfig, simulate

pytestmark = pytest.mark.integration

START = "2026-04-01"
RUN_DAY = "2026-04-06"  # sample day 04-04, training day 04-03


@pytest.fixture(scope="module")
def world(tmp_path_factory, spark):
    """One simulated week for both tests, in file order: the second breaks what the first left valid."""
    from msmt.settings import Settings

    home = tmp_path_factory.mktemp("rebuild") / "msmt"
    settings = Settings(home=home, train_days=1, drift_min_rows=500, spark_driver_memory="2g")
    config = SimConfig(n_users=2_000, n_items=500, malformed_rate=0.0)
    simulate(settings, START, 7, 4_000, seed=11, config=config, progress=False)
    return settings


def _run(settings, ds: str, rebuild: bool = False) -> list[str]:
    """The data steps of one run; the sample days it built."""
    plan = steps.plan_day(settings, ds, rebuild)
    steps.check_raw_logs(settings, plan)
    built = steps.build_samples(settings, plan)["built"]
    steps.check_samples(settings, plan, built)
    return built


def _clicks(settings, ds: str) -> int:
    return pc.sum(pds.dataset(lake.samples(settings, ds), partitioning="hive").to_table()["click"]).as_py()


def test_rebuild_reprocesses_the_training_days_from_corrected_raw_logs(world):
    train_day = steps.plan_day(world, RUN_DAY).train_days[0]
    assert _run(world, RUN_DAY) == [train_day, "2026-04-04"]  # a new lake catches up
    before = _clicks(world, train_day)

    path = Path(lake.raw(world, "clicks", train_day), "part-0.parquet")  # upstream re-lands fewer clicks…
    clicks = pq.read_table(path)
    converted = pds.dataset(lake.raw(world, "conversions")).to_table(columns=["click_id"])["click_id"]
    unconverted = pc.invert(pc.is_in(clicks["click_id"], converted))  # …none that a conversion points at
    dropped = pc.and_(unconverted, pc.less(pc.random(clicks.num_rows, initializer=1), 0.2))
    pq.write_table(clicks.filter(pc.invert(dropped)), path)

    assert _run(world, RUN_DAY) == ["2026-04-04"]  # checked days are reused
    assert _clicks(world, train_day) == before
    assert _run(world, RUN_DAY, rebuild=True) == [train_day, "2026-04-04"]
    assert _clicks(world, train_day) < before
    assert steps.samples_checked(world, train_day)


def test_a_day_whose_samples_check_failed_is_rebuilt_and_checked_again_by_the_next_run(world):
    sample_ds = steps.plan_day(world, RUN_DAY).sample_ds
    path = Path(lake.raw(world, "conversions", sample_ds), "part-0.parquet")
    conversions = pq.read_table(path)
    orphans = pc.binary_join_element_wise(conversions["click_id"], "-lost", "")
    pq.write_table(conversions.set_column(1, "click_id", orphans), path)  # every conversion loses its click

    with pytest.raises(StopRun, match=f"conversions ds={sample_ds}"):
        _run(world, RUN_DAY)
    assert Path(lake.samples(world, sample_ds)).exists()  # the partition is there…
    assert not steps.samples_checked(world, sample_ds)  # …but does not count as built

    next_plan = steps.plan_day(world, lake.shift(RUN_DAY, 1))
    assert sample_ds in next_plan.train_days
    with pytest.raises(StopRun, match=f"conversions ds={sample_ds}"):  # rebuilt, checked, refused again
        _run(world, next_plan.ds)

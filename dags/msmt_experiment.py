"""
### msmt_experiment — replay a model over past days against a baseline; nothing is promoted

Triggered with a conf (`msmt experiment …` does it, or the UI's *Trigger* form): the challenger `model`
(with `overrides`) is trained for each run day from `from` to `to` as that day's daily run would
train it, and compared with the `baseline` — `champion` (the version holding the alias when the
experiment starts), `version=N`, or `model=NAME` (trained on the same days) — on the day's held-out rows.

| step | what | on failure |
|---|---|---|
| `plan_experiment` | params, days (samples built?) and baseline checked; MLflow parent run opened | stops, no retry |
| `replay_day` | one mapped task per day, in date order: train, score both, paired intervals per cell | not retried |
| `summarize` | verdict per scenario × task across days, HTML report → lake and the parent run | retried |

In MLflow: one parent run (`msmt.kind=experiment`, `msmt.experiment=<name>`) with a child per day;
replayed models register under `<registered_model>_experiments`. Logic: `pipeline.experiments`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from msmt.settings import Settings
from pipeline import experiments, steps
from pipeline.orchestration import fail_fast
from training.catalog import model_names

SETTINGS = Settings.from_env()


@dag(
    schedule=None,
    start_date=pendulum.parse(SETTINGS.dag_start, tz="UTC"),
    catchup=False,
    tags=["msmt", "experiment"],
    doc_md=__doc__,
    default_args={"owner": "msmt", "retries": 2, "retry_delay": timedelta(seconds=SETTINGS.retry_delay_s)},
    params={
        "model": Param(steps.DEFAULT_MODEL, type="string", enum=model_names(), description="the challenger"),
        "from": Param(None, type=["null", "string"], format="date", description="first run day replayed"),
        "to": Param(None, type=["null", "string"], format="date", description="last run day replayed"),
        "baseline": Param("champion", type="string", description="champion, version=N or model=NAME"),
        "epochs": Param(None, type=["null", "integer"], minimum=1, description="override the model's epochs"),
        "overrides": Param({}, type="object", description="trainer / model config fields over the model's config"),
        "name": Param(None, type=["null", "string"], description="the experiment's name (default: from the rest)"),
    },
)
def msmt_experiment():
    @task(retries=0)  # a retry would open a second parent run
    @fail_fast
    def plan_experiment() -> dict:
        """#### Check the days and the baseline; open the experiment's MLflow parent run"""
        params = get_current_context()["params"]
        if not params["from"] or not params["to"]:
            raise experiments.ExperimentError("msmt_experiment needs the params `from` and `to` (run days)")
        epochs = {"epochs": params["epochs"]} if params.get("epochs") else {}
        overrides = {**params.get("overrides", {}), **epochs}
        return experiments.plan(Settings.from_env(), params["model"], params["from"], params["to"], overrides,
                                params["baseline"], params.get("name"))  # fmt: skip

    @task
    def days_of(experiment: dict) -> list[str]:
        """#### The run days to replay, one mapped `replay_day` each"""
        return experiment["days"]

    @task(retries=0, max_active_tis_per_dagrun=1)  # like train_model: a retry would register another version
    @fail_fast
    def replay_day(experiment: dict, day: str) -> dict:
        """#### One day: train the challenger (and a model baseline), compare on the held-out rows"""
        return experiments.replay_day(Settings.from_env(), experiment, day)

    @task
    @fail_fast
    def summarize(experiment: dict, days: list[dict]) -> dict:
        """#### Verdict per scenario × task across days; the report"""
        return experiments.summarize(Settings.from_env(), experiment, list(days))

    experiment = plan_experiment()
    summarize(experiment, replay_day.partial(experiment=experiment).expand(day=days_of(experiment)))


msmt_experiment()

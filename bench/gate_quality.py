"""The gate's own quality: how often it rejects an equally good challenger, how often it catches a worse one.

    nice -n 10 .venv/bin/python bench/gate_quality.py   # ~6.5 min on 2 shared cores (~3.3 min CPU + Spark)

Simulated logs (`pipeline.simulate`, a small balanced world as in
tests/model/test_learnability.py) go through the pipeline's own Spark
`build_samples`; the aggregates stay unknown (no Feast), the first day trains and
the second is held out. `--seeds` MMoE models are trained once (1 epoch each) and
scored on the held-out day; then `training.gate.decide` judges:

- (a) equal quality: every pair of seeds, the later one as challenger. A decision
  that rejects any cell is a false rejection.
- (b) one degraded cell: the same pairs, the challenger's scores in ONE gated cell
  (the pairs take the cells in turn) made worse by exactly δ AUC: Gaussian noise
  λ·sd(logit)·ε is added to its logits, with ε fixed per row and λ found by
  bisection so that the cell's AUC falls by δ on the held-out rows. A rejection
  of that cell is a detection.

Each decision is read under three rules, all with the `max_drop` tolerance: the
earlier per-cell rule (95% interval wholly below 0), per-cell p ≤ alpha (no
correction), and Holm at alpha across the compared cells (the gate's rule now).
Rates come with Wilson 95% intervals; the pairs share models, so those intervals
are too narrow, if anything. Imports numpy, torch, pyarrow and msmt's own modules.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import tempfile
import time
from collections.abc import Callable
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from feature_repo.publish import read_samples
from msmt.settings import Settings
from pipeline.simulate import JUDGEABLE, simulate
from spark_jobs import build_samples
from spark_jobs.common import get_spark
from training.data import FeatureSpec, TensorData, default_spec, encode, split_by_day, with_unknown_dense
from training.evaluate import auc
from training.gate import GateDecision, GateRules, decide
from training.models import build_model
from training.scoring import predict
from training.trainer import TrainConfig, fit

DAYS = ("2026-04-01", "2026-04-02")  # the first trains, the second is held out for the gate

RULES: dict[str, Callable[[dict, GateRules], bool]] = {  # cell rejected for significance, tolerance included
    "per cell, 95% CI < 0 (earlier rule)": lambda c, r: c["ci_high"] < 0 and c["diff"] < -r.max_drop,
    "per cell, p ≤ α": lambda c, r: c["p_value"] <= r.alpha and c["diff"] < -r.max_drop,
    "Holm at α (the gate)": lambda c, r: c["holm_rejected"] and c["diff"] < -r.max_drop,
}


def held_out_split(home: Path, impressions_per_day: int) -> tuple[Settings, FeatureSpec, TensorData, TensorData]:
    """Simulate, build samples with Spark, and encode the train and held-out days (aggregates unknown)."""
    settings = Settings(home=home, spark_driver_memory="2g")
    simulate(
        settings,
        DAYS[0],
        len(DAYS) + settings.attribution_window_days,
        impressions_per_day,
        seed=11,
        config=JUDGEABLE,
        progress=False,
    )
    spark = get_spark(settings, app_name="msmt-gate-quality")
    try:
        for day in DAYS:
            build_samples.run(spark, settings, day)
    finally:
        spark.stop()
    spec = default_spec(len(settings.scenarios))
    table = with_unknown_dense(read_samples(settings, list(DAYS)), spec)  # no feature store: aggregates unknown
    train, held_out = split_by_day(table, DAYS[-1])
    return settings, spec, encode(train, spec), encode(held_out, spec)


def train_scores(
    settings: Settings, spec: FeatureSpec, train: TensorData, held_out: TensorData, seed: int
) -> np.ndarray:
    """Held-out probabilities `(N, T)` of an MMoE trained for one epoch with `seed`."""
    torch.manual_seed(seed)
    model = build_model("mmoe", spec)
    fit(model, train, None, TrainConfig(epochs=1, batch_size=512, lr=2e-3, seed=seed), settings=settings)
    return predict(model, held_out)


def degrade(probs: np.ndarray, y: np.ndarray, delta: float, rng: np.random.Generator) -> np.ndarray:
    """`probs` with Gaussian logit noise λ·sd·ε, λ bisected until the AUC on these rows falls by `delta`."""
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    logit = np.log(p / (1 - p))
    noise = rng.normal(size=len(logit)) * logit.std()

    def noisy(scale: float) -> np.ndarray:
        return 1 / (1 + np.exp(-(logit + scale * noise)))

    target = auc(y, probs) - delta
    low, high = 0.0, 0.05
    while auc(y, noisy(high)) > target and high < 100:
        low, high = high, 2 * high
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if auc(y, noisy(mid)) > target else (low, mid)
    out = noisy(high)
    if abs(auc(y, out) - target) > 1e-5:
        raise RuntimeError(f"could not calibrate a {delta} AUC loss: got {auc(y, probs) - auc(y, out):.6f}")
    return out


def cell_rows(data: TensorData, scenario_id: int, task: int) -> np.ndarray:
    """Row mask of one (scenario, task) cell, as the gate selects it."""
    return (data.scenario.numpy() == scenario_id) & data.label_mask.numpy()[:, task].astype(bool)


def judge(
    challenger: np.ndarray, champion: np.ndarray, data: TensorData, settings: Settings, rules: GateRules
) -> GateDecision:
    """The gate's decision on the held-out rows, exactly as `evaluate_and_gate` calls it."""
    arrays = (data.labels, data.label_mask, data.scenario, data.group)
    return decide(challenger, champion, *(a.numpy() for a in arrays), settings.scenarios, settings.tasks, rules)


def rejected(decision: GateDecision, rules: GateRules, cell: tuple[str, str] | None = None) -> dict[str, bool]:
    """Per rule: does it reject `cell` (or, without one, any compared cell) of `decision`?"""
    compared = [c for c in decision.cells if c["p_holm"] is not None]
    if cell is not None:
        compared = [c for c in compared if (c["scenario"], c["task"]) == cell]
    return {name: any(rule(c, rules) for c in compared) for name, rule in RULES.items()}


def wilson(k: int, n: int, z: float = 1.96) -> str:
    """k/n as a percentage with its Wilson 95% interval."""
    centre, half = (k + z * z / 2) / (n + z * z), z / (n + z * z) * np.sqrt(k * (n - k) / n + z * z / 4)
    low, high = max(0.0, centre - half), min(1.0, centre + half)  # clamped: rounding can print "-0%"
    return f"{k}/{n} = {100 * k / n:.0f}% [{100 * low:.0f}–{100 * high:.0f}%]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impressions-per-day", type=int, default=30_000)
    parser.add_argument("--seeds", type=int, default=8, help="models trained; their pairs are the repetitions")
    parser.add_argument("--deltas", type=float, nargs="+", default=[0.002, 0.005, 0.01])
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error("--seeds: need at least 2 models to form a pair")
    rules = GateRules(n_boot=args.n_boot, alpha=args.alpha)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="msmt-gate-quality-") as home:
        settings, spec, train, held_out = held_out_split(Path(home), args.impressions_per_day)
        print(
            f"data ready in {time.perf_counter() - started:.0f} s: {len(train):,} training rows, "
            f"{len(held_out):,} held out"
        )
        scores = [train_scores(settings, spec, train, held_out, seed) for seed in range(args.seeds)]
    print(f"{args.seeds} models trained by {time.perf_counter() - started:.0f} s")
    pairs = list(combinations(range(args.seeds), 2))  # (champion, challenger)
    null = [judge(scores[j], scores[i], held_out, settings, rules) for i, j in pairs]
    family = [(c["scenario"], c["task"]) for c in null[0].cells if c["p_holm"] is not None]
    rows = {"equal quality: any cell rejected": [rejected(d, rules) for d in null]}
    for delta in args.deltas:
        rows[f"one cell −{delta} AUC: that cell rejected"] = detections(
            scores, pairs, family, held_out, settings, rules, delta
        )
    print(f"measured in {time.perf_counter() - started:.0f} s\n")
    print(cell_table(null))
    print()
    print(rate_table(rows))
    print(f"\nseesaws flagged between equally good seeds: {wilson(sum(bool(d.seesaws) for d in null), len(null))}")
    print(
        f"\n{args.seeds} MMoE seeds × 1 epoch, {len(pairs)} pairs, {len(family)} compared cells, n_boot {args.n_boot}, "
        f"α {args.alpha}, max_drop {rules.max_drop}; {platform.machine()}, {mp.cpu_count()} cores, "
        f"torch {torch.__version__}; {time.perf_counter() - started:.0f} s wall, {time.process_time():.0f} s CPU "
        "in this process (the Spark JVM's not counted)"
    )


def detections(
    scores: list[np.ndarray],
    pairs: list[tuple[int, int]],
    family: list[tuple[str, str]],
    held_out: TensorData,
    settings: Settings,
    rules: GateRules,
    delta: float,
) -> list[dict[str, bool]]:
    """Per pair: does each rule reject the one cell (the family's cells in turn) made `delta` AUC worse?"""
    hits = []
    for r, (i, j) in enumerate(pairs):
        scenario, task = family[r % len(family)]
        s_id, t = settings.scenarios.index(scenario), settings.tasks.index(task)
        mask = cell_rows(held_out, s_id, t)
        challenger = scores[j].copy()
        y = held_out.labels.numpy()[mask, t]
        challenger[mask, t] = degrade(challenger[mask, t], y, delta, np.random.default_rng([r, s_id, t]))
        hits.append(rejected(judge(challenger, scores[i], held_out, settings, rules), rules, (scenario, task)))
    return hits


def cell_table(null: list[GateDecision]) -> str:
    """Per cell: size, and how far equally good seeds land apart against the interval's width."""
    lines = ["| cell | rows | positives | median abs diff between seeds | mean 95% CI width |", "|---|---|---|---|---|"]
    for k, cell in enumerate(null[0].cells):
        diffs = [d.cells[k]["diff"] for d in null if d.cells[k]["diff"] is not None]
        widths = [d.cells[k]["ci_high"] - d.cells[k]["ci_low"] for d in null if d.cells[k]["ci_low"] is not None]
        spread = f"{np.median(np.abs(diffs)):.4f}" if diffs else "-"
        width = f"{np.mean(widths):.4f}" if widths else "-"
        lines.append(
            f"| {cell['scenario']}/{cell['task']} | {cell['rows']:,} | {cell['positives']:,} | {spread} | {width} |"
        )
    return "\n".join(lines)


def rate_table(rows: dict[str, list[dict[str, bool]]]) -> str:
    """One row per condition, one column per rule: rejections / decisions [Wilson 95%]."""
    lines = ["| condition | decisions | " + " | ".join(RULES) + " |", "|---|---|" + "---|" * len(RULES)]
    for condition, verdicts in rows.items():
        rates = [wilson(sum(v[name] for v in verdicts), len(verdicts)) for name in RULES]
        lines.append(f"| {condition} | {len(verdicts)} | " + " | ".join(rates) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""The zoo's world: is what MSMT models exist for learnable from the rows the zoo benchmark gives them?

    OMP_NUM_THREADS=1 .venv/bin/python bench/zoo_world.py --world zoo --rows 1000000 --seeds 0 1 2
    OMP_NUM_THREADS=1 .venv/bin/python bench/zoo_world.py --world zoo --curve 1000000 3000000 --seeds 0

Simulates `train_days` + 1 days (+ the attribution window, so the held-out day's conversions land)
of `--rows / train_days` impressions a day, builds samples straight from the raw logs (no Spark: a
click is any click of the impression, a conversion a conversion within the window of its click; no
feature store: the aggregates are unknown, as in tests/model/test_learnability.py), then scores the
held-out day per scenario × task cell:

- oracle: the simulator's true probabilities (`oracle_auc`);
- ceiling: a well-specified learner of the simulator's generating form, fit by Adam on the same
  rows, its L2 chosen on a validation slice (10% of the training requests), then refit on all rows;
- scenario-blind ceiling: the same learner with one scenario (what ignoring scenario costs it);
- task-blind: the ceiling's p(click) scored on the conversion cells (what one score for both tasks costs);
- blind: logistic regression on the features (one weight per id of every field), no scenario input,
  one per task, L2 chosen the same way;
- MMoE: `bench/zoo.py`'s `train_one` (the zoo's training path) for each seed;
- and the world's own statistics: impressions per user and item, AUC of position per cell.

`--curve` trains MMoE (first seed) at each size instead. Imports torch, numpy, pyarrow and pandas
(and msmt's own modules), no Spark, Airflow or MLflow. Limit torch to one thread (`--threads`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.dataset as pds  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from bench.zoo import START, Job, train_one  # noqa: E402
from msmt import lake  # noqa: E402
from msmt.settings import Settings  # noqa: E402
from pipeline.simulate import DEVICES, WORLDS, SimConfig, oracle_auc, simulate  # noqa: E402
from training.data import default_spec, with_unknown_dense  # noqa: E402
from training.evaluate import auc  # noqa: E402

L2_GRID = (1.0, 10.0, 100.0)  # weight of Σ_ids ‖w_id‖² against the mean loss × rows (see _train)
BLIND_FIELDS = ("user_id", "item_id", "position", "device", "user_segment", "item_category", "item_price_bucket",
                "hour")  # fmt: skip


# --- samples -------------------------------------------------------------------------------------


def build_samples(settings: Settings, days: list[str]) -> pa.Table:
    """Samples of `days` from the raw logs: SAMPLES' columns, `ds`, click and conversion labels."""
    read = lambda name: pds.dataset(lake.raw(settings, name), partitioning="hive")  # noqa: E731
    imps = read("impressions").to_table(filter=pc.field("ds").cast(pa.string()).isin(days))
    clicks = read("clicks").to_table(columns=["click_id", "impression_id", "ts"]).to_pandas()
    convs = read("conversions").to_table(columns=["click_id", "ts"]).to_pandas()
    window = pd.Timedelta(days=settings.attribution_window_days)
    attributed = convs.merge(clicks, on="click_id", suffixes=("", "_click"))
    attributed = attributed[attributed["ts"] <= attributed["ts_click"] + window]
    ids = imps.column("impression_id")
    click = pc.is_in(ids, pa.array(clicks["impression_id"].unique()))
    conversion = pc.is_in(ids, pa.array(attributed["impression_id"].unique()))
    scenario_id = pc.index_in(imps.column("scenario"), pa.array(list(settings.scenarios)))
    ts = imps.column("ts")
    return pa.table(
        {
            "impression_id": ids,
            "request_id": imps.column("request_id"),
            "event_timestamp": ts,
            "user_id": imps.column("user_id"),
            "item_id": imps.column("item_id"),
            "scenario_id": scenario_id.cast(pa.int64()),
            "position": imps.column("position"),
            "device": imps.column("device"),
            "user_segment": imps.column("user_segment"),
            "item_category": imps.column("item_category"),
            "item_price_bucket": imps.column("item_price_bucket"),
            "hist_item_ids": imps.column("hist_item_ids"),
            "hour": pc.hour(ts).cast(pa.int32()),
            "click": click.cast(pa.int32()),
            "conversion": conversion.cast(pa.int32()),
            "ds": imps.column("ds").cast(pa.string()),
        }
    )


def make_world(home: Path, config: SimConfig, rows: int, seed: int) -> dict:
    """Simulate, build the samples of the training days and the held-out day, write them as a training set."""
    settings = Settings(home=home)
    per_day = rows // settings.train_days
    days = lake.days_between(START, settings.train_days + 1)
    started = time.perf_counter()
    simulate(settings, START, len(days) + settings.attribution_window_days, per_day, seed, config, progress=False)
    simulated = time.perf_counter() - started
    table = build_samples(settings, days)
    eval_ds = days[-1]
    truth = pds.dataset(lake.raw(settings, "truth", eval_ds)).to_table().to_pandas()
    held = table.filter(pc.equal(table.column("ds"), eval_ds))
    labels = held.select(["impression_id", "click", "conversion"]).to_pandas()
    uri = str(home / "training_set")
    Path(uri).mkdir()
    pq.write_table(with_unknown_dense(table, default_spec(len(settings.scenarios))), f"{uri}/part-0.parquet")
    return {
        "settings": settings,
        "uri": uri,
        "eval_ds": eval_ds,
        "table": table.drop(["impression_id", "request_id", "hist_item_ids"]).to_pandas(),
        "oracle": oracle_auc(truth, labels),
        "seconds": {"simulate": simulated, "samples": time.perf_counter() - started - simulated},
    }


# --- the world's statistics ----------------------------------------------------------------------


def world_stats(df: pd.DataFrame, eval_ds: str, scenarios: tuple[str, ...]) -> dict:
    train, held = df[df["ds"] < eval_ds], df[df["ds"] == eval_ds]
    per_user, per_item = train.groupby("user_id").size(), train.groupby("item_id").size()
    seen = held["item_id"].isin(per_item.index) & held["user_id"].isin(per_user.index)
    out = {
        "train_rows": len(train),
        "held_rows": len(held),
        "users": len(per_user),
        "items": len(per_item),
        "user_median": float(per_user.median()),
        "user_p10": float(per_user.quantile(0.1)),
        "item_median": float(per_item.median()),
        "item_p10": float(per_item.quantile(0.1)),
        "held_seen": float(seen.mean()),
        "position_auc": {},
        "positives": {},
    }
    for s, name in enumerate(scenarios):
        cell = held[held["scenario_id"] == s]
        out["position_auc"][name] = auc(cell["click"].to_numpy(), -cell["position"].to_numpy())
        out["positives"][name] = (int(cell["click"].sum()), int(cell["conversion"].sum()), len(cell))
    return out


# --- the well-specified learner and the blind baseline -------------------------------------------


def _tensors(df: pd.DataFrame) -> dict[str, torch.Tensor]:
    cols = {name: df[name].to_numpy() for name in BLIND_FIELDS if name != "device"}
    cols["device"] = pd.Categorical(df["device"], categories=DEVICES).codes
    cols["scenario"] = df["scenario_id"].to_numpy()
    out = {k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in cols.items()}
    out["click"] = torch.from_numpy(df["click"].to_numpy(np.float32))
    out["conversion"] = torch.from_numpy(df["conversion"].to_numpy(np.float32))
    return out


def _inverse_counts(ids: torch.Tensor, size: int) -> torch.Tensor:
    """1 / (training rows of each id) per id, 0 for unseen ones: the per-row share of an id's prior."""
    counts = torch.bincount(ids, minlength=size).float()
    return torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))


def _embedding(n: int, d: int, std: float) -> nn.Embedding:
    table = nn.Embedding(n, d)
    nn.init.normal_(table.weight, 0.0, std)
    return table


class GenerativeFit(nn.Module):
    """The simulator's generating form, every part learnt (S = 1 makes it scenario-blind).

    click logit = scale·u·M_s v + b_u + b_(s,i) + b_(s,pos) + b_device + b_hour + b_s
    cvr logit   = u'·M'_s v' + b'_i − a_u·c_i + b'_device + b'_s      (conversion given click)
    p(conversion) = σ(click) · σ(cvr). Drift and label noise are not modelled: the held-out day is
    scored with the training days' estimates, and the noise's mixture with the base rate is
    monotone within a scenario, so it does not move a cell's AUC.
    """

    def __init__(self, n_users: int, n_items: int, n_scenarios: int, dim: int) -> None:
        super().__init__()
        scale = 0.1 * dim**-0.25  # small: an id never trained stays near 0
        self.n_scenarios = n_scenarios
        self.u, self.v = _embedding(n_users, dim, scale), _embedding(n_items, dim, scale)
        self.u2, self.v2 = _embedding(n_users, dim, scale), _embedding(n_items, dim, scale)
        self.mix = nn.Parameter(torch.eye(dim).repeat(n_scenarios, 1, 1))  # (S, d, d)
        self.mix2 = nn.Parameter(torch.eye(dim).repeat(n_scenarios, 1, 1))  # (S, d, d)
        self.b_user, self.b_item = _embedding(n_users, 1, 0.0), _embedding(n_scenarios * n_items, 1, 0.0)
        self.b_pos = _embedding(n_scenarios * 64, 1, 0.0)
        self.b_item2, self.a_user, self.c_item = (_embedding(n, 1, 0.01) for n in (n_items, n_users, n_items))
        self.b_ctx = _embedding(len(DEVICES) + 24 + n_scenarios, 1, 0.0)
        self.b_ctx2 = _embedding(len(DEVICES) + n_scenarios, 1, 0.0)

    def forward(self, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows → click and cvr logits, each `(B,)`."""
        s = x["scenario"] if self.n_scenarios > 1 else torch.zeros_like(x["scenario"])
        n_items = self.v.num_embeddings
        u_m = torch.bmm(self.u(x["user_id"]).unsqueeze(1), self.mix[s]).squeeze(1)  # (B, d)
        u2_m = torch.bmm(self.u2(x["user_id"]).unsqueeze(1), self.mix2[s]).squeeze(1)  # (B, d)
        click = (u_m * self.v(x["item_id"])).sum(1)  # (B,)
        click = click + self.b_user(x["user_id"])[:, 0] + self.b_item(s * n_items + x["item_id"])[:, 0]
        click = click + self.b_pos(s * 64 + x["position"])[:, 0]
        ctx = self.b_ctx(x["device"])[:, 0] + self.b_ctx(len(DEVICES) + x["hour"])[:, 0]
        click = click + ctx + self.b_ctx(len(DEVICES) + 24 + s)[:, 0]
        cvr = (u2_m * self.v2(x["item_id"])).sum(1) + self.b_item2(x["item_id"])[:, 0]  # (B,)
        cvr = cvr - self.a_user(x["user_id"])[:, 0] * self.c_item(x["item_id"])[:, 0]
        cvr = cvr + self.b_ctx2(x["device"])[:, 0] + self.b_ctx2(len(DEVICES) + s)[:, 0]
        return click, cvr

    def penalty(self, x: dict[str, torch.Tensor], inv: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per row: Σ over the row's ids of ‖id weights‖² / (the id's training rows)  `(B,)`."""
        user, item = x["user_id"], x["item_id"]
        per_user = sum(t(user).pow(2).sum(1) for t in (self.u, self.u2, self.b_user, self.a_user))
        per_item = sum(t(item).pow(2).sum(1) for t in (self.v, self.v2, self.b_item2, self.c_item))
        s = x["scenario"] if self.n_scenarios > 1 else torch.zeros_like(x["scenario"])
        per_item = per_item + self.b_item(s * self.v.num_embeddings + item).pow(2).sum(1)
        return per_user * inv["user_id"][user] + per_item * inv["item_id"][item]

    def loss(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """Click BCE on every row + conversion-given-click BCE on clicked rows (per row of the batch)."""
        click, cvr = self(x)
        clicked = x["click"] > 0
        bce = F.binary_cross_entropy_with_logits(click, x["click"], reduction="sum")
        bce = bce + F.binary_cross_entropy_with_logits(cvr[clicked], x["conversion"][clicked], reduction="sum")
        return bce / len(click)

    @torch.inference_mode()
    def predict(self, x: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        click, cvr = self(x)
        p_click = torch.sigmoid(click)
        return {"click": p_click.numpy(), "conversion": (p_click * torch.sigmoid(cvr)).numpy()}


class Logistic(nn.Module):
    """Logistic regression on one-hot features: a weight per id of every field, no scenario, one task."""

    def __init__(self, sizes: dict[str, int], task: str) -> None:
        super().__init__()
        self.task, self.fields = task, list(sizes)
        self.offsets = dict(zip(self.fields, np.cumsum([0, *sizes.values()])[:-1].tolist(), strict=True))
        self.w = _embedding(sum(sizes.values()), 1, 0.0)
        self.b = nn.Parameter(torch.zeros(()))

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.b + sum(self.w(x[f] + self.offsets[f])[:, 0] for f in self.fields)  # (B,)

    def penalty(self, x: dict[str, torch.Tensor], inv: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.w(x[f] + self.offsets[f])[:, 0].pow(2) * inv[f][x[f]] for f in ("user_id", "item_id"))

    def loss(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self(x), x[self.task])

    @torch.inference_mode()
    def predict(self, x: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        return {self.task: torch.sigmoid(self(x)).numpy()}


def _batches(x: dict[str, torch.Tensor], batch: int, generator: torch.Generator | None):
    n = len(x["click"])
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch):
        rows = order[start : start + batch]
        yield {k: v[rows] for k, v in x.items()}


def _train(model: nn.Module, x: dict, inv: dict, l2: float, epochs: int, seed: int, valid: dict | None = None):
    """Adam, `epochs` passes; with `valid`, stop when its loss rises. Returns (model, best epochs, best loss)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    best, best_epoch, best_state = float("inf"), epochs, None
    for epoch in range(epochs):
        model.train()
        for b in _batches(x, 4096, torch.Generator().manual_seed(seed + epoch)):
            loss = model.loss(b) + l2 * model.penalty(b, inv).mean()  # (l2 / N) Σ_ids ‖w‖², unbiased per batch
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if valid is None:
            continue
        model.eval()
        with torch.inference_mode():
            value = sum(model.loss(b).item() * len(b["click"]) for b in _batches(valid, 65536, None)) / len(
                valid["click"]
            )
        if value >= best:
            break
        best, best_epoch = value, epoch + 1
        best_state = {k: t.clone() for k, t in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    return model, best_epoch, best


def select_and_fit(make: Callable[[], nn.Module], df: pd.DataFrame, eval_ds: str, max_epochs: int, log) -> nn.Module:
    """L2 chosen on 10% of the training requests (early-stopped epochs too), then refit on all training rows."""
    train = df[df["ds"] < eval_ds]
    rng = np.random.default_rng(0)
    valid_rows = rng.random(len(train)) < 0.1
    fit_x, valid_x, all_x = _tensors(train[~valid_rows]), _tensors(train[valid_rows]), _tensors(train)
    sizes = {f: int(df[f].max()) + 1 for f in ("user_id", "item_id")}
    choices = []
    for l2 in L2_GRID:
        started = time.perf_counter()
        inv = {f: _inverse_counts(fit_x[f], sizes[f]) for f in sizes}
        _, epochs, value = _train(make(), fit_x, inv, l2, max_epochs, seed=0, valid=valid_x)
        log(f"    L2 {l2:g}: valid loss {value:.5f} after {epochs} epochs ({time.perf_counter() - started:.0f} s)")
        choices.append((value, l2, epochs))
    _, l2, epochs = min(choices)
    inv = {f: _inverse_counts(all_x[f], sizes[f]) for f in sizes}
    model, _, _ = _train(make(), all_x, inv, l2, epochs, seed=0)
    log(f"    chose L2 {l2:g}, {epochs} epochs; refit on all {len(train):,} training rows")
    return model.eval()


def cell_aucs(scores: dict[str, np.ndarray], held: pd.DataFrame, scenarios: tuple[str, ...]) -> dict:
    out = {}
    for s, name in enumerate(scenarios):
        rows = (held["scenario_id"] == s).to_numpy()
        for task, score in scores.items():
            out[(name, task)] = auc(held[task].to_numpy()[rows], score[rows])
    return out


def reference_learners(world: dict, dim: int, max_epochs: int, log) -> dict[str, dict]:
    """Ceiling, scenario-blind ceiling, task-blind and blind baseline AUC per cell on the held-out day."""
    df, eval_ds, settings = world["table"], world["eval_ds"], world["settings"]
    scenarios = settings.scenarios
    held = df[df["ds"] == eval_ds]
    held_x = _tensors(held)
    n_users, n_items = int(df["user_id"].max()) + 1, int(df["item_id"].max()) + 1
    out, seconds = {}, {}
    for name, n_scn in (("ceiling", len(scenarios)), ("scenario-blind ceiling", 1)):
        started = time.perf_counter()
        log(f"  {name}:")
        model = select_and_fit(lambda n_scn=n_scn: GenerativeFit(n_users, n_items, n_scn, dim), df, eval_ds,
                               max_epochs, log)  # fmt: skip
        scores = model.predict(held_x)
        out[name] = cell_aucs(scores, held, scenarios)
        seconds[name] = time.perf_counter() - started
        if name == "ceiling":
            out["task-blind (p_click for both)"] = cell_aucs(
                {"click": scores["click"], "conversion": scores["click"]}, held, scenarios
            )
    started = time.perf_counter()
    sizes = {f: int(df[f].max()) + 1 for f in BLIND_FIELDS if f != "device"} | {"device": len(DEVICES)}
    blind = {}
    for task in settings.tasks:
        log(f"  blind logistic regression, {task}:")
        model = select_and_fit(lambda task=task: Logistic(sizes, task), df, eval_ds, max_epochs, log)
        blind.update(cell_aucs(model.predict(held_x), held, scenarios))
    out["blind"] = blind
    seconds["blind"] = time.perf_counter() - started
    return {"auc": out, "seconds": seconds}


# --- report ----------------------------------------------------------------------------------------


def _mean(cells: dict, keys: list) -> float:
    return float(np.nanmean([cells[k] for k in keys]))


def report(world: dict, stats: dict, refs: dict, mmoe: list[dict], cells: list) -> str:
    lines = [
        f"train rows {stats['train_rows']:,}, held-out rows {stats['held_rows']:,}; {stats['users']:,} users "
        f"(median {stats['user_median']:.0f}, p10 {stats['user_p10']:.0f} training impressions), "
        f"{stats['items']:,} items (median {stats['item_median']:.0f}, p10 {stats['item_p10']:.0f}); "
        f"held-out rows with a seen user and item: {stats['held_seen']:.1%}",
        "position AUC (click, −position) per scenario: "
        + ", ".join(f"{s} {v:.4f}" for s, v in stats["position_auc"].items()),
        "held-out (clicks, conversions, rows) per scenario: "
        + ", ".join(f"{s} {v}" for s, v in stats["positives"].items()),
        "",
    ]
    head = ["", *[f"{s}/{t}" for s, t in cells], "mean"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [("oracle", world["oracle"]), *refs["auc"].items()]
    for name, values in rows:
        lines.append(
            f"| {name} | " + " | ".join(f"{values[c]:.4f}" for c in cells) + f" | {_mean(values, cells):.4f} |"
        )
    if mmoe:
        per_cell = {c: [r["auc"][c] for r in mmoe] for c in cells}
        means = [_mean(r["auc"], cells) for r in mmoe]
        sd = {c: statistics.stdev(v) if len(v) > 1 else float("nan") for c, v in per_cell.items()}
        mean_sd = statistics.stdev(means) if len(means) > 1 else float("nan")
        pm = (lambda v: f" ± {v:.4f}") if len(mmoe) > 1 else (lambda v: "")
        label = f"MMoE ({len(mmoe)} seeds, mean ± sd)" if len(mmoe) > 1 else "MMoE (1 seed)"
        lines.append(
            f"| {label} | "
            + " | ".join(f"{statistics.fmean(per_cell[c]):.4f}{pm(sd[c])}" for c in cells)
            + f" | {statistics.fmean(means):.4f}{pm(mean_sd)} |"
        )
        lines += ["", "MMoE seconds per run: " + ", ".join(f"{r['seconds']:.0f}" for r in mmoe)]
    if mmoe and "ceiling" in refs["auc"]:
        ceiling, blind = refs["auc"]["ceiling"], refs["auc"]["blind"]
        spread = {c: ceiling[c] - blind[c] for c in cells}
        lines += [
            "",
            "ceiling − blind per cell: " + ", ".join(f"{s}/{t} {spread[(s, t)]:+.4f}" for s, t in cells),
            f"mean ceiling − blind {_mean(spread, cells):+.4f}; MMoE seed sd per cell max {max(sd.values()):.4f}, "
            f"mean-AUC sd {mean_sd:.4f}; "
            f"smallest cell spread / its sd: {min(spread[c] / sd[c] for c in cells):.1f}×",
        ]
    lines.append("reference learners' seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in refs["seconds"].items()))
    return "\n".join(lines)


def run_mmoe(world: dict, seed: int, epochs: int, patience: int, lr: float, weight_decay: float) -> dict:
    started = time.perf_counter()
    job = Job(world["settings"], world["uri"], world["eval_ds"], "mmoe", seed, epochs, patience, lr, weight_decay)
    result = train_one(job)
    result["seconds"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", choices=sorted(WORLDS), default="zoo")
    parser.add_argument("--rows", type=int, default=1_000_000, help="training rows (train_days days of rows / 3)")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="MMoE seeds (none: no MMoE)")
    parser.add_argument("--epochs", type=int, default=2, help="MMoE epochs (with --patience: the most)")
    parser.add_argument("--patience", type=int, default=0, help="MMoE: early stopping on the last training day")
    parser.add_argument("--lr", type=float, default=2e-3, help="MMoE: Adam's learning rate (bench/zoo.py's default)")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="MMoE: Adam's L2 on every parameter")
    parser.add_argument("--sim-seed", type=int, default=0)
    parser.add_argument("--dim", type=int, default=8, help="the ceiling's latent dim (the world's is 8)")
    parser.add_argument("--max-epochs", type=int, default=10, help="the reference learners' epoch limit")
    parser.add_argument("--no-reference", action="store_true", help="skip ceiling and blind (curve runs)")
    parser.add_argument("--curve", type=int, nargs="*", help="MMoE (first seed) at each of these training sizes")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = WORLDS[args.world]
    log = lambda text: print(text, flush=True)  # noqa: E731

    for rows in args.curve or [args.rows]:
        with tempfile.TemporaryDirectory(prefix="msmt-zoo-world-") as home:
            world = make_world(Path(home), config, rows, args.sim_seed)
            sim, samples = world["seconds"]["simulate"], world["seconds"]["samples"]
            log(f"world {args.world}, {rows:,} rows: simulated in {sim:.0f} s, samples {samples:.0f} s")
            scenarios = world["settings"].scenarios
            cells = [(s, t) for s in scenarios for t in world["settings"].tasks]
            stats = world_stats(world["table"], world["eval_ds"], scenarios)
            refs = {"auc": {}, "seconds": {}}
            if not args.no_reference and not args.curve:
                refs = reference_learners(world, args.dim, args.max_epochs, log)
            seeds = args.seeds[:1] if args.curve else args.seeds
            mmoe = []
            for seed in seeds:
                mmoe.append(run_mmoe(world, seed, args.epochs, args.patience, args.lr, args.weight_decay))
                r = mmoe[-1]
                log(
                    f"  MMoE seed {seed}: mean AUC {_mean(r['auc'], cells):.4f} in {r['seconds']:.0f} s "
                    f"({r['samples_per_s']:,.0f} samples/s, {r['train_rows']:,} rows × {r['epochs_run']} epochs, "
                    f"best {r['best_epoch'] or r['epochs_run']})"
                )
            log(report(world, stats, refs, mmoe, cells))


if __name__ == "__main__":
    main()

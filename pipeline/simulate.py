"""Log simulator: the demo's data source, the tests' fixture and the benchmark's ground truth.

A latent world of users and items produces requests of ranked candidates per scenario; clicks
and conversions are drawn from known probabilities, so every model can be measured against the
oracle (the true probabilities, written to `raw/truth`). What makes it MSMT-hard:

- click logit = interaction `u·M_s v` with `M_s = sqrt(1-h)·I + sqrt(h)·Q_s` (a random rotation per
  scenario, `h` = heterogeneity) + user / item(×scenario) / scenario / position / context biases;
- conversion-given-click uses user and item factors only partly shared with click
  (`task_correlation`) plus a price effect, so a model can win one task and lose the other;
- logs carry only observable proxies: ids, noisy segments / categories / price buckets, device,
  hour, position and the daily-updated click history;
- new items every day and a random walk of item popularity and quality, so yesterday's model goes stale;
- a production ranker with noise orders each request, so position is confounded with relevance;
- malformed rows of known kinds, late clicks across midnight, duplicate clicks and conversions that
  land days later, so the pipeline's checks and joins have real work to do.

Every random stream is keyed by (seed, stream, day): the same seed gives byte-identical files, and a
shorter run is a prefix of a longer one.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm import tqdm

from msmt import lake, storage
from msmt.schemas import CLICKS, CONVERSIONS, IMPRESSIONS, TRUTH
from msmt.settings import Settings
from training.evaluate import auc

DAY_US = 86_400 * 1_000_000
DEVICES = ("ios", "android", "web")
DEVICE_SHARES = (0.45, 0.40, 0.15)
DEVICE_CLICK_EFFECT = np.array([0.10, 0.0, -0.20])
DEVICE_CVR_EFFECT = np.array([0.10, -0.10, 0.15])
UNKNOWN_SCENARIO = "unknown_scn"
FAULTS = {
    "impressions": ("null_user_id", "unknown_scenario", "ts_outside_day", "negative_position"),
    "clicks": ("orphan", "before_impression"),
    "conversions": ("missing_click",),
}
_BEFORE_IMPRESSION_MAX_S = 600  # a "click before its impression" stays inside the impression's day


@dataclass(frozen=True)
class SimConfig:
    """Knobs of the simulated world; defaults give a plausible, MSMT-hard log."""

    # population
    n_users: int = 20_000
    n_items: int = 5_000
    latent_dim: int = 8
    # scenarios, aligned with settings.scenarios; the last one is the ~2% long tail
    scenario_shares: tuple[float, ...] = (0.55, 0.28, 0.15, 0.02)
    scenario_ctr: tuple[float, ...] = (0.045, 0.08, 0.06, 0.03)  # calibrated mean p(click)
    scenario_cvr: tuple[float, ...] = (0.08, 0.13, 0.10, 0.06)  # calibrated mean p(conversion | click)
    heterogeneity: float = 0.5  # 0 = identical scenarios … 1 = unrelated
    task_correlation: float = 0.5  # share of conversion factors that are click's factors
    interaction_scale: float = 1.5  # logit std of the user × item interaction
    label_noise: float = 0.05  # p = (1-ε)·σ(logit) + ε·base rate: signal no feature explains
    proxy_noise: float = 1.0  # noise of segment / category / price bucket relative to their signal
    position_bias: float = 0.35  # logit drop per log1p(position), scaled per scenario
    ranker_noise: float = 1.0  # logit noise of the production ranker that orders each request
    # observable proxies
    n_user_segments: int = 16
    n_item_categories: int = 40
    n_price_buckets: int = 10
    # drift
    new_items_per_day: int = 100
    popularity_drift: float = 0.15  # daily random-walk std of item log-popularity (quality: half of it)
    # log shape
    candidates_per_request: int = 10
    hist_len: int = 10
    max_conversion_delay_days: int = 3
    duplicate_click_rate: float = 0.01
    malformed_rate: float = 0.002  # share of rows made malformed, per raw table


# Balanced scenarios and generous rates on a small world: every cell of a held-out day of ~30k rows
# has enough positives to judge (>= ~100), the world the learnability test and the gate bench use.
JUDGEABLE = SimConfig(
    n_users=3_000,
    n_items=600,
    scenario_shares=(0.4, 0.3, 0.2, 0.1),
    scenario_ctr=(0.15, 0.2, 0.15, 0.12),
    scenario_cvr=(0.3, 0.3, 0.3, 0.3),
    malformed_rate=0.0,
)

# The model zoo's world (bench/zoo.py --world zoo, measured by bench/zoo_world.py; docs/benchmarks.md,
# "The zoo's world"). At ~333k impressions a day, 3 training days give each user a median of ~300
# impressions and each item ~1,000, so the user × item interaction, per scenario and per task, is
# estimable from the rows; a near-random ranker and a weak position effect keep position from giving it away.
ZOO = SimConfig(
    n_users=2_000,  # fewer ids, more rows per id: 1M rows → ~500 impressions per user on average
    n_items=500,
    scenario_shares=(0.4, 0.3, 0.2, 0.1),  # balanced: every cell's held-out day has thousands of positives
    scenario_ctr=(0.10, 0.15, 0.12, 0.08),
    scenario_cvr=(0.15, 0.25, 0.20, 0.12),
    heterogeneity=0.7,  # scenarios share a minority of the interaction: a scenario-blind model pays
    position_bias=0.1,  # a small causal position effect …
    ranker_noise=8.0,  # … and a ranker close to random, so position carries little relevance
    new_items_per_day=10,  # 2% of the catalogue a day: drift without a cold-start-dominated held-out day
    malformed_rate=0.0,
)

WORLDS = {"default": SimConfig(), "judgeable": JUDGEABLE, "zoo": ZOO}  # benchmark worlds by name


@dataclass
class _Users:
    vec: np.ndarray  # (U, d) latent taste, click
    cvr_vec: np.ndarray  # (U, d) latent taste, conversion
    bias: np.ndarray  # (U,)
    price_sensitivity: np.ndarray  # (U,)
    activity: np.ndarray  # (U,) probability of issuing a request
    device: np.ndarray  # (U,) primary device index
    segment: np.ndarray  # (U,) noisy proxy of vec


@dataclass
class _Items:
    vec: np.ndarray  # (I, d)
    cvr_vec: np.ndarray  # (I, d)
    scenario_bias: np.ndarray  # (S, I) click quality per scenario, partly shared; drifts
    cvr_bias: np.ndarray  # (I,)
    logpop: np.ndarray  # (I,) exposure log-weight, drifts
    price: np.ndarray  # (I,) standardised latent price
    category: np.ndarray  # (I,)
    price_bucket: np.ndarray  # (I,)

    def extend(self, new: _Items) -> None:
        for f in fields(self):
            axis = 1 if f.name == "scenario_bias" else 0
            setattr(self, f.name, np.concatenate([getattr(self, f.name), getattr(new, f.name)], axis=axis))


@dataclass
class _World:
    users: _Users
    items: _Items
    click_mix: np.ndarray  # (S, d, d) M_s of the click interaction
    cvr_mix: np.ndarray  # (S, d, d) M_s of the conversion interaction
    position_slope: np.ndarray  # (S,)
    ctr_bias: np.ndarray  # (S,) calibrated to scenario_ctr
    cvr_bias: np.ndarray  # (S,) calibrated to scenario_cvr
    category_protos: np.ndarray  # (n_item_categories, d)
    price_dir: np.ndarray  # (d,)
    history: np.ndarray  # (U, hist_len) clicked item ids, newest first, -1 padded


@dataclass
class _Day:
    """One day's impressions (flat, request-major) with everything needed downstream."""

    request: np.ndarray
    ts: np.ndarray  # us
    user: np.ndarray
    item: np.ndarray
    scenario: np.ndarray
    position: np.ndarray
    device: np.ndarray
    p_click: np.ndarray
    p_conversion: np.ndarray
    click: np.ndarray  # bool
    click_ts: np.ndarray  # us, seconds to minutes after ts (meaningful where click)
    conversion: np.ndarray  # bool, implies click


def simulate(
    settings: Settings,
    start: str,
    days: int,
    impressions_per_day: int,
    seed: int,
    config: SimConfig | None = None,
    progress: bool = True,
) -> dict:
    """Write raw impressions / clicks / conversions / truth for `days` days from `start`.

    `impressions_per_day` is rounded down to whole requests of `candidates_per_request`.

    Returns row counts per day and table (incl. malformed rows per kind as written), totals, and
    the clicks / conversions that would land after the last day and so were not written.
    """
    cfg = config or SimConfig()
    _validate(settings, cfg, impressions_per_day)
    began = time.perf_counter()
    world = _build_world(cfg, len(settings.scenarios), _rng(seed, 0, 0))
    dss = lake.days_between(start, days)
    first_us = _day_start_us(dss[0])
    pending: dict[str, dict[int, list[dict]]] = {"clicks": {}, "conversions": {}}
    report: dict = {"days": {}, "duplicate_clicks": 0}
    for index in tqdm(range(days), desc="simulate", unit="day", disable=not progress):
        rng = _rng(seed, 1, index)
        if index:
            _drift(world, cfg, rng)
        ds = dss[index]
        day = _simulate_day(world, cfg, rng, first_us + index * DAY_US, impressions_per_day)
        counts, faulty = _write_impressions(settings, ds, day, world, cfg, rng)
        clicks, n_dup = _clicks(day, ds, faulty, cfg, rng)
        report["duplicate_clicks"] += n_dup
        _stage(pending["clicks"], clicks, first_us)
        _stage(pending["conversions"], _conversions(day, clicks, world.items.price, ds, cfg, rng), first_us)
        for name, schema in (("clicks", CLICKS), ("conversions", CONVERSIONS)):
            counts[name], counts["malformed"][name] = _flush(settings, name, ds, schema, pending[name].pop(index, []))
        _update_history(world.history, day.user[day.click], day.item[day.click], day.click_ts[day.click])
        report["days"][ds] = counts
    report["not_landed"] = {name: sum(len(c["ts"]) for cs in q.values() for c in cs) for name, q in pending.items()}
    report["totals"] = {t: sum(c[t] for c in report["days"].values()) for t in ("impressions", "clicks", "conversions")}
    report["malformed"] = {
        table: {kind: sum(c["malformed"][table][kind] for c in report["days"].values()) for kind in kinds}
        for table, kinds in FAULTS.items()
    }
    report["seconds"] = round(time.perf_counter() - began, 3)
    return report


def oracle_auc(truth: pd.DataFrame, labels: pd.DataFrame) -> dict[tuple[str, str], float]:
    """AUC of the true probabilities per (scenario, task): the ceiling a model is measured against.

    `labels` has impression_id, click, conversion (conversion on the impression space). Cells are
    scored as the gate scores models: click and conversion (click ∧ purchase) on all impressions,
    with p_click and p_conversion. `cvr` — conversion given click, on clicked impressions — is
    returned too, for the CVR view. A cell with one class only is NaN.
    """
    df = truth.merge(labels[["impression_id", "click", "conversion"]], on="impression_id")
    out: dict[tuple[str, str], float] = {}
    for scenario, cell in df.groupby("scenario", sort=True):
        out[(scenario, "click")] = auc(cell["click"], cell["p_click"])
        out[(scenario, "conversion")] = auc(cell["conversion"], cell["p_conversion"])
        clicked = cell[cell["click"] == 1]
        out[(scenario, "cvr")] = auc(clicked["conversion"], clicked["p_conversion"] / clicked["p_click"])
    return out


def _write_partition(settings: Settings, name: str, ds: str, table: pa.Table) -> None:
    """Replace one raw partition with a single file (re-running a day overwrites it); local or S3."""
    path = lake.raw(settings, name, ds)
    storage.remove_prefix(settings, path)
    storage.write_parquet(settings, f"{path}/part-0.parquet", table)


# --- world -------------------------------------------------------------------------------------


def _validate(settings: Settings, cfg: SimConfig, impressions_per_day: int) -> None:
    n = len(settings.scenarios)
    for name in ("scenario_shares", "scenario_ctr", "scenario_cvr"):
        if len(getattr(cfg, name)) != n:
            raise ValueError(f"SimConfig.{name} needs one value per scenario of settings.scenarios ({n})")
    if cfg.n_items < cfg.candidates_per_request or impressions_per_day < cfg.candidates_per_request:
        raise ValueError("n_items and impressions_per_day must be at least candidates_per_request")


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


def _latent(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Vectors whose dot product has unit variance."""
    return rng.normal(0.0, d**-0.25, (n, d))


def _partly_shared(rng: np.random.Generator, vec: np.ndarray, rho: float) -> np.ndarray:
    """Conversion factors: `rho` of click's factors plus an independent rest of equal variance."""
    return rho * vec + np.sqrt(1 - rho**2) * _latent(rng, *vec.shape)


def _noisy_argmax(rng: np.random.Generator, vec: np.ndarray, protos: np.ndarray, noise: float) -> np.ndarray:
    """Observable class of a latent vector: nearest prototype after noise of `noise`× the signal std."""
    scores = vec @ protos.T
    return np.argmax(scores + rng.normal(0.0, noise * scores.std(), scores.shape), axis=1).astype(np.int32)


def _scenario_mix(rng: np.random.Generator, n: int, d: int, h: float) -> np.ndarray:
    """M_s = sqrt(1-h)·I + sqrt(h)·Q_s: h=0 one shared interaction, h=1 unrelated ones."""
    q, r = np.linalg.qr(rng.normal(size=(n, d, d)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    return np.sqrt(1 - h) * np.eye(d) + np.sqrt(h) * q


def _draw_users(rng: np.random.Generator, cfg: SimConfig, protos: np.ndarray) -> _Users:
    vec = _latent(rng, cfg.n_users, cfg.latent_dim)
    activity = rng.lognormal(0.0, 1.0, cfg.n_users)
    return _Users(
        vec=vec,
        cvr_vec=_partly_shared(rng, vec, cfg.task_correlation),
        bias=rng.normal(0.0, 0.5, cfg.n_users),
        price_sensitivity=rng.normal(0.5, 0.3, cfg.n_users),
        activity=activity / activity.sum(),
        device=rng.choice(len(DEVICES), cfg.n_users, p=DEVICE_SHARES),
        segment=_noisy_argmax(rng, vec, protos, cfg.proxy_noise),
    )


def _draw_items(
    rng: np.random.Generator,
    cfg: SimConfig,
    n: int,
    n_scn: int,
    protos: np.ndarray,
    price_dir: np.ndarray,
    novelty: float,
) -> _Items:
    """`n` fresh items; `novelty` lifts their exposure (new items get shown)."""
    h, rho = cfg.heterogeneity, cfg.task_correlation
    vec = _latent(rng, n, cfg.latent_dim)
    logpop = rng.normal(novelty, 1.0, n)
    bias = 0.25 * (logpop - novelty) + rng.normal(0.0, 0.4, n)  # popular items are somewhat better
    price = 0.6 * vec @ price_dir + 0.8 * rng.normal(size=n)  # ~unit variance, partly in the taste space
    cuts = np.linspace(-1.8, 1.8, cfg.n_price_buckets - 1)
    return _Items(
        vec=vec,
        cvr_vec=_partly_shared(rng, vec, rho),
        scenario_bias=np.sqrt(1 - h) * bias + np.sqrt(h) * rng.normal(0.0, 0.47, (n_scn, n)),
        cvr_bias=rho * bias + np.sqrt(1 - rho**2) * rng.normal(0.0, 0.47, n),
        logpop=logpop,
        price=price,
        category=_noisy_argmax(rng, vec, protos, cfg.proxy_noise),
        price_bucket=np.searchsorted(cuts, price + rng.normal(0.0, 0.3 * cfg.proxy_noise, n)).astype(np.int32),
    )


def _build_world(cfg: SimConfig, n_scn: int, rng: np.random.Generator) -> _World:
    d = cfg.latent_dim
    segment_protos = rng.normal(size=(cfg.n_user_segments, d))
    category_protos = rng.normal(size=(cfg.n_item_categories, d))
    price_dir = rng.normal(size=d) * d**-0.25  # vec @ price_dir has unit variance
    world = _World(
        users=_draw_users(rng, cfg, segment_protos),
        items=_draw_items(rng, cfg, cfg.n_items, n_scn, category_protos, price_dir, novelty=0.0),
        click_mix=_scenario_mix(rng, n_scn, d, cfg.heterogeneity),
        cvr_mix=_scenario_mix(rng, n_scn, d, cfg.heterogeneity),
        position_slope=cfg.position_bias * rng.uniform(0.6, 1.4, n_scn),
        ctr_bias=np.zeros(n_scn),
        cvr_bias=np.zeros(n_scn),
        category_protos=category_protos,
        price_dir=price_dir,
        history=np.full((cfg.n_users, cfg.hist_len), -1, dtype=np.int64),
    )
    _calibrate(world, cfg, rng)
    return world


def _drift(world: _World, cfg: SimConfig, rng: np.random.Generator) -> None:
    """A day passes: popularity and quality wander, new items arrive."""
    items = world.items
    items.logpop += rng.normal(0.0, cfg.popularity_drift, items.logpop.shape)
    items.scenario_bias += rng.normal(0.0, cfg.popularity_drift / 2, items.logpop.shape)  # in every scenario
    if cfg.new_items_per_day:
        new = _draw_items(
            rng, cfg, cfg.new_items_per_day, len(world.ctr_bias), world.category_protos, world.price_dir, novelty=1.0
        )
        items.extend(new)


# --- probabilities -----------------------------------------------------------------------------


def _click_logit(
    world: _World,
    cfg: SimConfig,
    user: np.ndarray,
    item: np.ndarray,
    scn: np.ndarray,
    device: np.ndarray,
    hour: np.ndarray,
) -> np.ndarray:
    """Click logit without scenario bias and position (the ranker sees this, position comes after)."""
    u, v = world.users.vec[user], world.items.vec[item]  # (N, d)
    interaction = _bilinear(u, world.click_mix, scn, v)
    context = DEVICE_CLICK_EFFECT[device] + 0.25 * np.cos(2 * np.pi * (hour - 21) / 24)
    return cfg.interaction_scale * interaction + world.users.bias[user] + world.items.scenario_bias[scn, item] + context


def _cvr_logit(
    world: _World, cfg: SimConfig, user: np.ndarray, item: np.ndarray, scn: np.ndarray, device: np.ndarray
) -> np.ndarray:
    """Conversion-given-click logit without scenario bias: partly other factors, plus price."""
    u, v = world.users.cvr_vec[user], world.items.cvr_vec[item]
    interaction = _bilinear(u, world.cvr_mix, scn, v)
    price = world.users.price_sensitivity[user] * world.items.price[item]
    return cfg.interaction_scale * interaction + world.items.cvr_bias[item] - price + DEVICE_CVR_EFFECT[device]


def _bilinear(u: np.ndarray, mix: np.ndarray, scn: np.ndarray, v: np.ndarray) -> np.ndarray:
    """u·M_s v row by row, one scenario at a time (gathering (N, d, d) matrices would cost memory)."""
    out = np.empty(len(u))
    for s, m in enumerate(mix):
        rows = scn == s
        out[rows] = np.einsum("ni,ij,nj->n", u[rows], m, v[rows])
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _with_noise(logit: np.ndarray, base: np.ndarray, eps: float) -> np.ndarray:
    """Label noise as a mixture with the base rate: it caps every model (and the oracle) alike."""
    return (1 - eps) * _sigmoid(logit) + eps * base


def _solve_bias(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per row of `logits` (S, m), the shift b with mean σ(logit + b) = target (bisection)."""
    lo, hi = np.full(len(targets), -20.0), np.full(len(targets), 20.0)
    for _ in range(60):
        mid = (lo + hi) / 2
        high = _sigmoid(logits + mid[:, None]).mean(axis=1) > targets
        hi, lo = np.where(high, mid, hi), np.where(high, lo, mid)
    return (lo + hi) / 2


def _calibrate(world: _World, cfg: SimConfig, rng: np.random.Generator, m: int = 20_000) -> None:
    """Set scenario biases so each scenario's mean CTR / CVR match the configured base rates."""
    n_scn = len(world.ctr_bias)
    scn = np.repeat(np.arange(n_scn), m)
    user = rng.choice(cfg.n_users, n_scn * m, p=world.users.activity)
    item = rng.choice(len(world.items.logpop), n_scn * m, p=_exposure(world.items.logpop))
    device, hour = world.users.device[user], rng.integers(0, 24, n_scn * m)
    position = rng.integers(0, cfg.candidates_per_request, n_scn * m)
    click = _click_logit(world, cfg, user, item, scn, device, hour) - world.position_slope[scn] * np.log1p(position)
    world.ctr_bias = _solve_bias(click.reshape(n_scn, m), np.asarray(cfg.scenario_ctr))
    cvr = _cvr_logit(world, cfg, user, item, scn, device)
    world.cvr_bias = _solve_bias(cvr.reshape(n_scn, m), np.asarray(cfg.scenario_cvr))


def _exposure(logpop: np.ndarray) -> np.ndarray:
    weights = np.exp(logpop - logpop.max())
    return weights / weights.sum()


# --- one day -----------------------------------------------------------------------------------


def _distinct_candidates(rng: np.random.Generator, items: np.ndarray, n_items: int) -> np.ndarray:
    """Resample repeated items inside a request (a response never shows an item twice)."""
    while True:
        same = items[:, :, None] == items[:, None, :]  # (R, C, C)
        repeat = np.tril(same, k=-1).any(axis=2)  # a cell equal to an earlier one
        if not repeat.any():
            return items
        items[repeat] = rng.integers(0, n_items, int(repeat.sum()))


def _simulate_day(world: _World, cfg: SimConfig, rng: np.random.Generator, day_us: int, impressions: int) -> _Day:
    """Requests → candidates ordered by a noisy ranker → true probabilities → labels."""
    c = cfg.candidates_per_request
    n_req = impressions // c
    hours = np.arange(24)
    traffic = 1 + 0.7 * np.cos(2 * np.pi * (hours - 20) / 24)
    secs = np.sort(rng.choice(hours, n_req, p=traffic / traffic.sum()) * 3600 + rng.integers(0, 3600, n_req))
    scn_r = rng.choice(len(world.ctr_bias), n_req, p=np.asarray(cfg.scenario_shares) / sum(cfg.scenario_shares))
    user_r = rng.choice(cfg.n_users, n_req, p=world.users.activity)
    device_r = np.where(rng.random(n_req) < 0.85, world.users.device[user_r], rng.integers(0, len(DEVICES), n_req))
    n_items = len(world.items.logpop)
    items = _distinct_candidates(rng, rng.choice(n_items, (n_req, c), p=_exposure(world.items.logpop)), n_items)

    user, scn, device, hour = (np.repeat(a, c) for a in (user_r, scn_r, device_r, secs // 3600))  # per candidate
    base = _click_logit(world, cfg, user, items.ravel(), scn, device, hour).reshape(n_req, c)
    order = np.argsort(-(base + rng.normal(0.0, cfg.ranker_noise, base.shape)), axis=1, kind="stable")
    item, base = np.take_along_axis(items, order, 1).ravel(), np.take_along_axis(base, order, 1).ravel()
    position = np.tile(np.arange(c), n_req)

    ctr, cvr = np.asarray(cfg.scenario_ctr)[scn], np.asarray(cfg.scenario_cvr)[scn]
    click_logit = base + world.ctr_bias[scn] - world.position_slope[scn] * np.log1p(position)
    p_click = _with_noise(click_logit, ctr, cfg.label_noise)
    p_cvr = _with_noise(_cvr_logit(world, cfg, user, item, scn, device) + world.cvr_bias[scn], cvr, cfg.label_noise)
    click = rng.random(len(item)) < p_click
    delay_s = np.clip(rng.lognormal(np.log(20.0), 1.0, len(item)), 1.0, 1800.0)
    ts = day_us + np.repeat(secs, c) * 1_000_000
    return _Day(
        request=np.repeat(np.arange(n_req), c),
        ts=ts,
        user=user,
        item=item,
        scenario=scn,
        position=position,
        device=device,
        p_click=p_click,
        p_conversion=p_click * p_cvr,
        click=click,
        click_ts=ts + (delay_s * 1_000_000).astype(np.int64),
        conversion=click & (rng.random(len(item)) < p_cvr),
    )


def _pick_faults(rng: np.random.Generator, n: int, eligible: np.ndarray, rate: float, kinds: int) -> np.ndarray:
    """Fault code per row (-1 = clean): a binomial share of `rate`, drawn among `eligible` rows."""
    fault = np.full(n, -1, dtype=np.int8)
    rows = np.flatnonzero(eligible)
    chosen = rng.choice(rows, min(rng.binomial(n, rate), len(rows)), replace=False)
    fault[np.sort(chosen)] = rng.integers(0, kinds, len(chosen))
    return fault


def _count(fault: np.ndarray, table: str) -> dict[str, int]:
    return {kind: int((fault == k).sum()) for k, kind in enumerate(FAULTS[table])}


def _history_column(history: np.ndarray, user: np.ndarray) -> pa.ListArray:
    """Each row's user history (newest first) as of the start of the day."""
    rows = history[user]  # (N, L), -1 padded at the end
    lengths = (rows >= 0).sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(rows[rows >= 0], type=pa.int64()))


def _write_impressions(
    settings: Settings, ds: str, day: _Day, world: _World, cfg: SimConfig, rng: np.random.Generator
) -> tuple[dict, np.ndarray]:
    """Write impressions (with injected faults) and truth; return counts and which rows are malformed."""
    n = len(day.item)
    fault = _pick_faults(rng, n, np.ones(n, dtype=bool), cfg.malformed_rate, len(FAULTS["impressions"]))
    ts = np.where(fault == 2, day.ts % DAY_US, day.ts)  # same time of day, in 1970
    names = np.asarray(settings.scenarios, dtype=object)[day.scenario]
    ids = [f"{ds}-i{k}" for k in range(n)]
    impressions = pa.Table.from_arrays(
        [
            pa.array(ids, pa.string()),
            pa.array([f"{ds}-r{r}" for r in day.request], pa.string()),
            pa.array(ts, IMPRESSIONS.field("ts").type),
            pa.array(day.user, pa.int64(), mask=fault == 0),
            pa.array(day.item, pa.int64()),
            pa.array(np.where(fault == 1, UNKNOWN_SCENARIO, names), pa.string()),
            pa.array(np.where(fault == 3, -1 - day.position, day.position), pa.int32()),
            pa.array(np.asarray(DEVICES, dtype=object)[day.device], pa.string()),
            pa.array(world.users.segment[day.user], pa.int32()),
            pa.array(world.items.category[day.item], pa.int32()),
            pa.array(world.items.price_bucket[day.item], pa.int32()),
            _history_column(world.history, day.user),
        ],
        schema=IMPRESSIONS,
    )
    truth = pa.Table.from_arrays(
        [pa.array(ids, pa.string()), pa.array(names, pa.string()), pa.array(day.p_click), pa.array(day.p_conversion)],
        schema=TRUTH,
    )
    _write_partition(settings, "impressions", ds, impressions)
    _write_partition(settings, "truth", ds, truth)
    return {"impressions": n, "truth": n, "malformed": {"impressions": _count(fault, "impressions")}}, fault >= 0


def _clicks(
    day: _Day, ds: str, faulty_impression: np.ndarray, cfg: SimConfig, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], int]:
    """One row per click, seconds to minutes after the impression, ~1% duplicated, some malformed.

    Returns the click columns (plus `fault` and the impression `row`) and the number of duplicates.
    """
    rows = np.flatnonzero(day.click)
    ts = day.click_ts[rows]
    dup = np.flatnonzero(rng.random(len(rows)) < cfg.duplicate_click_rate)
    rows = np.concatenate([rows, rows[dup]])
    ts = np.concatenate([ts, ts[dup] + rng.integers(1, 30, len(dup)) * 1_000_000])
    # faults only on clicks of clean impressions early enough that "before its impression" stays that day
    secs = (day.ts[rows] % DAY_US) // 1_000_000
    eligible = ~faulty_impression[rows] & (secs >= _BEFORE_IMPRESSION_MAX_S)
    fault = _pick_faults(rng, len(rows), eligible, cfg.malformed_rate, len(FAULTS["clicks"]))
    early = rng.integers(1, _BEFORE_IMPRESSION_MAX_S, len(rows)) * 1_000_000
    ts = np.where(fault == 1, day.ts[rows] - early, ts)
    impression_id = np.array([f"{ds}-i{r}" for r in rows], dtype=object)
    impression_id[fault == 0] = [f"orphan-{ds}-{k}" for k in range(int((fault == 0).sum()))]
    click_id = np.array([f"{ds}-c{k}" for k in range(len(rows))], dtype=object)
    return {"click_id": click_id, "impression_id": impression_id, "ts": ts, "fault": fault, "row": rows}, len(dup)


def _conversions(
    day: _Day, clicks: dict[str, np.ndarray], item_price: np.ndarray, ds: str, cfg: SimConfig, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """A conversion per converting click (its first click row), mostly within hours, a tail of days."""
    n_first = int(day.click.sum())
    first = np.flatnonzero(day.conversion[clicks["row"][:n_first]])
    n = len(first)
    horizon_s = max(cfg.max_conversion_delay_days, 1) * 86_400
    delay_s = np.where(rng.random(n) < 0.8, rng.exponential(3 * 3600, n), rng.uniform(0, horizon_s, n))
    ts = clicks["ts"][first] + (np.minimum(delay_s, horizon_s - 1) * 1_000_000).astype(np.int64)
    fault = _pick_faults(rng, n, np.ones(n, dtype=bool), cfg.malformed_rate, len(FAULTS["conversions"]))
    click_id = clicks["click_id"][first].copy()
    click_id[fault == 0] = [f"missing-{ds}-{k}" for k in range(int((fault == 0).sum()))]
    price = item_price[day.item[clicks["row"][first]]] + rng.normal(0.0, 0.3, n)
    return {
        "conversion_id": np.array([f"{ds}-v{k}" for k in range(n)], dtype=object),
        "click_id": click_id,
        "ts": ts,
        "value": np.round(np.exp(3.0 + 0.8 * price), 2),
        "fault": fault,
    }


def _stage(pending: dict[int, list[dict]], events: dict[str, np.ndarray], first_us: int) -> None:
    """Queue events under the day their own ts falls on (a late click lands in tomorrow's partition)."""
    day_index = (events["ts"] - first_us) // DAY_US
    for index in np.unique(day_index):
        keep = day_index == index
        pending.setdefault(int(index), []).append({k: v[keep] for k, v in events.items()})


def _flush(settings: Settings, name: str, ds: str, schema: pa.Schema, chunks: list[dict]) -> tuple[int, dict[str, int]]:
    """Write every event that landed on `ds`; return its row count and faults per kind."""
    if not chunks:
        _write_partition(settings, name, ds, schema.empty_table())
        return 0, _count(np.array([]), name)
    fault = np.concatenate([c["fault"] for c in chunks])
    columns = [pa.array(np.concatenate([c[f.name] for c in chunks]), f.type) for f in schema]
    table = pa.Table.from_arrays(columns, schema=schema)
    _write_partition(settings, name, ds, table)
    return table.num_rows, _count(fault, name)


def _update_history(history: np.ndarray, user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> None:
    """Prepend the day's clicks (newest first) to each user's history, keeping hist_len items."""
    length = history.shape[1]
    old_user, slot = np.nonzero(history >= 0)
    all_user = np.concatenate([user, old_user])
    all_item = np.concatenate([item, history[old_user, slot]])
    recency = np.concatenate([ts.astype(np.float64), -1.0 - slot])  # any click today beats yesterday's
    order = np.lexsort((-recency, all_user))
    all_user, all_item = all_user[order], all_item[order]
    starts = np.flatnonzero(np.r_[True, all_user[1:] != all_user[:-1]])
    rank = np.arange(len(all_user)) - np.repeat(starts, np.diff(np.r_[starts, len(all_user)]))
    keep = rank < length
    history[np.unique(all_user)] = -1
    history[all_user[keep], rank[keep]] = all_item[keep]


def _day_start_us(ds: str) -> int:
    return int(dt.datetime.fromisoformat(ds).replace(tzinfo=dt.UTC).timestamp()) * 1_000_000

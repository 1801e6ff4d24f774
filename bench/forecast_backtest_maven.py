"""Backtest the forecast methods on the Maven CRM sample, straight from its CSV files.

    /tmp/venv/bin/python bench/forecast_backtest_maven.py [DATA_DIR] [--from 2017-04-01] [--to 2018-01-01] [--json]
    /tmp/venv/bin/python bench/forecast_backtest_maven.py --synthetic   # learned vs naive on synthetic tenants
    /tmp/venv/bin/python bench/forecast_backtest_maven.py --perf        # time a forecast on a 1M-lead tenant

DATA_DIR defaults to ../shared/data/maven-crm relative to the repository. The mapping
is the demo importer's (canvass/pipeline/demo.py): an opportunity enters the pipeline
on its engage date at stage ``approach`` with its product's list price as amount;
Won/Lost close on the close date (a win's amount becomes its close value); open
Prospecting rows have no dates and are created on the last day of the data, so they
exist only after every backtest window used here.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from canvass.forecasting.backtest import METHODS, run_backtest, score  # noqa: E402
from canvass.forecasting.baselines import DEFAULT_STAGE_PROBABILITIES, WeightedPipelineConfig  # noqa: E402
from canvass.forecasting.history import DISQUALIFIED, LOST, OPEN, STAGES, WON, LeadHistory  # noqa: E402

_ = DISQUALIFIED


def _day(text: str) -> int:
    month, day, year = (int(p) for p in text.split("/"))
    return (dt.date(year, month, day) - dt.date(1970, 1, 1)).days


def load_maven(data_dir: Path) -> LeadHistory:
    """The Maven opportunities as a LeadHistory (one lead per opportunity)."""
    with (data_dir / "products.csv").open(newline="", encoding="utf-8") as f:
        price = {r["product"].replace(" ", "").lower(): float(r["sales_price"]) for r in csv.DictReader(f)}
    with (data_dir / "sales_pipeline.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    data_end = max(_day(r[c]) for r in rows for c in ("engage_date", "close_date") if r[c])
    status_of = {"Won": WON, "Lost": LOST, "Engaging": OPEN, "Prospecting": OPEN}
    n = len(rows)
    created = np.array([_day(r["engage_date"]) if r["engage_date"] else data_end for r in rows], np.int64)
    status = np.array([status_of[r["deal_stage"]] for r in rows], np.int8)
    closed = np.array([_day(r["close_date"]) if r["close_date"] else -1 for r in rows], np.int64)
    list_price = np.array([price[r["product"].replace(" ", "").lower()] for r in rows])
    close_value = np.array([float(r["close_value"] or 0) for r in rows])
    won = status == WON
    win_idx = np.flatnonzero(won)
    amount_lead = np.concatenate([np.arange(n), win_idx])
    amount_day = np.concatenate([created, closed[win_idx]])
    amount = np.concatenate([list_price, np.where(close_value[win_idx] > 0, close_value[win_idx], list_price[win_idx])])
    engaged = np.array([bool(r["engage_date"]) for r in rows])
    stage_to = np.where(engaged, STAGES.index("approach"), STAGES.index("prospecting")).astype(np.int8)
    agents = sorted({r["sales_agent"] for r in rows})
    owner = np.array([agents.index(r["sales_agent"]) for r in rows], np.int32)
    return LeadHistory.from_arrays(
        created=created,
        status=status,
        closed=closed,
        amount_lead=amount_lead,
        amount_day=amount_day,
        amount=amount,
        stage_lead=np.arange(n),
        stage_day=created,
        stage_to=stage_to,
        owner=owner,
    )


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None:
        return "—"
    return f"{100 * x:.1f}%" if pct else f"{x:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", default=str(ROOT.parent / "shared" / "data" / "maven-crm"))
    parser.add_argument("--from", dest="from_date", default="2017-04-01")
    parser.add_argument("--to", dest="to_date", default="2018-01-01")
    parser.add_argument("--horizons", default="30,60,90")
    parser.add_argument("--since", default="2017-06-01", help="also score origins on or after this day")
    parser.add_argument("--json", action="store_true", help="print the backtest JSON contract instead of tables")
    parser.add_argument(
        "--stage-probability",
        action="append",
        default=[],
        metavar="STAGE=P",
        help="override a stage probability of the weighted pipeline, e.g. approach=0.5",
    )
    parser.add_argument("--cycle-days", type=int, default=60, help="cycle of the weighted pipeline")
    parser.add_argument("--synthetic", action="store_true", help="compare learned and naive on synthetic tenants")
    parser.add_argument("--ablation", action="store_true", help="learned with one piece switched off at a time")
    parser.add_argument("--perf", action="store_true", help="time the learned forecast on a 1M-lead synthetic tenant")
    args = parser.parse_args(argv)
    if args.synthetic:
        return synthetic_comparison()
    if args.perf:
        return performance()
    if args.ablation:
        return ablation(Path(args.data_dir), args.from_date, args.to_date)
    history = load_maven(Path(args.data_dir))
    horizons = [int(h) for h in args.horizons.split(",")]
    probabilities = dict(DEFAULT_STAGE_PROBABILITIES)
    for item in args.stage_probability:
        stage, _, p = item.partition("=")
        probabilities[stage] = float(p)
    weighted = WeightedPipelineConfig(stage_probabilities=probabilities, cycle_days=args.cycle_days)
    report = run_backtest(history, horizons, args.from_date, args.to_date, weighted_config=weighted)
    if args.json:
        print(json.dumps(report.to_builtins(), indent=1))
        return 0
    for label, since in (("all origins", None), (f"origins from {args.since}", args.since)):
        print(f"\n{label} ({args.from_date} .. {args.to_date})")
        print("| method | h | n | WAPE | bias | P10–P90 coverage | sharpness (P90−P10)/P50 |")
        print("|---|---|---|---|---|---|---|")
        for m in METHODS:
            for h in horizons:
                s = score(report.origins, m, h, since)
                print(
                    f"| {m} | {h} | {s.n} | {_fmt(s.wape)} | {_fmt(s.bias)} | {_fmt(s.coverage_p10_p90)} | {_fmt(s.sharpness, False)} |"
                )
        for m in METHODS:
            rows = [o for o in report.origins if o.method == m and (since is None or o.as_of >= since)]
            a = np.array([o.actual for o in rows])
            cov = np.mean([(o.p10 <= o.actual <= o.p90) for o in rows])
            sharp = np.median([(o.p90 - o.p10) / o.p50 for o in rows if o.p50 > 0])
            print(f"pooled over horizons, {m}: coverage {100 * cov:.0f}% (n={a.size}), sharpness {sharp:.2f}")
    print("\nlearned, per origin:")
    print("| h | as of | actual | forecast | P10 | P50 | P90 | flags |")
    print("|---|---|---|---|---|---|---|---|")
    for o in report.origins:
        if o.method == "learned":
            print(
                f"| {o.horizon_days} | {o.as_of} | {o.actual:,.0f} | {o.forecast:,.0f} | {o.p10:,.0f} | {o.p50:,.0f} | {o.p90:,.0f} | {','.join(o.flags)} |"
            )
    return 0


def synthetic_comparison(seeds: tuple[int, ...] = (1, 2, 3)) -> int:
    """Each synthetic profile and seed: three years of history, as-of dates monthly from the second year."""
    from canvass.forecasting.history import as_date
    from canvass.forecasting.synthetic import PROFILES, synthetic_tenant

    print(
        "| tenant | seed | leads | learned WAPE 30/60/90 | naive WAPE 30/60/90 | learned bias 30/60/90 | learned coverage | learned sharpness | naive coverage |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, profile in PROFILES.items():
        for seed in seeds:
            history = synthetic_tenant(profile, seed=seed)
            start = int(history.created.min())
            report = run_backtest(
                history, (30, 60, 90), as_date(start + 365), as_date(start + profile.days), ("learned", "naive_last_h")
            )
            cells = []
            for m in ("learned", "naive_last_h"):
                cells.append("/".join(f"{100 * (score(report.origins, m, h).wape or 0):.0f}" for h in (30, 60, 90)))
            bias = "/".join(f"{100 * (score(report.origins, 'learned', h).bias or 0):+.0f}" for h in (30, 60, 90))
            cover = {}
            for m in ("learned", "naive_last_h"):
                rows = [o for o in report.origins if o.method == m]
                cover[m] = (
                    np.mean([o.p10 <= o.actual <= o.p90 for o in rows]),
                    np.median([(o.p90 - o.p10) / o.p50 for o in rows if o.p50 > 0]),
                )
            print(
                f"| {name} | {seed} | {history.n_leads:,} | {cells[0]} | {cells[1]} | {bias} | "
                f"{100 * cover['learned'][0]:.0f}% | {cover['learned'][1]:.2f} | {100 * cover['naive_last_h'][0]:.0f}% |"
            )
    return 0


def ablation(data_dir: Path, from_date: str, to_date: str) -> int:
    """What each piece of the learned model is worth on the Maven backtest."""
    from canvass.forecasting.learned import LearnedConfig

    history = load_maven(data_dir)
    variants = {
        "learned (all pieces)": LearnedConfig(),
        "no calendar effects": LearnedConfig(calendar_effects=False),
        "no self-calibration": LearnedConfig(bias_prior_sigma=1e-9),
        "fixed 90-day half-life": LearnedConfig(half_life_candidates=(90.0,)),
        "no year-over-year arrivals": LearnedConfig(max_season_years=0),
    }
    print("| variant | WAPE 30/60/90 | bias 30/60/90 | WAPE from 2017-06 | coverage | sharpness |")
    print("|---|---|---|---|---|---|")
    for label, cfg in variants.items():
        report = run_backtest(history, (30, 60, 90), from_date, to_date, ("learned",), learned_config=cfg)
        all_ = [score(report.origins, "learned", h) for h in (30, 60, 90)]
        late = [score(report.origins, "learned", h, "2017-06-01") for h in (30, 60, 90)]
        rows = report.origins
        cover = np.mean([o.p10 <= o.actual <= o.p90 for o in rows])
        sharp = np.median([(o.p90 - o.p10) / o.p50 for o in rows if o.p50 > 0])
        print(
            f"| {label} | {'/'.join(f'{100 * (s.wape or 0):.1f}' for s in all_)} | "
            f"{'/'.join(f'{100 * (s.bias or 0):+.1f}' for s in all_)} | "
            f"{'/'.join(f'{100 * (s.wape or 0):.1f}' for s in late)} | {100 * cover:.0f}% | {sharp:.2f} |"
        )
    return 0


def performance() -> int:
    """Build a ~1M-lead tenant and time the learned forecast (three horizons from one fit)."""
    import time

    import msgspec

    from canvass.forecasting.history import as_date
    from canvass.forecasting.learned import learned_many
    from canvass.forecasting.synthetic import TenantProfile, leads_per_day_for, synthetic_tenant

    base = TenantProfile(days=4 * 365, revisits_per_lead=0.6)
    profile = msgspec.structs.replace(base, leads_per_day=leads_per_day_for(1_000_000, base))
    t0 = time.perf_counter()
    history = synthetic_tenant(profile, seed=1)
    t1 = time.perf_counter()
    print(f"synthetic tenant: {history.n_leads:,} leads, {history.stage_lead.size:,} stage changes in {t1 - t0:.2f} s")
    as_of = as_date(int(history.created.max()) - 60)
    for horizons in ([30], [30, 60, 90]):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            learned_many(history, as_of, horizons)
            times.append(time.perf_counter() - t0)
        print(f"learned forecast {horizons}: best {min(times):.2f} s, worst {max(times):.2f} s of 3")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Report charts as PNG images, drawn with matplotlib (headless Agg backend).

matplotlib is imported on first use: the API process pays its start-up cost only
when someone asks for a picture.
"""

from __future__ import annotations

import io
from typing import Any

from canvass.forecasting.funnel import FunnelReport

_STAGE_LABELS = {
    "prospecting": "Prospecting",
    "qualify": "Qualify",
    "approach": "Approach",
    "negotiate": "Negotiate",
    "handle_objections": "Objections",
    "close": "Close",
    "after_sale": "After-sale",
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def _title(report: FunnelReport, what: str) -> str:
    return f"{what}, {report.period_start:%Y-%m-%d} to {report.period_end:%Y-%m-%d}"


def funnel_chart(report: FunnelReport) -> bytes:
    """Horizontal funnel: leads entering each stage, with the conversion to the next."""
    plt = _pyplot()
    stages = report.stages
    labels = [_STAGE_LABELS[s.stage] for s in stages]
    counts = [s.entered for s in stages]
    widest = max(counts) if any(counts) else 1
    fig, ax = plt.subplots(figsize=(8, 4.5))
    positions = list(range(len(stages)))[::-1]
    lefts = [(widest - c) / 2 for c in counts]
    ax.barh(positions, counts, left=lefts, color="#2f6f9f", height=0.75)
    for y, stage, left, count in zip(positions, stages, lefts, counts, strict=True):
        note = f"{count:,}"
        if stage.conversion_rate is not None:
            note += f"  ({stage.conversion_rate:.0%} advance)"
        if count >= widest * 0.45:
            ax.text(left + count / 2, y, note, ha="center", va="center", color="white")
        else:  # too narrow to hold its label: write it beside the bar
            ax.text(left + count + widest * 0.02, y, note, ha="left", va="center", color="black")
    ax.set_yticks(positions, labels)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    won = f"won {report.won:,}"
    if report.win_rate is not None:
        won += f", win rate {report.win_rate:.0%}"
    ax.set_title(_title(report, f"Funnel ({won})"))
    return _png(fig)


def stage_duration_chart(report: FunnelReport) -> bytes:
    """Days in each stage: median bar with the mean and P90 marked."""
    plt = _pyplot()
    stages = [s for s in report.stages if s.visits_ended]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if not stages:
        ax.text(0.5, 0.5, "No stage visits ended in this period", ha="center", va="center")
        ax.set_axis_off()
        return _png(fig)
    x = list(range(len(stages)))
    ax.bar(x, [s.days_median or 0 for s in stages], color="#2f6f9f", label="median")
    ax.scatter(x, [s.days_mean or 0 for s in stages], color="#e08a1e", zorder=3, label="mean")
    ax.scatter(x, [s.days_p90 or 0 for s in stages], color="#b8322a", marker="_", s=400, zorder=3, label="P90")
    ax.set_xticks(x, [_STAGE_LABELS[s.stage] for s in stages])
    ax.set_ylabel("days in stage")
    ax.legend(frameon=False)
    ax.set_title(_title(report, "Days in stage"))
    return _png(fig)

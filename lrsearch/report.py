"""A study's report: PNG plots and one self-contained HTML page a person reads without the numbers.

``write_report(storage, study, folder)`` writes five plots and ``index.html`` (the plots embedded
as data URIs, no other file or network needed):

- ``history.png``: the metric over trials with the best so far; pruned, diverged and failed trials
  each marked their own way;
- ``rates.png``: per group, the learning rate against the metric on a log axis, frozen trials in a
  strip of their own at the left, the best trials' band shaded;
- ``curves.png``: the intermediate values of every trial, pruned trials ending in a cross;
- ``importance.png``: how much each group's rate explains (fANOVA), or why it could not be said;
- ``frozen.png``: per group, the metric of the trials that froze it against those that trained it.

The numbers behind them come from :mod:`lrsearch.analysis`; this module only draws. matplotlib (an
optional extra, ``lrsearch[report]``) is imported when a report is made, with the Agg canvas: no
display, no global pyplot state.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import optuna

from lrsearch import __version__
from lrsearch.analysis import (
    GroupStats,
    Importance,
    curves_frame,
    format_rate,
    group_importance,
    group_stats,
    outcome_counts,
    searched_ranges,
    study_groups,
    trials_frame,
)
from lrsearch.confirm import describe, seed_values
from lrsearch.errors import LrsearchError
from lrsearch.pick import candidates, pick, rank_seeded
from lrsearch.schema import Outcome
from lrsearch.storage import load_study, open_storage

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# One look per outcome, the same in every plot.
COMPLETE = "#1f6fb4"
PRUNED = "#8c8c8c"
DIVERGED = "#d62728"
FAILED = "#222222"
BEST = "#ffb000"
BAND = "#2ca02c"
FROZEN_BAR = "#9ecae1"
TRAINED_BAR = "#08519c"
NO_VALUE = {  # outcomes without a value: drawn on a strip of their own
    Outcome.DIVERGED: (DIVERGED, "x", "diverged (NaN/inf)"),
    Outcome.FAILED: (FAILED, "X", "failed"),
    Outcome.INTERRUPTED: ("#9467bd", "s", "interrupted"),
    "running": ("#17becf", ">", "running"),
}
FIGURES = ("history", "rates", "curves", "importance", "frozen")
DPI = 110


@dataclass(frozen=True)
class ReportData:
    """Everything a report shows, read once from the study."""

    study: str
    direction: str
    groups: list[str]
    trials: pd.DataFrame
    curves: pd.DataFrame
    counts: dict[str, int]
    stats: list[GroupStats]
    importance: Importance
    ranges: dict[str, tuple[float, float]]
    # The best trial as lrsearch.pick chooses it, and how, when the study was confirmed.
    best_number: int | None = None
    ranking: str | None = None

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    @property
    def complete(self) -> pd.DataFrame:
        t = self.trials
        return t[(t["state"] == "complete") & t["value"].notna()]

    @property
    def best(self) -> pd.Series | None:
        """The best complete trial's row (ties: the earliest; lrsearch.pick's when it is set)."""
        done = self.complete
        if done.empty:
            return None
        if self.best_number is not None:
            rows = done[done["number"] == self.best_number]
            if not rows.empty:
                return rows.iloc[0]
        ranked = done.sort_values(["value", "number"], ascending=[not self.maximize, True])
        return ranked.iloc[0]


def collect(storage: optuna.storages.BaseStorage | str | None, study_name: str) -> ReportData:
    """Read what a report shows from a study.

    Args:
        storage: An Optuna storage or a storage URL (``None``: ``$LRSEARCH_STORAGE``, then the
            default).
        study_name: The study.

    Raises:
        StorageError: The storage cannot be opened.
        StudyNotFoundError: No such study.
        LrsearchError: The study has several objectives.
    """
    if storage is None or isinstance(storage, str):
        storage = open_storage(storage, create=False)
    study = load_study(storage, study_name)
    trials = trials_frame(study)  # also refuses multi-objective studies
    groups = study_groups(study)
    direction = study.directions[0].name.lower()
    ranges = searched_ranges(study, groups)
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    every = study.get_trials(deepcopy=False)
    seeds = seed_values(study, storage)
    seeded = rank_seeded(every, seeds, maximize=maximize)
    best_number = pick(every, maximize=maximize, seeds=seeds).number if candidates(every) else None
    return ReportData(
        study=study_name,
        direction=direction,
        groups=groups,
        trials=trials,
        curves=curves_frame(study),
        counts=outcome_counts(trials),
        stats=group_stats(trials, groups, direction=direction, ranges=ranges),
        importance=group_importance(study, trials, groups),
        ranges=ranges,
        best_number=best_number,
        ranking=describe(seeded) if seeded else None,
    )


def _matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise LrsearchError(
            "lrsearch report draws with matplotlib, which is not installed: "
            'pip install "lrsearch[report]"'
        ) from e


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # Agg, whatever backend the user's matplotlib is set to
    return fig


def make_figures(data: ReportData) -> dict[str, Figure]:
    """The report's figures by name (see :data:`FIGURES`), drawn but not saved.

    Raises:
        LrsearchError: matplotlib is not installed.
    """
    _matplotlib()
    return {
        "history": _history(data),
        "rates": _rates(data),
        "curves": _curves(data),
        "importance": _importance(data),
        "frozen": _frozen(data),
    }


def _note(ax: Axes, text: str) -> None:
    """Say in the panel itself why it is empty."""
    ax.text(
        0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#555", wrap=True
    )
    ax.set_xticks([])
    ax.set_yticks([])


def _ylabel(data: ReportData) -> str:
    return f"value ({'higher' if data.maximize else 'lower'} is better)"


def _history(data: ReportData) -> Figure:
    t = data.trials
    missing = t[t["state"].isin(list(NO_VALUE))]
    fig = _figure(11, 4.6 if missing.empty else 5.2)
    if missing.empty:
        ax = fig.add_subplot()
        strip = None
    else:
        grid = fig.add_gridspec(2, 1, height_ratios=[6, 1])
        ax = fig.add_subplot(grid[0])
        strip = fig.add_subplot(grid[1], sharex=ax)
    ax.set_title(
        f"{data.study}: the metric of every trial, and the best so far", loc="left", fontsize=12
    )
    done = data.complete
    pruned = t[(t["state"] == "pruned") & t["value"].notna()]
    if done.empty and pruned.empty:
        _note(ax, "no trial has a value yet")
    else:
        ax.scatter(done["number"], done["value"], s=28, color=COMPLETE, label="complete", zorder=3)
        if not pruned.empty:
            ax.scatter(
                pruned["number"],
                pruned["value"],
                s=28,
                facecolors="none",
                edgecolors=PRUNED,
                label="pruned (value when stopped)",
                zorder=2,
            )
        if not done.empty:
            order = done.sort_values("number")
            values = order["value"].cummax() if data.maximize else order["value"].cummin()
            xs = [*order["number"], int(t["number"].max())]
            ax.step(
                xs,
                [*values, values.iloc[-1]],
                where="post",
                color=BEST,
                lw=2,
                label="best so far",
                zorder=1,
            )
            best = data.best
            assert best is not None
            ax.scatter(
                [best["number"]],
                [best["value"]],
                s=180,
                marker="*",
                color=BEST,
                edgecolors="black",
                zorder=4,
                label=f"best: trial {int(best['number'])}",
            )
        ax.set_ylabel(_ylabel(data))
        # Outside the axes: inside, it would hide trials.
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9)
        ax.grid(alpha=0.3)
    if strip is None:
        ax.set_xlabel("trial number")
    else:
        ax.tick_params(labelbottom=False)
        for state, (color, marker, label) in NO_VALUE.items():
            rows = missing[missing["state"] == state]
            if not rows.empty:
                strip.scatter(
                    rows["number"], [0] * len(rows), color=color, marker=marker, s=40, label=label
                )
        strip.set_yticks([])
        strip.set_ylabel("no value", rotation=0, ha="right", va="center")
        strip.set_xlabel("trial number")
        strip.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9, frameon=False)
    return fig


def _scatter_outcomes(ax: Axes, xs: list[float], rows: pd.DataFrame) -> None:
    """Trials at ``xs``: complete filled, pruned hollow (at their value when stopped), and those
    without a value as marks along the bottom edge."""
    states = list(rows["state"])
    values = list(rows["value"])
    for state, face, edge, z in (
        ("complete", COMPLETE, COMPLETE, 3),
        ("pruned", "none", PRUNED, 2),
    ):
        picked = [(x, v) for x, v, s in zip(xs, values, states, strict=True) if s == state]
        if picked:
            ax.scatter(
                [x for x, _ in picked],
                [v for _, v in picked],
                s=26,
                facecolors=face,
                edgecolors=edge,
                zorder=z,
            )
    for state, (color, marker, _) in NO_VALUE.items():
        picked_x = [x for x, s in zip(xs, states, strict=True) if s == state]
        if picked_x:
            ax.plot(
                picked_x,
                [0.04] * len(picked_x),
                linestyle="none",
                marker=marker,
                color=color,
                transform=ax.get_xaxis_transform(),  # x in data, y in axes: the bottom edge
                clip_on=False,
            )


def _rates(data: ReportData) -> Figure:
    from matplotlib.lines import Line2D

    n = max(len(data.groups), 1)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = _figure(4.8 * ncols, 4.0 * nrows + 1.0)
    fig.suptitle(
        "Learning rate against the metric, one panel per group "
        "(left strip of each panel: trials where the group was frozen)",
        fontsize=12,
    )
    if not data.groups:
        _note(fig.add_subplot(), "the study has no groups yet")
        return fig
    t = data.trials
    shown = t[t["state"].isin(["complete", "pruned", *NO_VALUE])]
    best = data.best
    top = data.stats[0].top if data.stats else 0
    values = shown["value"].dropna()
    low, high = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    pad = (high - low) * 0.08 or 0.05
    # One scale for every panel, so panels compare at a glance; room at the bottom for the marks
    # of trials without a value.
    ylim = (low - 2.5 * pad, high + pad)
    by_group = {s.group: s for s in data.stats}
    # A subfigure per group, framed, so each frozen strip reads as part of its own group's panel.
    panels = fig.subfigures(nrows, ncols, squeeze=False, wspace=0.02, hspace=0.04)
    for i, g in enumerate(data.groups):
        panel = panels[i // ncols][i % ncols]
        panel.set_facecolor("#f7f9fb")
        panel.set_edgecolor("#c9d1da")
        panel.set_linewidth(1.0)
        panel.suptitle(g, fontsize=13, fontweight="bold")
        strip, ax = panel.subplots(
            1, 2, sharey=True, gridspec_kw={"width_ratios": [1, 4], "wspace": 0.03}
        )
        lr = shown[f"lr.{g}"]
        trained, frozen = shown[lr > 0], shown[lr == 0]
        # Frozen trials: one column, spread sideways so equal values stay visible.
        jitter = [((k * 0.6180339) % 1.0 - 0.5) * 1.2 for k in range(len(frozen))]
        _scatter_outcomes(strip, jitter, frozen)
        _scatter_outcomes(ax, list(trained[f"lr.{g}"]), trained)
        strip.set_xlim(-1, 1)
        strip.set_xticks([0], ["frozen"])
        strip.set_ylim(*ylim)
        strip.grid(alpha=0.3, axis="y")
        strip.set_ylabel(_ylabel(data))
        if frozen.empty:
            strip.text(0, sum(ylim) / 2, "never\nfrozen", ha="center", va="center", color="#777")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.set_xlabel("learning rate when trained (log scale)")
        rng = data.ranges.get(g)
        if rng is not None:
            ax.set_xlim(rng[0] / 1.4, rng[1] * 1.4)  # the searched range: edges mean something
        elif trained.empty:
            ax.set_xlim(1e-5, 1e-1)
        if trained.empty:
            ax.text(0.5, 0.5, "never trained", transform=ax.transAxes, ha="center", color="#777")
        s = by_group.get(g)
        if s is not None and s.top_low is not None and s.top_high is not None:
            ax.axvspan(s.top_low / 1.08, s.top_high * 1.08, color=BAND, alpha=0.18, zorder=0)
        if best is not None:
            best_lr = float(best[f"lr.{g}"])
            (strip if best_lr == 0 else ax).scatter(
                [0.0 if best_lr == 0 else best_lr],
                [best["value"]],
                s=190,
                marker="*",
                color=BEST,
                edgecolors="black",
                zorder=4,
            )
    for j in range(len(data.groups), nrows * ncols):  # an unused cell of the last row
        panels[j // ncols][j % ncols].set_visible(False)
    handles = [
        Line2D([], [], ls="none", marker="o", color=COMPLETE, label="complete"),
        Line2D([], [], ls="none", marker="o", mfc="none", color=PRUNED, label="pruned"),
        *[
            Line2D([], [], ls="none", marker=marker, color=color, label=f"{state} (no value)")
            for state, (color, marker, _) in NO_VALUE.items()
            if (t["state"] == state).any()
        ],
        Line2D([], [], ls="none", marker="*", ms=13, color=BEST, mec="black", label="best trial"),
        Line2D([], [], lw=8, alpha=0.3, color=BAND, label=f"rates of the {top} best"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=6, fontsize=9, frameon=False)
    return fig


def _curves(data: ReportData) -> Figure:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig = _figure(11, 4.6)
    ax = fig.add_subplot()
    ax.set_title(
        "Learning curves: the value at each evaluation; pruned trials stop at a cross",
        loc="left",
        fontsize=12,
    )
    c = data.curves
    if c.empty:
        _note(ax, "no trial reported an intermediate value")
        return fig
    best = data.best
    best_number = int(best["number"]) if best is not None else None
    for number, rows in c.groupby("number", sort=True):
        rows = rows[rows["value"].notna()]
        if rows.empty:
            continue
        state = rows["state"].iloc[0]
        if number == best_number:
            continue  # drawn last, on top
        color = {"complete": COMPLETE, "diverged": DIVERGED}.get(state, PRUNED)
        ax.plot(rows["step"], rows["value"], color=color, lw=1, alpha=0.55)
        if state in ("pruned", "diverged"):
            ax.plot(
                rows["step"].iloc[-1:],
                rows["value"].iloc[-1:],
                marker="x",
                ms=8,
                mew=2,
                color=DIVERGED if state == "diverged" else "#e6550d",
                ls="none",
            )
    if best_number is not None:
        rows = c[(c["number"] == best_number) & c["value"].notna()]
        ax.plot(rows["step"], rows["value"], color=BEST, lw=3, zorder=5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("training step")
    ax.set_ylabel(_ylabel(data))
    ax.grid(alpha=0.3)
    present = set(c["state"])
    # A key only for what is drawn: an entry with nothing behind it sends readers looking.
    handles = [Line2D([], [], color=COMPLETE, label="complete")] if "complete" in present else []
    if "pruned" in present:
        handles.append(
            Line2D([], [], color=PRUNED, marker="x", mec="#e6550d", mew=2, label="pruned here")
        )
    if "diverged" in present:
        handles.append(
            Line2D([], [], color=DIVERGED, marker="x", mew=2, label="diverged after this")
        )
    if best_number is not None:
        handles.append(Line2D([], [], color=BEST, lw=3, label="best trial"))
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9)
    return fig


def _importance(data: ReportData) -> Figure:
    imp = data.importance
    names = list(imp.values)[::-1]  # largest at the top
    fig = _figure(9, 1.5 + 0.45 * max(len(names), 2))
    ax = fig.add_subplot()
    ax.set_title(
        "Which groups matter: share of the metric's variation each explains",
        loc="left",
        fontsize=12,
    )
    if not names:
        _note(ax, imp.note)
        return fig
    shares = [imp.values[n] for n in names]
    ax.barh(names, shares, color=[COMPLETE if n in data.groups else PRUNED for n in names])
    for y, share in enumerate(shares):
        ax.text(share + 0.01, y, f"{share:.0%}", va="center", fontsize=10)
    ax.set_xlim(0, min(1.0, max(shares) + 0.15))
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.tick_params(axis="y", labelsize=11)
    ax.grid(alpha=0.3, axis="x")
    ax.set_xlabel(imp.note, fontsize=9, wrap=True)
    return fig


def _frozen(data: ReportData) -> Figure:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig = _figure(max(6.0, 1.9 * len(data.groups) + 2.5), 4.4)
    ax = fig.add_subplot()
    ax.set_title(
        "Frozen or trained? The complete trials' mean metric (bar) and best (diamond), per group",
        loc="left",
        fontsize=12,
    )
    if data.complete.empty:
        _note(ax, "no complete trial yet")
        return fig
    width = 0.38
    values = data.complete["value"]
    floor = min(0.0, float(values.min()))
    top = max(0.0, float(values.max()))
    for i, s in enumerate(data.stats):
        for offset, n, mean, best, color, word in (
            (-width / 2, s.n_frozen, s.mean_frozen, s.best_frozen, FROZEN_BAR, "frozen"),
            (width / 2, s.n_trained, s.mean_trained, s.best_trained, TRAINED_BAR, "trained"),
        ):
            x = i + offset
            if mean is None or best is None:
                lr = data.trials[f"lr.{s.group}"]
                ever = bool((lr == 0).any() if word == "frozen" else (lr > 0).any())
                ax.text(
                    x,
                    0.03,
                    f"no complete\ntrial {word}" if ever else f"never\n{word}",
                    ha="center",
                    va="bottom",
                    color="#777",
                    fontsize=9,
                    transform=ax.get_xaxis_transform(),
                )
                continue
            ax.bar(x, mean - floor, width * 0.95, bottom=floor, color=color)
            ax.scatter([x], [best], marker="D", s=40, color="black", zorder=3)
            ax.text(
                x,
                0.03,
                f"n={n}",
                ha="center",
                va="bottom",
                fontsize=9,
                color="white" if color == TRAINED_BAR else "black",
                transform=ax.get_xaxis_transform(),
            )
    ax.set_ylim(floor, top + (top - floor) * 0.08)
    ax.set_xticks(range(len(data.stats)), [s.group for s in data.stats], fontsize=11)
    ax.set_ylabel(_ylabel(data))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(
        handles=[
            Patch(color=FROZEN_BAR, label="frozen"),
            Patch(color=TRAINED_BAR, label="trained"),
            Line2D([], [], ls="none", marker="D", color="black", label="best"),
        ],
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=9,
    )
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


# What each plot shows, for the page (and for alt text).
CAPTIONS = {
    "history": (
        "The metric over trials",
        "Each dot is a trial in the order it ran; the yellow line is the best value found so far. "
        "Hollow grey dots are trials the pruner stopped early (drawn at their value when stopped); "
        "trials without a value (diverged, failed) sit on the strip below.",
    ),
    "rates": (
        "Learning rate against the metric, per group",
        "One panel per group. Right: trials that trained the group, by their rate (log scale). "
        "Left strip: trials that froze it. The green band spans the rates of the best complete "
        "trials; crosses on the bottom edge are trials that diverged at that rate.",
    ),
    "curves": (
        "Learning curves",
        "The value at every evaluation of every trial. A line that stops at a cross was pruned "
        "there (or diverged, in red); the thick yellow line is the best trial.",
    ),
    "importance": (
        "Which groups matter",
        "How much of the difference between complete trials each group's rate explains "
        "(fANOVA, Optuna's get_param_importances); a long bar is a group worth tuning, a short "
        "one a group whose rate hardly matters.",
    ),
    "frozen": (
        "Frozen or trained",
        "Per group, the complete trials that froze it (light) against those that trained it "
        "(dark): the bar is their mean, the diamond their best, n how many there were.",
    ),
}

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #1d1d1f; background: #f6f7f9; }
main { max-width: 1280px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { margin: 0 0 4px; font-size: 28px; }
h2 { margin: 32px 0 6px; font-size: 20px; }
.sub { color: #555; margin: 0 0 16px; font-size: 15px; }
.card { background: white; border: 1px solid #dfe3e8; border-radius: 8px; padding: 16px 20px; }
.headline { display: flex; gap: 32px; flex-wrap: wrap; align-items: flex-start; }
.best { font-size: 26px; font-weight: 600; }
table { border-collapse: collapse; font-size: 15px; }
th, td { text-align: left; padding: 4px 14px 4px 0; border-bottom: 1px solid #eceff3; }
ul.takeaways { margin: 8px 0 0; padding-left: 20px; font-size: 16px; line-height: 1.6; }
.counts span { display: inline-block; margin-right: 12px; }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 4px; }
figure { margin: 0; }
figcaption { color: #444; margin: 0 0 10px; font-size: 14px; max-width: 980px; }
img { max-width: 100%; height: auto; display: block; }
footer { color: #888; font-size: 12px; margin-top: 32px; }
"""

_STATE_COLORS = {
    "complete": COMPLETE,
    "pruned": PRUNED,
    "diverged": DIVERGED,
    "failed": FAILED,
    "interrupted": "#9467bd",
    "running": "#17becf",
    "waiting": "#bbbbbb",
}


def render_html(data: ReportData, images: dict[str, bytes]) -> str:
    """The report page: the headline, then each plot embedded as a PNG data URI.

    Args:
        data: From :func:`collect`.
        images: PNG bytes by figure name.
    """
    e = html.escape
    total = len(data.trials)
    shown_states = [
        s for s, n in data.counts.items() if n or s in ("complete", "pruned", "diverged", "failed")
    ]
    counts = "".join(
        f'<span><i class="dot" style="background:{_STATE_COLORS[s]}"></i>'
        f"{data.counts[s]} {e(s)}</span>"
        for s in shown_states
    )
    best = data.best
    imp = data.importance.values
    if best is None:
        best_html = '<div class="best">No complete trial yet</div>'
        rates = ""
    else:
        best_html = (
            f'<div class="best">Best: {float(best["value"]):.4g}</div>'
            f'<div class="sub">trial {int(best["number"])}, {e(data.direction)}</div>'
        )
        if data.ranking:
            best_html += f'<div class="sub">{e(data.ranking)}</div>'

        rows = []
        for g in data.groups:
            lr = float(best[f"lr.{g}"])
            rng = data.ranges.get(g)
            searched = f"{format_rate(rng[0])} to {format_rate(rng[1])}" if rng else "-"
            share = f"{imp[g]:.0%}" if g in imp else "-"
            rows.append(
                f"<tr><td><b>{e(g)}</b></td><td>{e(format_rate(lr))}</td>"
                f"<td>{e(searched)}</td><td>{share}</td></tr>"
            )
        # Every other searched parameter with a share (weight decay, layer decay's knobs): the
        # shares of the table then add up to the whole.
        for name, share_value in imp.items():
            if name in data.groups:
                continue
            column = name.removesuffix(" (knob)")
            value = float(best[column]) if column in best else math.nan
            shown = "-" if math.isnan(value) else f"{value:.3g}"
            rows.append(
                f"<tr><td><b>{e(name)}</b></td><td>{e(shown)}</td><td>-</td>"
                f"<td>{share_value:.0%}</td></tr>"
            )
        rates = (
            "<table><tr><th>parameter</th><th>best trial's value</th><th>searched</th>"
            "<th>importance</th></tr>" + "".join(rows) + "</table>"
        )
    takeaways = "".join(f"<li>{e(s.takeaway)}</li>" for s in data.stats)
    sections = []
    for name in FIGURES:
        if name not in images:
            continue
        title, caption = CAPTIONS[name]
        if name == "importance":
            caption += f" ({data.importance.note}.)"
        uri = "data:image/png;base64," + base64.b64encode(images[name]).decode("ascii")
        sections.append(
            f'<h2 id="{name}">{e(title)}</h2><figure class="card">'
            f"<figcaption>{e(caption)}</figcaption>"
            f'<img src="{uri}" alt="{e(title)}: {e(caption)}"></figure>'
        )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lrsearch report: {e(data.study)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<h1>Study “{e(data.study)}”</h1>
<p class="sub">{e(data.direction)} the metric &middot; {total} trial(s) &middot;
groups: {e(", ".join(data.groups) or "none")}</p>
<div class="card headline">
<div>{best_html}<p class="counts">{counts}</p></div>
<div>{rates}</div>
</div>
<h2>What the study says</h2>
<div class="card"><ul class="takeaways">{takeaways}</ul></div>
{"".join(sections)}
<footer>lrsearch {e(__version__)}</footer>
</main>
</body>
</html>
"""


def write_report(
    storage: optuna.storages.BaseStorage | str | None, study_name: str, out_dir: Path | str
) -> Path:
    """Write a study's report into ``out_dir``: the PNG plots and ``index.html``.

    Args:
        storage: An Optuna storage or a storage URL.
        study_name: The study.
        out_dir: The folder (created if missing; files of the same names are replaced).

    Returns:
        The path of ``index.html``.

    Raises:
        LrsearchError: matplotlib is missing, ``out_dir`` is a file or cannot be written.
        StudyNotFoundError: No such study.
    """
    _matplotlib()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LrsearchError(
            f"cannot write the report to {str(out)!r}: it is a file; name a folder with -o DIR"
        )
    data = collect(storage, study_name)
    figures = make_figures(data)
    images = {name: _png(fig) for name, fig in figures.items()}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, png in images.items():
            (out / f"{name}.png").write_bytes(png)
        page = out / "index.html"
        page.write_text(render_html(data, images), encoding="utf-8")
    except OSError as e:
        raise LrsearchError(f"cannot write the report to {str(out)!r}: {e.strerror or e}") from e
    return page

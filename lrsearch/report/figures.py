"""The report's matplotlib figures, drawn from a :class:`~lrsearch.report.data.ReportData`.

matplotlib (an optional extra, ``lrsearch[report]``) is imported when a figure is drawn, with the
Agg canvas: no display, no global pyplot state.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

from lrsearch.errors import LrsearchError
from lrsearch.report.colors import (
    BAND,
    BEST,
    COMPLETE,
    DIVERGED,
    FROZEN_BAR,
    NO_VALUE,
    PRUNED,
    TRAINED_BAR,
)
from lrsearch.report.data import ReportData
from lrsearch.schema import Outcome

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIGURES = ("history", "rates", "curves", "importance", "frozen")
DPI = 110


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
    pruned = t[(t["state"] == Outcome.PRUNED) & t["value"].notna()]
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
    for outcome, face, edge, z in (
        (Outcome.COMPLETE, COMPLETE, COMPLETE, 3),
        (Outcome.PRUNED, "none", PRUNED, 2),
    ):
        picked = [(x, v) for x, v, s in zip(xs, values, states, strict=True) if s == outcome]
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
    shown = t[t["state"].isin([Outcome.COMPLETE, Outcome.PRUNED, *NO_VALUE])]
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
        color = {Outcome.COMPLETE: COMPLETE, Outcome.DIVERGED: DIVERGED}.get(state, PRUNED)
        ax.plot(rows["step"], rows["value"], color=color, lw=1, alpha=0.55)
        if state in (Outcome.PRUNED, Outcome.DIVERGED):
            ax.plot(
                rows["step"].iloc[-1:],
                rows["value"].iloc[-1:],
                marker="x",
                ms=8,
                mew=2,
                color=DIVERGED if state == Outcome.DIVERGED else "#e6550d",
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
    handles = (
        [Line2D([], [], color=COMPLETE, label="complete")] if Outcome.COMPLETE in present else []
    )
    if Outcome.PRUNED in present:
        handles.append(
            Line2D([], [], color=PRUNED, marker="x", mec="#e6550d", mew=2, label="pruned here")
        )
    if Outcome.DIVERGED in present:
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

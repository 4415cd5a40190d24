"""Per-group statistics of a trials frame: frozen against trained, where the best trials put each
group's rate, and a one-sentence takeaway per group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import optuna

from lrsearch.analysis.formats import format_rate
from lrsearch.analysis.trials import complete_rows, ranked_rows
from lrsearch.errors import LrsearchError
from lrsearch.storage import stored_spec

if TYPE_CHECKING:
    import pandas as pd


# How many of the best complete trials the per-group takeaways look at.
TOP_K = 5


def searched_ranges(study: optuna.Study, groups: Sequence[str]) -> dict[str, tuple[float, float]]:
    """The log-uniform range each group's rate was searched in, from the stored spec.

    Only ``per_group`` spaces have one range per group; fixed groups have none. Empty when the
    study has no readable spec.
    """
    try:
        space = stored_spec(study).space
    except LrsearchError:
        return {}
    if space.kind != "per_group":
        return {}
    ranges = {}
    for g in groups:
        if any(fnmatchcase(g, p) for p in space.fixed):
            continue
        # As in lrsearch.space: the first lr_ranges pattern that matches wins, else [space] lr.
        ranges[g] = next((r for p, r in space.lr_ranges.items() if fnmatchcase(g, p)), space.lr)
    return ranges


@dataclass(frozen=True)
class GroupStats:
    """What the complete trials say about one group; ``takeaway`` says it in one sentence."""

    group: str
    n_trained: int  # complete trials that trained the group
    n_frozen: int  # complete trials that froze it
    tried_trained: int  # trials of any outcome that trained it
    tried_frozen: int  # trials of any outcome that froze it
    mean_trained: float | None
    mean_frozen: float | None
    best_trained: float | None
    best_frozen: float | None
    top: int  # how many of the best complete trials the top_* fields describe
    top_frozen: int  # of those, how many froze the group
    top_low: float | None  # lowest rate among those that trained it
    top_high: float | None
    best_lr: float | None  # the group's rate in the best trial (0.0 = frozen)
    searched: tuple[float, float] | None  # the range its rate was searched in, when known
    takeaway: str


# A best rate within this factor of an end of its searched range sits "at the edge".
_EDGE_FACTOR = 1.5


def group_stats(
    trials: pd.DataFrame,
    groups: Sequence[str],
    *,
    direction: str,
    ranges: dict[str, tuple[float, float]] | None = None,
    top: int = TOP_K,
) -> list[GroupStats]:
    """Per group: frozen against trained among complete trials, and where the best trials put it.

    Args:
        trials: From :func:`load_trials`.
        groups: The groups, in order.
        direction: ``maximize`` or ``minimize``.
        ranges: Each group's searched range (:func:`searched_ranges`): a best rate at its edge is
            pointed out.
        top: How many of the best complete trials the takeaway looks at.

    Returns:
        One :class:`GroupStats` per group, in order.
    """
    maximize = direction == "maximize"
    done = complete_rows(trials)
    best = ranked_rows(trials, maximize=maximize).head(top)

    def best_of(values: Any) -> float | None:
        if len(values) == 0:
            return None
        return float(values.max() if maximize else values.min())

    def mean(values: Any) -> float | None:
        return float(values.mean()) if len(values) else None

    out = []
    for g in groups:
        lr = done[f"lr.{g}"]
        frozen, trained = done[lr == 0]["value"], done[lr > 0]["value"]
        top_lr = best[f"lr.{g}"]
        top_trained = top_lr[top_lr > 0]
        stats = GroupStats(
            group=g,
            n_trained=len(trained),
            n_frozen=len(frozen),
            tried_trained=int((trials[f"lr.{g}"] > 0).sum()),
            tried_frozen=int((trials[f"lr.{g}"] == 0).sum()),
            mean_trained=mean(trained),
            mean_frozen=mean(frozen),
            best_trained=best_of(trained),
            best_frozen=best_of(frozen),
            top=len(best),
            top_frozen=int((top_lr == 0).sum()),
            top_low=float(top_trained.min()) if len(top_trained) else None,
            top_high=float(top_trained.max()) if len(top_trained) else None,
            best_lr=float(top_lr.iloc[0]) if len(top_lr) else None,
            searched=(ranges or {}).get(g),
            takeaway="",
        )
        out.append(replace(stats, takeaway=f"{g}: {_takeaway(stats)}"))
    return out


def _band(low: float, high: float) -> str:
    if format_rate(low) == format_rate(high):
        return f"at {format_rate(low)}"
    return f"between {format_rate(low)} and {format_rate(high)}"


def _takeaway(s: GroupStats) -> str:
    if s.top == 0:
        return "no complete trial yet"
    best = "the best trial" if s.top == 1 else f"all {s.top} best trials"
    if s.top_frozen == s.top:
        text = f"frozen in {best}"
        if s.best_trained is not None and s.best_frozen is not None:
            text += (
                f"; training it never beat freezing it (best {s.best_trained:.3g} trained vs "
                f"{s.best_frozen:.3g} frozen)"
            )
        elif s.tried_trained:
            text += f"; none of the {s.tried_trained} trial(s) that trained it completed"
        else:
            text += "; it was never trained"
        return text
    assert s.top_low is not None and s.top_high is not None
    band = _band(s.top_low, s.top_high)
    if s.top_frozen:
        others = "other" if s.top - s.top_frozen == 1 else "others"
        return (
            f"frozen in {s.top_frozen} of the {s.top} best trials and trained {band} in the "
            f"{others}: it matters little"
        )
    if s.top == 1:
        text = f"best {band}"
    elif s.tried_frozen:
        text = f"trained in {best}, {band}; the trials that froze it did worse"
    else:
        text = f"best {band}"
    if s.searched is not None:
        low, high = s.searched
        where = f"[{format_rate(low)}, {format_rate(high)}]"
        if s.top_high * _EDGE_FACTOR >= high:
            text += f", at the top of its searched range {where}: try a wider range"
        elif s.top_low <= low * _EDGE_FACTOR:
            text += f", at the bottom of its searched range {where}: try a wider range"
    return text

"""Reading finished studies: the studies in a storage, their trials as data, per-group statistics.

``list_studies`` and ``best_trials`` return plain dicts, so the CLI's ``studies`` and ``best`` stay
light. ``load_trials`` and ``load_curves`` return pandas DataFrames; pandas is imported inside the
functions that build them, so nothing here costs a worker (which never imports this module anyway)
or ``lrsearch best`` the pandas import.

Example:
    >>> import lrsearch
    >>> trials = lrsearch.load_trials("sqlite:///lrsearch.db", "quickstart")
    >>> trials[trials.state == "complete"].sort_values("value").tail(3)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from lrsearch import _optuna_compat as compat

# Not from lrsearch.search: that imports torch, and `lrsearch best` should start fast.
from lrsearch import schema
from lrsearch.confirm import describe, seed_values
from lrsearch.errors import LrsearchError
from lrsearch.pick import (
    Rule,
    Seeded,
    candidates,
    cost,
    metric,
    pareto_front,
    pick,
    rank,
    rank_seeded,
)
from lrsearch.schema import GROUPS_ATTR, OUTCOME_ATTR, REASON_ATTR, SPEC_ATTR
from lrsearch.storage import (
    load_study,
    open_storage,
    stored_spec,
    trial_info,
)

if TYPE_CHECKING:
    import pandas as pd

# Every outcome a trial row can show, in the order tables and plots list them.
STATES = schema.STATES
FORMATS = ("table", "csv", "json", "parquet")
# How many of the best complete trials the per-group takeaways look at.
TOP_K = 5
# Fewer complete trials than this and fANOVA's forest says nothing worth a bar chart.
MIN_IMPORTANCE_TRIALS = 4
# The columns every trials frame has besides the per-group and knob columns.
_FIXED_COLUMNS = (
    "number",
    "state",
    "value",
    "cost",
    "duration_s",
    "pruned_step",
    "reason",
    "host",
    "datetime_start",
    "datetime_complete",
    "n_evaluations",
)
_STATE_NAMES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


def list_studies(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    """One row per study: name, direction, trial counts by outcome, best value, whether lrsearch's.

    A study with several objectives shows its directions joined by commas; its best value is the
    best first objective (lrsearch's metric) when the study is lrsearch's, else none.
    """
    rows = []
    for s in storage.get_all_studies():
        trials = storage.get_all_trials(compat.study_id(s), deepcopy=False)
        states = [t.state for t in trials]
        best = None
        if len(s.directions) == 1 or SPEC_ATTR in s.user_attrs:
            maximize = s.directions[0] == optuna.study.StudyDirection.MAXIMIZE
            ranked = rank(trials, maximize=maximize)
            best = metric(ranked[0]) if ranked else None
        rows.append(
            {
                "study": s.study_name,
                "direction": ",".join(d.name.lower() for d in s.directions),
                "trials": len(trials),
                "complete": states.count(TrialState.COMPLETE),
                "pruned": states.count(TrialState.PRUNED),
                "failed": states.count(TrialState.FAIL),
                "running": states.count(TrialState.RUNNING),
                "best": best,
                "lrsearch": SPEC_ATTR in s.user_attrs,
            }
        )
    return rows


def trial_record(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A trial as plain data: number, state, value, per-group rates, frozen groups, duration."""
    info = trial_info(trial)
    lrs: dict[str, float] = info["lrs"]
    outcome = trial.user_attrs.get(OUTCOME_ATTR) or trial.state.name.lower()
    return {
        "trial": trial.number,
        "state": outcome,
        "value": trial.values[0] if trial.values else None,
        "cost": cost(trial),
        "lrs": lrs,
        "frozen": [g for g, lr in lrs.items() if lr == 0],
        "weight_decay": info["weight_decay"],
        "knobs": _knobs(trial, info),
        "host": info["host"],
        "seconds": trial.duration.total_seconds() if trial.duration else None,
        "params": dict(trial.params),
    }


def _knobs(trial: optuna.trial.FrozenTrial, info: dict[str, Any]) -> dict[str, float]:
    """The trial's values besides its per-group rates: weight decay (searched or fixed) and every
    other searched parameter (layer decay's base_lr, decay, head_multiplier; freeze_depth)."""
    knobs: dict[str, float] = {}
    if info["weight_decay"] is not None:
        knobs["weight_decay"] = float(info["weight_decay"])
    for name, value in trial.params.items():
        if not name.startswith(("lr.", "freeze.")) and name not in knobs:
            knobs[name] = float(value)
    return knobs


# What ``cost`` measures, by the study's ``[study] cost`` (None: a one-objective study).
COST_MEANINGS = {
    None: "the trial's wall time in seconds, model building and evaluation included (the study "
    "has no [study] cost)",
    "seconds": 'seconds of training, the study\'s second objective ([study] cost = "seconds")',
    "examples": "examples trained x the share of parameters that train, the study's second "
    'objective ([study] cost = "examples")',
}


def cost_meaning(study: optuna.Study) -> str:
    """What the ``cost`` of the study's trials measures, in words."""
    kind = stored_spec(study).study.cost if SPEC_ATTR in study.user_attrs else None
    return COST_MEANINGS.get(kind, COST_MEANINGS[None])


def best_trials(
    storage: optuna.storages.BaseStorage,
    study_name: str,
    *,
    top: int | None = None,
    rule: Rule | None = None,
    front: bool = False,
) -> list[dict[str, Any]]:
    """The ``top`` complete trials of a study, best metric first (ties: the earliest).

    Args:
        top: How many (default: 1, or with ``front`` the whole front).
        rule: Pick one trial by a trade of metric against cost (:mod:`lrsearch.pick`); then the
            result is that one trial, and ``top`` must be 1.
        front: Only the trials on the Pareto front of metric against cost.

    Raises:
        StudyNotFoundError: No such study.
        LrsearchError: The study has no complete trial yet, or none meets ``rule``.
    """
    if top is not None and top < 1:
        raise LrsearchError(f"--top must be >= 1, got {top}")
    study = _readable(load_study(storage, study_name))
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not candidates(trials):
        raise LrsearchError(
            f"study {study_name!r} has no complete trial yet; run it with `lrsearch run`"
        )
    seeds = {} if front else seed_values(study)
    seeded = {s.trial.number: s for s in rank_seeded(trials, seeds, maximize=maximize)}
    meaning = cost_meaning(study)
    if rule is not None and rule.trades:
        if (top is not None and top != 1) or front:
            raise LrsearchError(
                "--within / --max-cost / --within-sd pick one trial; drop --top and --front"
            )
        chosen = pick(trials, maximize=maximize, rule=rule, seeds=seeds)
        return [_seeded_record(chosen, seeded) | {"cost_meaning": meaning}]
    ranked = pareto_front(trials, maximize=maximize) if front else rank(trials, maximize=maximize)
    if seeded:
        # The confirmed trials by their mean (the best is pick's), then the others by value.
        ranked = [
            *(s.trial for s in seeded.values()),
            *(t for t in ranked if t.number not in seeded),
        ]
    # Default: the one best trial, or the whole front.
    count = top if top is not None else len(ranked) if front else 1
    return [_seeded_record(t, seeded) | {"cost_meaning": meaning} for t in ranked[:count]]


def _seeded_record(trial: optuna.trial.FrozenTrial, seeded: dict[int, Seeded]) -> dict[str, Any]:
    """:func:`trial_record`, with ``seeds`` (mean, sd, n, failed) and ``ranking`` (how the best was
    chosen) when the study's top trials were retrained (``lrsearch confirm``)."""
    record = trial_record(trial)
    s = seeded.get(trial.number)
    record["seeds"] = (
        None if s is None else {"mean": s.mean, "sd": s.sd, "n": len(s.values), "failed": s.failed}
    )
    record["ranking"] = describe(list(seeded.values())) if seeded else "by the search's value"
    return record


def _open(storage: optuna.storages.BaseStorage | str | None) -> optuna.storages.BaseStorage:
    # A reader never creates a database: a typo in a URL is reported, not left behind empty.
    if storage is None or isinstance(storage, str):
        return open_storage(storage, create=False)
    return storage


def _readable(study: optuna.Study) -> optuna.Study:
    # One objective, or lrsearch's two: the metric and the training cost ([study] cost).
    if len(study.directions) > 1 and SPEC_ATTR not in study.user_attrs:
        raise LrsearchError(
            f"study {study.study_name!r} has {len(study.directions)} objectives and was not made "
            "by lrsearch; lrsearch reads its own two-objective studies (metric, cost) only"
        )
    return study


def trial_state(trial: optuna.trial.FrozenTrial) -> str:
    """A trial's outcome: complete, pruned, diverged, failed, interrupted, running or waiting.

    lrsearch's own word (``lrsearch.outcome``) wins over Optuna's state: a diverged trial is stored
    as PRUNED, an interrupted one as FAIL.
    """
    outcome = trial.user_attrs.get(OUTCOME_ATTR)
    return str(outcome) if outcome else _STATE_NAMES[trial.state]


def study_groups(study: optuna.Study) -> list[str]:
    """The study's groups in their order: the stored ``lrsearch.groups``, else the spec's, plus any
    group a trial names that those lack (a study made by an older version, or ``auto_depth``)."""
    groups: list[str] = list(study.user_attrs.get(GROUPS_ATTR) or {})
    if not groups and SPEC_ATTR in study.user_attrs:
        try:
            groups = list(stored_spec(study).groups.names)
        except LrsearchError:  # a spec this version no longer reads: the trials still name them
            groups = []
    for t in study.get_trials(deepcopy=False):
        for g in trial_info(t)["lrs"]:
            if g not in groups:
                groups.append(g)
    return groups


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """The trials of a loaded study as a DataFrame; see :func:`load_trials` for the columns.

    Raises:
        LrsearchError: The study has several objectives and is not lrsearch's.
    """
    import pandas as pd

    _readable(study)
    groups = study_groups(study)
    trials = study.get_trials(deepcopy=False)
    infos = [trial_info(t) for t in trials]
    lrs = [{g: _float(info["lrs"].get(g)) for g in groups} for info in infos]
    knobs = ["weight_decay"]
    # lrsearch's own parameters show as lr.<group> / frozen.<group>; any other, also a plain
    # Optuna study's "lr.head", is a column of its own.
    ours = {f"{kind}.{g}" for g in groups for kind in ("lr", "freeze")}
    for t in trials:
        knobs.extend(n for n in t.params if n not in ours and n not in knobs)
    cols: dict[str, Any] = {
        "number": pd.Series([t.number for t in trials], dtype="int64"),
        "state": pd.Series([trial_state(t) for t in trials]),
        "value": pd.Series(
            [_float(t.values[0]) if t.values else math.nan for t in trials], dtype="float64"
        ),
        "cost": pd.Series(
            [_float(cost(t)) if t.state == TrialState.COMPLETE else math.nan for t in trials],
            dtype="float64",
        ),
        "duration_s": pd.Series(
            [t.duration.total_seconds() if t.duration else math.nan for t in trials],
            dtype="float64",
        ),
    }
    for g in groups:
        cols[f"lr.{g}"] = pd.Series([r[g] for r in lrs], dtype="float64")
    for g in groups:
        # Unknown (a trial that died before sampling) stays <NA>, not False.
        flags = [None if math.isnan(r[g]) else r[g] == 0.0 for r in lrs]
        cols[f"frozen.{g}"] = pd.Series(flags, dtype="boolean")
    for knob in knobs:
        values = [
            info["weight_decay"] if knob == "weight_decay" else t.params.get(knob)
            for t, info in zip(trials, infos, strict=True)
        ]
        numeric = all(v is None or isinstance(v, (int, float)) for v in values)
        cols[knob] = pd.Series(
            [_float(v) for v in values] if numeric else values,
            dtype="float64" if numeric else object,
        )
    cols["pruned_step"] = pd.Series(
        [
            max(t.intermediate_values)
            if trial_state(t) in ("pruned", "diverged") and t.intermediate_values
            else None
            for t in trials
        ],
        dtype="Int64",
    )
    cols["reason"] = pd.Series([t.user_attrs.get(REASON_ATTR) for t in trials])
    cols["host"] = pd.Series([info["host"] for info in infos])
    cols["datetime_start"] = pd.to_datetime(
        pd.Series([t.datetime_start for t in trials], dtype=object)
    )
    cols["datetime_complete"] = pd.to_datetime(
        pd.Series([t.datetime_complete for t in trials], dtype=object)
    )
    cols["n_evaluations"] = pd.Series([len(t.intermediate_values) for t in trials], dtype="int64")
    return pd.DataFrame(cols)


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def load_trials(storage: optuna.storages.BaseStorage | str | None, study_name: str) -> pd.DataFrame:
    """A study's trials as a pandas DataFrame, one row per trial, in trial order.

    Columns: ``number``; ``state`` (complete, pruned, diverged, failed, interrupted, running,
    waiting); ``value`` (the metric; Optuna's: a pruned trial's is its last evaluation);
    ``cost`` (a complete trial's training cost: the second objective of a study with ``[study]
    cost``, else its wall seconds; see :mod:`lrsearch.pick`); ``duration_s``;
    ``lr.<group>`` for every group in the study's order (0.0 = frozen, NaN = never sampled);
    ``frozen.<group>`` (nullable bool); ``weight_decay`` and any other searched knob;
    ``pruned_step`` (the last reported step of a pruned or diverged trial); ``reason`` (why it
    diverged or failed); ``host`` (the worker's); ``datetime_start``, ``datetime_complete``;
    ``n_evaluations`` (intermediate values reported).

    Args:
        storage: An Optuna storage, or a storage URL (``None``: ``$LRSEARCH_STORAGE``, then
            ``sqlite:///lrsearch.db``); a URL is opened read-only-minded (no new database file).
        study_name: The study.

    Returns:
        The trials; empty (with every column) when the study has none.

    Raises:
        StorageError: The storage cannot be opened.
        StudyNotFoundError: No such study (the message lists the studies there are).
        LrsearchError: The study has several objectives and is not lrsearch's.

    Example:
        >>> df = load_trials("sqlite:///lrsearch.db", "quickstart")
        >>> df.groupby("frozen.body")["value"].mean()
    """
    return trials_frame(load_study(_open(storage), study_name))


def curves_frame(study: optuna.Study) -> pd.DataFrame:
    """The intermediate values of a loaded study; see :func:`load_curves`."""
    import pandas as pd

    rows = [
        (t.number, int(step), float(value), trial_state(t))
        for t in study.get_trials(deepcopy=False)
        for step, value in sorted(t.intermediate_values.items())
    ]
    frame = pd.DataFrame(rows, columns=["number", "step", "value", "state"])
    return frame.astype({"number": "int64", "step": "int64", "value": "float64"})


def load_curves(storage: optuna.storages.BaseStorage | str | None, study_name: str) -> pd.DataFrame:
    """Every intermediate value of a study, long form: ``number``, ``step``, ``value``, ``state``.

    A diverged trial's last value is NaN, at the step after its last evaluation.

    Args:
        storage: An Optuna storage or a storage URL (as in :func:`load_trials`).
        study_name: The study.

    Raises:
        StorageError: The storage cannot be opened.
        StudyNotFoundError: No such study.
    """
    return curves_frame(load_study(_open(storage), study_name))


def filter_states(trials: pd.DataFrame, states: Iterable[str]) -> pd.DataFrame:
    """The rows of ``trials`` whose ``state`` is one of ``states`` (all rows when it is empty).

    Raises:
        LrsearchError: A state that no trial can have.
    """
    wanted = list(states)
    unknown = [s for s in wanted if s not in STATES]
    if unknown:
        raise LrsearchError(f"unknown state(s) {unknown}; choose from {', '.join(STATES)}")
    if not wanted:
        return trials
    return trials[trials["state"].isin(wanted)].reset_index(drop=True)


def format_rate(lr: float) -> str:
    """A learning rate as people write it: ``3e-3``, ``5.7e-4``; ``frozen`` for 0."""
    if lr == 0:
        return "frozen"
    if math.isnan(lr):
        return "-"
    mantissa, exponent = f"{lr:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def trials_table(trials: pd.DataFrame) -> str:
    """The trials as an aligned text table: the columns a person scans, rates as ``3e-3``/frozen.

    Hosts show only when several workers ran trials; every column is in the csv/json/parquet
    formats.
    """
    import pandas as pd

    if trials.empty:
        return "no trials"

    def num(fmt: str) -> Any:
        return lambda v: "-" if pd.isna(v) else format(v, fmt)

    # (header, cells, left-aligned): numbers to the right, words to the left.
    columns: list[tuple[str, list[str], bool]] = [
        ("trial", [str(n) for n in trials["number"]], False),
        ("state", [str(s) for s in trials["state"]], True),
        ("value", list(trials["value"].map(num(".4g"))), False),
        ("seconds", list(trials["duration_s"].map(num(".1f"))), False),
    ]
    for c in trials.columns:
        if c.startswith("lr."):
            columns.append((c.removeprefix("lr."), list(trials[c].map(format_rate)), False))
    for c in knob_columns(trials):
        columns.append((c, list(trials[c].map(num(".3g"))), False))
    columns.append(("pruned_step", list(trials["pruned_step"].map(num("d"))), False))
    if trials["host"].nunique() > 1:
        columns.append(("host", list(trials["host"].fillna("-")), True))
    reasons = ["-" if pd.isna(r) or not r else _clip(str(r), 60) for r in trials["reason"]]
    columns.append(("reason", reasons, True))
    widths = [max(len(h), *(len(c) for c in cells)) for h, cells, _ in columns]
    lines = []
    for row in range(-1, len(trials)):
        cells = [
            (h if row < 0 else cs[row]).ljust(w) if left else (h if row < 0 else cs[row]).rjust(w)
            for (h, cs, left), w in zip(columns, widths, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def knob_columns(trials: pd.DataFrame) -> list[str]:
    """The extra knobs of a trials frame (weight_decay, layer decay's base_lr ...) that have a
    value in some row."""
    return [
        c
        for c in trials.columns
        if c not in _FIXED_COLUMNS
        and not c.startswith(("lr.", "frozen."))
        and trials[c].notna().any()
    ]


def write_trials(
    trials: pd.DataFrame, *, fmt: str = "table", output: Path | None = None
) -> str | None:
    """Write the trials as a table, CSV, JSON (one object per trial) or Parquet.

    Args:
        trials: From :func:`load_trials` (filtered or not).
        fmt: ``table``, ``csv``, ``json`` or ``parquet``.
        output: The file to write; ``None`` returns the text instead (not for parquet).

    Returns:
        The text when ``output`` is ``None``, else ``None``.

    Raises:
        LrsearchError: An unknown format, parquet without a file or without pyarrow, or a file that
            cannot be written.
    """
    if fmt not in FORMATS:
        raise LrsearchError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "parquet":
        if output is None:
            raise LrsearchError(
                "--format parquet writes a binary file, not text: name it with -o FILE"
            )
        try:
            import pyarrow  # noqa: F401  # pandas' parquet engine; an optional extra
        except ImportError as e:
            raise LrsearchError(
                'parquet output needs pyarrow: pip install "lrsearch[parquet]"'
            ) from e
        try:
            trials.to_parquet(output, index=False, engine="pyarrow")
        except OSError as e:
            raise LrsearchError(f"cannot write {str(output)!r}: {e.strerror or e}") from e
        return None
    if fmt == "table":
        text = trials_table(trials) + "\n"
    elif fmt == "csv":
        text = trials.to_csv(index=False)
    else:
        text = trials.to_json(orient="records", date_format="iso", indent=2) + "\n"
    if output is None:
        return text
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as e:
        raise LrsearchError(f"cannot write {str(output)!r}: {e.strerror or e}") from e
    return None


def outcome_counts(trials: pd.DataFrame) -> dict[str, int]:
    """How many trials ended each way, every state of :data:`STATES` present (0 when none)."""
    counts = trials["state"].value_counts()
    return {s: int(counts.get(s, 0)) for s in STATES}


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
    done = trials[(trials["state"] == "complete") & trials["value"].notna()]
    ranked = done.sort_values(["value", "number"], ascending=[not maximize, True])
    best = ranked.head(top)

    def pick(values: Any) -> float | None:
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
            best_trained=pick(trained),
            best_frozen=pick(frozen),
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


@dataclass(frozen=True)
class Importance:
    """How much of the metric's variance each group's rate (or knob) explains."""

    values: dict[str, float]  # name -> share (sums to 1), largest first; empty when not estimated
    note: str  # what was measured, or why nothing could be


def group_importance(
    study: optuna.Study, trials: pd.DataFrame, groups: Sequence[str]
) -> Importance:
    """fANOVA importance (``optuna.importance.get_param_importances``) over the complete trials.

    Optuna's own parameters make a conditional space (``lr.body`` exists only when body trained),
    and its importance looks only at parameters every trial has, so a per-group space is measured
    per group instead: each group's rate on a log scale, frozen counted as a rate a decade below
    the lowest one tried (a tree splits it off as its own region). Searched knobs (weight decay)
    join them. Other spaces (layer decay) use Optuna's parameters as they are.

    Args:
        study: The loaded study.
        trials: Its trials (:func:`trials_frame`).
        groups: Its groups, in order.

    Returns:
        The importances, or none with a note saying why (too few complete trials, nothing varied).
    """
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    done = trials[(trials["state"] == "complete") & trials["value"].notna()]
    n = len(done)
    if n < MIN_IMPORTANCE_TRIALS:
        return Importance(
            {},
            f"too few complete trials ({n}) to estimate importance: it needs at least "
            f"{MIN_IMPORTANCE_TRIALS}",
        )
    evaluator = FanovaImportanceEvaluator(seed=0)  # seeded: the same study gives the same chart
    per_group = any(
        name.startswith("lr.")
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        for name in t.params
    )
    try:
        if not per_group:
            values = get_param_importances(study, evaluator=evaluator)
            note = f"fANOVA over {n} complete trials, on the searched parameters"
        else:
            columns = _importance_columns(trials, done, groups)
            if not columns:
                return Importance({}, "no group's rate varied among the complete trials")
            values = get_param_importances(
                _derived_study(study, columns, list(done["value"])), evaluator=evaluator
            )
            note = (
                f"fANOVA over {n} complete trials; each group's rate on a log scale, frozen "
                "counted as a rate below the lowest tried"
            )
            same = [g for g in groups if g not in columns]
            if same:
                note += f"; left out, the same in every complete trial: {', '.join(same)}"
    except (ValueError, RuntimeError, ImportError) as e:
        return Importance({}, f"importance could not be estimated: {e}")
    if not values or not math.isfinite(sum(values.values())) or sum(values.values()) <= 0:
        return Importance({}, "the complete trials do not differ enough to attribute anything")
    return Importance({k: float(v) for k, v in values.items()}, note)


def _importance_columns(
    trials: pd.DataFrame, done: pd.DataFrame, groups: Sequence[str]
) -> dict[str, list[float]]:
    columns: dict[str, list[float]] = {}
    for g in groups:
        tried = trials[f"lr.{g}"]
        positive = tried[tried > 0]
        rates = done[f"lr.{g}"]
        if positive.empty or rates.isna().any():
            continue  # never trained (nothing to attribute), or a rate that was never stored
        floor = math.log10(float(positive.min())) - 1.0
        xs = [math.log10(v) if v > 0 else floor for v in rates]
        if max(xs) - min(xs) > 1e-12:
            columns[g] = xs
    for knob in knob_columns(trials):
        if knob == "freeze_depth":
            continue  # the groups' columns hold it already: frozen is a rate below the lowest
        values = done[knob]
        if values.dtype.kind != "f" or values.isna().any() or values.nunique() < 2:
            continue
        xs = [math.log10(v) for v in values] if (values > 0).all() else list(values)
        columns[knob if knob not in columns else f"{knob} (knob)"] = xs
    return columns


def _derived_study(
    study: optuna.Study, columns: dict[str, list[float]], values: list[float]
) -> optuna.Study:
    from optuna.distributions import BaseDistribution, FloatDistribution

    derived = optuna.create_study(
        storage=optuna.storages.InMemoryStorage(),
        direction=study.directions[0].name.lower(),  # type: ignore[arg-type]
    )
    dists: dict[str, BaseDistribution] = {
        name: FloatDistribution(min(xs), max(xs)) for name, xs in columns.items()
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        derived.add_trials(
            [
                optuna.trial.create_trial(
                    params={name: xs[i] for name, xs in columns.items()},
                    distributions=dists,
                    value=value,
                )
                for i, value in enumerate(values)
            ]
        )
    return derived

"""Choosing a trial: the best metric, or a trade of the metric against training cost.

A study has one objective (the task's metric), or two when ``[study] cost`` names a training cost
(``"seconds"`` of training, or ``"examples"``: examples processed x the share of parameters that
train), minimised: Optuna then keeps a Pareto front of metric against cost, and freezing, which
makes a trial cheaper, becomes something the search can trade.

Whatever the study, a trial is picked by one rule:

- ``best`` (no option): the best metric; ties go to the earliest trial.
- ``within=D``: the cheapest trial whose metric is within ``D`` of the best (in the metric's own
  units: 0.005 is half a point of accuracy).
- ``max_cost=C``: the best metric among the trials that cost at most ``C``.

**Noise-aware.** When the study's top trials were retrained with more seeds (``lrsearch confirm``,
``[winner] reseeds``), ``seeds`` maps each such trial to its values over the seeds (the search's
run first): the candidates are then those trials only, ranked by their mean (a trial with a failed
or diverged seed after every trial without one), and the rules read means; ``within_sd`` picks the
cheapest trial whose mean is within one seed standard deviation (pooled over the candidates) of the
best mean.

The cost of a trial is its stored second objective; in a one-objective study it is the trial's
wall time (Optuna's start and end timestamps: model building included), so the rules work on any
study. Only COMPLETE trials with a finite metric are candidates.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from lrsearch.errors import LrsearchError

COST_KINDS = ("seconds", "examples")


def metric(trial: FrozenTrial) -> float | None:
    """The trial's metric (its first objective); ``None`` when it has none or it is not finite."""
    values = trial.values
    if not values or values[0] is None:
        return None
    value = float(values[0])
    return value if math.isfinite(value) else None


def cost(trial: FrozenTrial) -> float | None:
    """The trial's training cost: its second objective, else its wall seconds."""
    values = trial.values
    if values is not None and len(values) > 1:
        return float(values[1])
    if trial.duration is not None:
        return trial.duration.total_seconds()
    return None


@dataclass(frozen=True)
class Rule:
    """How to pick one trial; at most one of ``within`` and ``max_cost`` is set."""

    within: float | None = None
    max_cost: float | None = None
    within_sd: bool = False

    def __post_init__(self) -> None:
        given = (self.within is not None) + (self.max_cost is not None) + self.within_sd
        if given > 1:
            raise LrsearchError(
                "--within, --within-sd and --max-cost pick by different rules; give one of them"
            )
        if self.within is not None and not (self.within >= 0 and math.isfinite(self.within)):
            raise LrsearchError(f"--within must be a finite number >= 0, got {self.within}")
        if self.max_cost is not None and not (self.max_cost > 0):
            raise LrsearchError(f"--max-cost must be > 0, got {self.max_cost}")

    @property
    def trades(self) -> bool:
        """Whether the rule trades the metric against cost (else: the best metric)."""
        return self.within is not None or self.max_cost is not None or self.within_sd

    def describe(self, cost_name: str) -> str:
        if self.within_sd:
            return f"the cheapest ({cost_name}) whose mean is within one seed sd of the best mean"
        if self.within is not None:
            return f"the cheapest ({cost_name}) within {self.within:g} of the best metric"
        if self.max_cost is not None:
            return f"the best metric at {cost_name} <= {self.max_cost:g}"
        return "the best metric"


def candidates(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The COMPLETE trials with a finite metric."""
    return [t for t in trials if t.state == TrialState.COMPLETE and metric(t) is not None]


def numbered(trials: Sequence[FrozenTrial], number: int, *, study: str, use: str) -> FrozenTrial:
    """Trial ``number`` of one study's ``trials`` (in order), which must be complete.

    Raises:
        LrsearchError: There is no such trial, or it is not COMPLETE; ``use`` (e.g. "export")
            says what the caller wanted it for.
    """
    if not 0 <= number < len(trials):
        known = f"0..{len(trials) - 1}" if trials else "none"
        raise LrsearchError(
            f"study {study!r} has no trial {number} (trials: {known}); check --trial"
        )
    trial = trials[number]
    if trial.state != TrialState.COMPLETE:
        raise LrsearchError(
            f"trial {number} of study {study!r} is {trial.state.name}, not COMPLETE; {use} a "
            "complete trial (`lrsearch best --top 5` lists them)"
        )
    return trial


def rank_key(value: float, number: int, *, maximize: bool) -> tuple[float, int]:
    """The order :func:`rank` sorts by: the better metric first, ties to the earliest trial.

    For readers that hold trials as rows (a DataFrame's ``value`` and ``number``), so that they
    rank exactly as :func:`rank` does.
    """
    return (-value if maximize else value, number)


def rank(trials: Iterable[FrozenTrial], *, maximize: bool) -> list[FrozenTrial]:
    """Candidates best metric first; ties to the earliest trial."""
    return sorted(
        candidates(trials),
        key=lambda t: rank_key(metric(t) or 0.0, t.number, maximize=maximize),
    )


def best(trials: Iterable[FrozenTrial], *, maximize: bool) -> FrozenTrial | None:
    """The best trial: the first of :func:`rank`; ``None`` while no trial is complete."""
    ranked = rank(trials, maximize=maximize)
    return ranked[0] if ranked else None


def pareto_front(trials: Iterable[FrozenTrial], *, maximize: bool) -> list[FrozenTrial]:
    """The candidates no other candidate beats on both metric and cost, best metric first."""
    front: list[FrozenTrial] = []
    cheapest = math.inf
    sign = -1.0 if maximize else 1.0
    # Among equal metrics the cheapest comes first: the others are dominated by it.
    ordered = sorted(
        candidates(trials),
        key=lambda t: (sign * (metric(t) or 0.0), _cost_key(t), t.number),
    )
    for t in ordered:
        c = cost(t)
        if c is not None and c < cheapest:
            front.append(t)
            cheapest = c
    return front


def _cost_key(trial: FrozenTrial) -> float:
    c = cost(trial)
    return math.inf if c is None else c


@dataclass(frozen=True)
class Seeded:
    """A trial with its values over several seeds: the search's run first, then retrainings."""

    trial: FrozenTrial
    values: tuple[float, ...]  # the finite ones
    failed: int  # seeds that diverged or failed

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None


def rank_seeded(
    trials: Iterable[FrozenTrial],
    seeds: Mapping[int, Sequence[float | None]],
    *,
    maximize: bool,
) -> list[Seeded]:
    """The candidates ``seeds`` names, best mean first; a trial with a failed seed after all
    those without (an unstable config), ties to the earliest trial."""
    out = []
    for t in candidates(trials):
        if t.number not in seeds:
            continue
        values = [metric(t), *seeds[t.number]]
        finite = tuple(float(v) for v in values if v is not None and math.isfinite(v))
        out.append(Seeded(t, finite, len(values) - len(finite)))
    sign = -1.0 if maximize else 1.0
    return sorted(out, key=lambda s: (s.failed > 0, sign * s.mean, s.trial.number))


def pooled_sd(seeded: Iterable[Seeded]) -> float | None:
    """One seed's standard deviation, pooled over the trials with two or more values."""
    squares, freedom = 0.0, 0
    for s in seeded:
        if s.sd is not None:
            squares += (len(s.values) - 1) * s.sd**2
            freedom += len(s.values) - 1
    return math.sqrt(squares / freedom) if freedom else None


def pick(
    trials: Sequence[FrozenTrial],
    *,
    maximize: bool,
    rule: Rule | None = None,
    seeds: Mapping[int, Sequence[float | None]] | None = None,
) -> FrozenTrial:
    """The trial ``rule`` chooses (the best metric when ``rule`` is ``None``).

    Args:
        trials: The study's trials.
        maximize: The metric's direction.
        rule: How to trade the metric against cost; default: the best metric.
        seeds: Trial number to its retrained seeds' values (``lrsearch.retrain.seed_values``):
            when given and not empty, only those trials are candidates, judged by their mean.

    Raises:
        LrsearchError: No trial is complete yet, or none meets the rule (the message says what the
            cheapest costs), or ``within_sd`` without retrained seeds.
    """
    rule = rule or Rule()
    if seeds:
        seeded = rank_seeded(trials, seeds, maximize=maximize)
        if seeded:
            return _pick_seeded(seeded, rule)
    if rule.within_sd:
        raise LrsearchError(
            "--within-sd compares means over seeds, and no trial of this study has been "
            "retrained with more seeds; run `lrsearch confirm` first (or use --within)"
        )
    ranked = rank(trials, maximize=maximize)
    if not ranked:
        raise LrsearchError("no complete trial yet; run the study first")
    return _pick_ranked(ranked, [metric(t) or 0.0 for t in ranked], rule)


def _pick_seeded(seeded: list[Seeded], rule: Rule) -> FrozenTrial:
    stable = [s for s in seeded if not s.failed] or seeded
    means = [s.mean for s in stable]
    if rule.within_sd:
        sd = pooled_sd(stable)
        if sd is None:
            raise LrsearchError(
                "--within-sd needs a seed standard deviation, and no retrained trial has two "
                "finite values; retrain with more seeds (`lrsearch confirm --reseeds 2`)"
            )
        rule = Rule(within=sd)
    if not rule.trades:
        return seeded[0].trial
    return _pick_ranked([s.trial for s in stable], means, rule)


def _pick_ranked(ranked: list[FrozenTrial], values: list[float], rule: Rule) -> FrozenTrial:
    """The trial ``rule`` picks among ``ranked`` (best first), whose metrics are ``values``."""
    if not rule.trades:
        return ranked[0]
    costed = [(t, v) for t, v in zip(ranked, values, strict=True) if cost(t) is not None]
    if not costed:
        raise LrsearchError("no complete trial has a recorded cost")
    if rule.within is not None:
        best = values[0]
        near = [t for t, v in costed if abs(v - best) <= rule.within + 1e-12]
        return min(near, key=lambda t: cost(t) or 0.0)  # equal costs: the first, in ranked order
    assert rule.max_cost is not None
    cheap = [t for t, _ in costed if (cost(t) or 0.0) <= rule.max_cost]
    if not cheap:
        lowest = min(cost(t) or 0.0 for t, _ in costed)
        raise LrsearchError(
            f"no complete trial costs at most {rule.max_cost:g} (the cheapest costs {lowest:.4g});"
            " raise --max-cost"
        )
    return cheap[0]  # ranked order: the best metric among them

"""The search space: an Optuna trial in, ``{group: lr}`` out (0 = frozen).

Three kinds of space, chosen by ``[space] kind``:

- ``per_group``: an independent log-uniform rate per group (``lr.<group>``); a group named in
  ``freeze`` first samples ``freeze.<group>`` (a real choice, so the sampler learns whether
  freezing pays) and only samples its rate when it trains. With ``freeze_mode = "prefix"`` it
  samples one ``freeze_depth`` instead, 0 to len(freeze): how many of the freeze groups, lowest
  first, are frozen. Only a frozen prefix makes a trial cheaper (backward stops at the lowest
  group that learns, and ``prefix_cache`` skips the prefix's forward pass); a frozen group above
  one that learns saves little, so the prefix space spends the budget where freezing pays.
- ``single``: one rate ``lr`` shared by every searched group: the baseline a practitioner tunes
  by hand, searched with the same trainer, budget and pruner.
- ``layer_decay``: ``base_lr`` for the top non-head group, multiplied by ``decay`` once per group
  further down (groups are listed bottom to top in the file), and ``head_multiplier`` x ``base_lr``
  for the head groups: three numbers however deep the model.

A per_group space with ``start = "single"`` begins with a one-rate sweep: :meth:`SearchSpace.
single_start` gives the parameters of its ``start_trials`` trials (every searched group trains, all
at one rate; the rates spread log-uniformly over the range all groups share), which the study
enqueues before its first trial, so the per-group search then models from them.

In all, ``fixed`` groups take a given rate (0 freezes them for good) and ``weight_decay`` may be
fixed or searched. Parameter names are stable, so a study's trials can be compared across resumed
runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fnmatch import fnmatchcase

import optuna

from lrsearch import schema
from lrsearch.errors import SpecError
from lrsearch.spec import SpaceSection, fixed_rate, group_ref_problems

# Study user attribute: how many one-rate trials ``start = "single"`` enqueued (set once, so a
# resumed study never enqueues them again).
START_ATTR = schema.START_ATTR


@dataclass(frozen=True)
class Sample:
    """What one trial trains with."""

    lrs: dict[str, float]
    weight_decay: float | None = None

    @property
    def frozen(self) -> tuple[str, ...]:
        return tuple(g for g, lr in self.lrs.items() if lr == 0)


class SearchSpace:
    """Samples per-group learning rates for a fixed, ordered list of groups.

    Args:
        space: The ``[space]`` section.
        groups: The resolved group names, bottom to top.

    Raises:
        SpecError: ``[space]`` names a group that does not exist.
    """

    def __init__(self, space: SpaceSection, groups: tuple[str, ...], *, source: str = "[space]"):
        problems = group_ref_problems(space, groups)
        if problems:
            raise SpecError(source, problems)
        self.space = space
        self.groups = groups
        self.single_start()  # its ranges checked before any study is touched

    def _refs(self, group: str, patterns: tuple[str, ...]) -> bool:
        return any(fnmatchcase(group, p) for p in patterns)

    def _fixed(self, group: str) -> float | None:
        return fixed_rate(self.space, group)

    def _range(self, group: str) -> tuple[float, float]:
        for pattern, rng in self.space.lr_ranges.items():
            if fnmatchcase(group, pattern):
                return rng
        return self.space.lr

    def _searched(self) -> list[str]:
        return [g for g in self.groups if self._fixed(g) is None]

    def dimensions(self) -> tuple[int, bool]:
        """How many parameters a trial may sample, and whether some are conditional (sampled in
        some trials only: a freezable group's rate). A sampler's choice depends on both."""
        s = self.space
        searched = self._searched()
        freezable = [g for g in searched if self._refs(g, s.freeze)]
        n = int(isinstance(s.weight_decay, tuple))
        if freezable:
            n += 1 if s.freeze_mode == "prefix" else len(freezable)
        if s.kind == "per_group":
            n += len(searched)
        elif s.kind == "single":
            n += 1
        else:
            n += 3 if any(self._refs(g, s.head) for g in self.groups) else 2
        # In a single or layer_decay space the freeze choice changes no parameter's presence.
        return n, bool(freezable) and s.kind == "per_group"

    def single_start(self) -> list[dict[str, float | bool | int]]:
        """The parameters of the one-rate sweep that ``start = "single"`` enqueues (else ``[]``).

        Raises:
            SpecError: The searched groups' ranges share no rate.
        """
        s = self.space
        if s.kind != "per_group" or s.start != "single":
            return []
        searched = self._searched()
        ranges = [self._range(g) for g in searched]
        low = max((r[0] for r in ranges), default=s.lr[0])
        high = min((r[1] for r in ranges), default=s.lr[1])
        if low > high:
            raise SpecError(
                "[space] start",
                [
                    f"'single' trains every group at one rate, but the groups' lr_ranges share "
                    f"none (the highest low is {low:g}, the lowest high {high:g}); widen "
                    'lr_ranges or set start = "sampler"'
                ],
            )
        n = s.start_trials
        # Midpoints of n equal log-width bins: no rate sits on the range's edge.
        span = math.log(high) - math.log(low)
        rates = [math.exp(math.log(low) + span * (i + 0.5) / n) for i in range(n)]
        freezable = [g for g in searched if self._refs(g, s.freeze)]
        trials: list[dict[str, float | bool | int]] = []
        for rate in rates:
            params: dict[str, float | bool | int] = {f"lr.{g}": rate for g in searched}
            if freezable and s.freeze_mode == "prefix":
                params["freeze_depth"] = 0
            else:
                params.update({f"freeze.{g}": False for g in freezable})
            trials.append(params)
        return trials

    def sample(self, trial: optuna.trial.BaseTrial) -> Sample:
        """Suggest this trial's rates; frozen and fixed groups suggest nothing they don't need."""
        s = self.space
        searched = self._searched()
        freezable = [g for g in searched if self._refs(g, s.freeze)]
        if s.freeze_mode == "prefix":
            depth = trial.suggest_int("freeze_depth", 0, len(freezable)) if freezable else 0
            frozen = set(freezable[:depth])
        else:
            frozen = {
                g for g in freezable if trial.suggest_categorical(f"freeze.{g}", [False, True])
            }
        lrs: dict[str, float] = {}
        if s.kind == "per_group":
            for g in searched:
                if g not in frozen:
                    low, high = self._range(g)
                    lrs[g] = trial.suggest_float(f"lr.{g}", low, high, log=True)
        elif s.kind == "single":
            lr = trial.suggest_float("lr", *s.lr, log=True)
            lrs = {g: lr for g in searched if g not in frozen}
        else:
            base = trial.suggest_float("base_lr", *s.lr, log=True)
            heads = [g for g in self.groups if self._refs(g, s.head)]
            layers = [g for g in self.groups if g not in heads]
            decay = trial.suggest_float("decay", *s.decay)
            mult = (
                trial.suggest_float("head_multiplier", *s.head_multiplier, log=True)
                if heads
                else 1.0
            )
            for i, g in enumerate(layers):
                lrs[g] = base * decay ** (len(layers) - 1 - i)
            for g in heads:
                lrs[g] = base * mult
        ordered = {}
        for g in self.groups:
            fixed = self._fixed(g)
            ordered[g] = fixed if fixed is not None else 0.0 if g in frozen else lrs[g]
        wd = s.weight_decay
        if isinstance(wd, tuple):
            wd = trial.suggest_float("weight_decay", *wd, log=True)
        return Sample(lrs=ordered, weight_decay=wd)


def enqueue_start(study: optuna.Study, space: SearchSpace) -> int:
    """Enqueue ``space``'s one-rate sweep in a study that has not had it; how many trials.

    The queued trials run first, in order, and count in the budget like any trial.
    """
    if START_ATTR in study.user_attrs:
        return 0
    start = space.single_start()
    for params in start:
        study.enqueue_trial(params)
    if start:
        study.set_user_attr(START_ATTR, len(start))
    return len(start)

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

In both, ``fixed`` groups take a given rate (0 freezes them for good) and ``weight_decay`` may be
fixed or searched. Parameter names are stable, so a study's trials can be compared across resumed
runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

import optuna

from lrsearch.errors import SpecError
from lrsearch.spec import SpaceSection, fixed_rate, group_ref_problems


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

    def _refs(self, group: str, patterns: tuple[str, ...]) -> bool:
        return any(fnmatchcase(group, p) for p in patterns)

    def _fixed(self, group: str) -> float | None:
        return fixed_rate(self.space, group)

    def _range(self, group: str) -> tuple[float, float]:
        for pattern, rng in self.space.lr_ranges.items():
            if fnmatchcase(group, pattern):
                return rng
        return self.space.lr

    def sample(self, trial: optuna.trial.BaseTrial) -> Sample:
        """Suggest this trial's rates; frozen and fixed groups suggest nothing they don't need."""
        s = self.space
        searched = [g for g in self.groups if self._fixed(g) is None]
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

"""Layer groups: which of a model's parameters learn at which rate.

Groups are ordered ``(name, patterns)`` pairs. A pattern with a glob character (``*?[``) matches
whole parameter names (``"encoder.layer.[0-2].*"``); a pattern without one is a module path or a
parameter name (``"classifier"`` matches ``classifier.weight`` and ``classifier.bias``). A
parameter goes to the first group that matches. A parameter no group matches, or a group that
matches nothing, is an error naming them; a group whose only pattern is ``"*"`` is a catch-all and
may end up empty. Tied parameters are counted once, under the first name PyTorch gives them.
Parameters that already have ``requires_grad=False`` are not trainable and belong to no group.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from lrsearch.errors import GroupError
from lrsearch.limits import MAX_GROUPS

CATCH_ALL = "*"
_SHOW = 5


@dataclass(frozen=True)
class LayerGroups:
    """Resolved groups: every trainable parameter of one model in exactly one group, in order."""

    patterns: tuple[tuple[str, tuple[str, ...]], ...]
    params: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.params)

    def members(self, group: str) -> tuple[str, ...]:
        """The parameter names of ``group``."""
        return dict(self.params)[group]

    def match(self, group: str) -> tuple[str, ...]:
        """The patterns that define ``group``."""
        return dict(self.patterns)[group]


def matches(name: str, pattern: str) -> bool:
    """Whether parameter ``name`` matches ``pattern`` (glob, or module path / exact name)."""
    if any(c in pattern for c in "*?["):
        return fnmatchcase(name, pattern)
    return name == pattern or name.startswith(pattern + ".")


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the model's trainable parameters, tied ones once, in registration order."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def resolve_groups(
    model: nn.Module,
    groups: Mapping[str, Sequence[str]] | Sequence[tuple[str, Sequence[str]]] | None = None,
    *,
    auto_depth: int | None = None,
) -> LayerGroups:
    """Assign every trainable parameter of ``model`` to one group.

    Args:
        model: The model whose ``named_parameters()`` are grouped.
        groups: Ordered ``{group: [pattern, ...]}``; a parameter goes to the first group that
            matches.
        auto_depth: Instead of ``groups``: one group per module path of this many components, in
            model order (``auto_depth=1`` on ``features.0.weight`` gives group ``features``).

    Returns:
        The resolved groups, empty catch-all groups dropped. Resolving its ``patterns`` again on the
        same model gives the same groups (an exported config relies on it).

    Raises:
        GroupError: A trainable parameter matches no group, a group matches no parameter, or a
            group is named twice.
    """
    names = trainable_names(model)
    if not names:
        raise GroupError("the model has no trainable parameters (all have requires_grad=False)")
    if auto_depth is not None:
        if groups:
            raise GroupError("pass either groups or auto_depth, not both")
        return _auto_groups(names, auto_depth)
    if not groups:
        raise GroupError("no groups given; name groups by pattern or use auto_depth")
    pairs = [
        (g, tuple([p] if isinstance(p, str) else p))
        for g, p in (groups.items() if isinstance(groups, Mapping) else groups)
    ]
    if len(pairs) > MAX_GROUPS:
        raise GroupError(
            f"{len(pairs)} groups, at most {MAX_GROUPS}: each is a searched dimension; put layers "
            "in one group with a pattern"
        )
    twice = sorted(g for g, n in Counter(g for g, _ in pairs).items() if n > 1)
    if twice:
        raise GroupError(f"group(s) named more than once: {', '.join(twice)}; name each group once")
    members: dict[str, list[str]] = {g: [] for g, _ in pairs}
    unmatched = []
    for name in names:
        for group, patterns in pairs:
            if any(matches(name, p) for p in patterns):
                members[group].append(name)
                break
        else:
            unmatched.append(name)
    problems = []
    if unmatched:
        problems.append(
            f"{len(unmatched)} trainable parameter(s) match no group: {_listed(unmatched)}; add a "
            'pattern for them, or a catch-all group last (rest = ["*"])'
        )
    empty = [
        f"group {group!r} (patterns {list(patterns)})"
        for group, patterns in pairs
        if not members[group] and tuple(patterns) != (CATCH_ALL,)
    ]
    if empty:
        # A short list: thousands of groups would make one error line of megabytes.
        which = empty[0] if len(empty) == 1 else f"{len(empty)} groups"
        problems.append(
            f"{which} {'matches' if len(empty) == 1 else 'match'} no trainable parameter"
            + ("" if len(empty) == 1 else f": {_listed(empty)}")
            + " (an earlier group may have taken them); parameter names look like "
            f"{_listed(names, 3)}"
        )
    if problems:
        raise GroupError("; ".join(problems))
    kept = [(g, p) for g, p in pairs if members[g]]
    return LayerGroups(
        patterns=tuple((g, tuple(p)) for g, p in kept),
        params=tuple((g, tuple(members[g])) for g, _ in kept),
    )


def _auto_groups(names: list[str], depth: int) -> LayerGroups:
    if depth < 1:
        raise GroupError(f"auto_depth must be >= 1, got {depth}")
    members: dict[str, list[str]] = {}
    for name in names:
        parts = name.split(".")
        # The last part is the parameter itself; a parameter of a shallower module is its own group.
        prefix = ".".join(parts[: min(depth, max(len(parts) - 1, 1))])
        members.setdefault(prefix, []).append(name)
    if len(members) > MAX_GROUPS:
        raise GroupError(
            f"auto_depth = {depth} makes {len(members)} groups, at most {MAX_GROUPS}: each is a "
            "searched dimension; use a smaller auto_depth or name the groups"
        )
    patterns = []
    for group, owned in members.items():
        # A module with parameters of its own *and* deeper groups below it (``block.scale`` beside
        # ``block.fc.weight`` at depth 2): its path as a prefix would also take the deeper groups'
        # parameters when the patterns are resolved again, so it lists its parameters by name.
        overlaps = any(matches(n, group) for n in names if n not in owned)
        patterns.append((group, tuple(owned) if overlaps else (group,)))
    return LayerGroups(
        patterns=tuple(patterns),
        params=tuple((g, tuple(m)) for g, m in members.items()),
    )


def build_param_groups(
    model: nn.Module,
    groups: LayerGroups | Mapping[str, Sequence[str]],
    lrs: Mapping[str, float],
    *,
    weight_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Optimizer param groups, one per trained group, with its own ``lr`` and its ``name``.

    A group with lr 0 is frozen: its parameters get ``requires_grad=False`` (so autograd does no
    work for them) and it stays out of the optimizer. A trained group's parameters get
    ``requires_grad=True``, so calling this again on the same model with new rates thaws them.

    Args:
        model: The model the groups were resolved on (or will be, when ``groups`` is a mapping).
        groups: Resolved groups, or ``{group: [pattern, ...]}`` to resolve now.
        lrs: ``{group: lr}`` for every group; 0 freezes a group.
        weight_decay: Set on every returned group when given.

    Raises:
        GroupError: ``lrs`` misses a group or names an unknown one, or a rate is negative.
    """
    resolved = groups if isinstance(groups, LayerGroups) else resolve_groups(model, groups)
    missing = [g for g in resolved.names if g not in lrs]
    extra = [g for g in lrs if g not in resolved.names]
    if missing or extra:
        raise GroupError(
            f"learning rates must name exactly the groups {list(resolved.names)}; "
            f"missing {missing}, unknown {extra}"
        )
    bad = {g: v for g, v in lrs.items() if not v >= 0}
    if bad:
        raise GroupError(f"learning rates must be >= 0 (0 freezes a group), got {bad}")
    by_name = dict(model.named_parameters())
    out: list[dict[str, Any]] = []
    for group, names in resolved.params:
        params = [by_name[n] for n in names]
        if lrs[group] == 0:
            for p in params:
                p.requires_grad_(False)
            continue
        for p in params:
            # An earlier call may have frozen it; in the optimizer without a gradient it would
            # silently never learn.
            p.requires_grad_(True)
        entry: dict[str, Any] = {"params": params, "lr": float(lrs[group]), "name": group}
        if weight_decay is not None:
            entry["weight_decay"] = weight_decay
        out.append(entry)
    return out


def make_optimizer(
    name: str, param_groups: list[dict[str, Any]], **kwargs: Any
) -> torch.optim.Optimizer:
    """A torch optimizer by its short name (``adamw``, ``adam``, ``sgd``) over ``param_groups``.

    Each group keeps its own ``lr``; ``kwargs`` are the optimizer's defaults (the lr default is only
    used by groups without their own, as in PyTorch).
    """
    classes: dict[str, type[torch.optim.Optimizer]] = {
        "adamw": torch.optim.AdamW,
        "adam": torch.optim.Adam,
        "sgd": torch.optim.SGD,
    }
    key = name.lower()
    if key not in classes:
        raise GroupError(f"unknown optimizer {name!r}; use one of {', '.join(classes)}")
    if key != "sgd":
        kwargs.pop("momentum", None)
    return classes[key](param_groups, **kwargs)


def _listed(names: Sequence[str], show: int = _SHOW) -> str:
    head = ", ".join(names[:show])
    return head if len(names) <= show else f"{head} (and {len(names) - show} more)"

"""Rules between sections, which no one field can state, and ``[groups]``, whose keys are names.

``[space]`` names groups (``group_ref_problems``, ``fixed_rate``, also used by ``lrsearch.space``
and ``lrsearch.init``); ``[study] cost`` rules out pruning; ``[winner]`` and ``[space] start``
share ``[study] n_trials`` (``between_sections``).
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Any

from lrsearch.limits import MAX_GROUPS
from lrsearch.spec.model import (
    GroupsSection,
    PrunerSection,
    SpaceSection,
    StudySection,
    WinnerSection,
)
from lrsearch.spec.validate import Reader

_GROUP_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def read_groups(reader: Reader, t: dict[str, Any], present: bool) -> GroupsSection:
    """``[groups]``: ``name = [patterns]`` pairs in order, or ``auto_depth`` alone."""
    if not present or not t:
        reader.problem(
            "[groups]",
            "section is required: name groups by parameter patterns "
            '(head = ["classifier.*"]) or set auto_depth = 1',
        )
        return GroupsSection()
    if "auto_depth" in t:
        depth = reader.take("[groups] auto_depth", t.pop("auto_depth"), (int,), None, minimum=1)
        for key in t:
            reader.problem(
                f"[groups] {key}",
                "auto_depth makes every group itself; remove the named groups or auto_depth",
            )
        return GroupsSection(auto_depth=depth)
    if len(t) > MAX_GROUPS:  # checked alone: 10,000 groups would give 10,000 problems
        reader.problem(
            "[groups]",
            f"{len(t)} groups, at most {MAX_GROUPS}: each is a searched dimension; put layers "
            'in one group with a pattern (blocks = ["blocks.*"])',
        )
        return GroupsSection()
    pairs: list[tuple[str, tuple[str, ...]]] = []
    for name, value in t.items():
        where = f"[groups] {name}"
        if not _GROUP_NAME.match(name):
            reader.problem(where, "a group name may use letters, digits, '_', '.', '-' only")
            continue
        if isinstance(value, str):
            value = [value]
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v for v in value)
        ):
            reader.problem(
                where, f"must be a non-empty list of parameter name patterns, got {value!r}"
            )
            continue
        pairs.append((name, tuple(value)))
    return GroupsSection(patterns=tuple(pairs))


def between_sections(
    *,
    study: StudySection,
    groups: GroupsSection,
    space: SpaceSection,
    pruner: PrunerSection,
    winner: WinnerSection,
    group_table: Any,
) -> list[str]:
    """Problems between sections, once each section is read; ``group_table``: ``[groups]``."""
    problems = []
    if not groups.auto_depth and groups.patterns:
        # Every well-named group, also one whose patterns were bad, so that a reference to it is
        # not reported as a second, misleading problem.
        named = tuple(n for n in group_table if _GROUP_NAME.match(n))
        problems.extend(group_ref_problems(space, named))
    if study.cost is not None and pruner.kind != "none":
        problems.append(
            "[study] cost: makes the study two-objective (metric and cost), and Optuna cannot "
            'prune a two-objective trial; set [pruner] kind = "none", or remove cost (lrsearch '
            "best --within / --max-cost still trade metric against wall time)"
        )
    reserved = winner.reseeds * winner.top_k
    if reserved and reserved >= study.n_trials:
        problems.append(
            f"[winner] reseeds: reseeds x top_k = {reserved} retrainings are counted in [study] "
            f"n_trials ({study.n_trials}), which leaves no trial to search; raise n_trials or "
            "lower reseeds / top_k"
        )
    elif space.start == "single" and space.start_trials >= study.n_trials - reserved:
        problems.append(
            f"[space] start_trials: the one-rate sweep ({space.start_trials} trials) takes the "
            f"whole search budget ({study.n_trials - reserved} trials); lower start_trials or "
            "raise n_trials"
        )
    return problems


def group_ref_problems(space: SpaceSection, group_names: tuple[str, ...]) -> list[str]:
    """Problems with group names referenced by ``[space]`` (freeze, fixed, lr_ranges, head)."""
    problems = []
    known = ", ".join(group_names)
    refs: list[tuple[str, str]] = [("freeze", p) for p in space.freeze]
    refs += [("head", p) for p in space.head]
    refs += [("fixed", g) for g in space.fixed]
    refs += [("lr_ranges", g) for g in space.lr_ranges]
    for key, ref in refs:
        if not any(fnmatchcase(g, ref) for g in group_names):
            problems.append(f"[space] {key}: {ref!r} names no group; the groups are: {known}")
    if space.freeze_mode == "prefix":
        problems += _prefix_problems(space, group_names)
    if space.kind == "layer_decay":
        heads = {g for g in group_names if any(fnmatchcase(g, h) for h in space.head)}
        if not [g for g in group_names if g not in heads]:
            problems.append(
                "[space] head: every group is a head group, so layer_decay has no layers to decay; "
                "name only the head groups in head"
            )
    return problems


def fixed_rate(space: SpaceSection, group: str) -> float | None:
    """The rate ``[space] fixed`` gives ``group`` (its first matching pattern); None: searched."""
    for pattern, lr in space.fixed.items():
        if fnmatchcase(group, pattern):
            return lr
    return None


def _prefix_problems(space: SpaceSection, group_names: tuple[str, ...]) -> list[str]:
    """``freeze_mode = "prefix"`` freezes the lowest freeze groups first: below the highest of
    them, every group must be one too, or be fixed at 0 (frozen for good). A fixed group is not
    searched, so a ``freeze`` pattern that matches it does not make it freezable."""
    freezable = [
        i
        for i, g in enumerate(group_names)
        if fixed_rate(space, g) is None and any(fnmatchcase(g, p) for p in space.freeze)
    ]
    if not freezable:
        return []
    gaps = [
        g
        for i, g in enumerate(group_names[: freezable[-1]])
        if i not in freezable and fixed_rate(space, g) != 0
    ]
    if not gaps:
        return []
    return [
        f"[space] freeze_mode: 'prefix' freezes groups from the bottom up, but {', '.join(gaps)} "
        f"lies below {group_names[freezable[-1]]!r} and may not be frozen; add it to freeze, "
        "fix it at 0, or set freeze_mode = 'any'"
    ]

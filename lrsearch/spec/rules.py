"""Rules that tie ``[space]`` to the group names: what a pattern names, which rate is fixed."""

from __future__ import annotations

from fnmatch import fnmatchcase

from lrsearch.spec.model import SpaceSection


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

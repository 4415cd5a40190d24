"""The study file's rules that a field's type and bounds cannot say, cited by ``model``'s fields.

Readers (``field(metadata={"read": ...})``) take a key no type says; refiners (``"refine"``) test a
well-typed value further; checks (``"check"``) relate a key to the keys read before it.
``lrsearch.spec.validate`` says when each runs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from lrsearch.limits import study_name_problem
from lrsearch.spec.validate import Reader, Seen

_ENTRY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def group_names(reader: Reader, where: str, value: Any, seen: Seen) -> tuple[str, ...]:
    """A list of group names (or patterns); one name alone is a list of one."""
    value = reader.take(where, value, (list, str), [])
    if isinstance(value, str):
        value = [value]
    if not all(isinstance(v, str) and v for v in value):
        reader.problem(where, f"must be a list of group names, got {value!r}")
        return ()
    return tuple(value)


def lr_ranges(reader: Reader, where: str, value: Any, seen: Seen) -> dict[str, tuple[float, float]]:
    """Per-group learning-rate ranges; a bad one stands at ``[space] lr``."""
    ranges: dict[str, tuple[float, float]] = {}
    for g, r in reader.take(where, value, (dict,), {}).items():
        ranges[g] = reader.pair(f"{where}.{g}", r, seen.values["lr"])
    return ranges


def fixed_rates(reader: Reader, where: str, value: Any, seen: Seen) -> dict[str, float]:
    """Learning rates fixed per group (0: frozen for good)."""
    fixed: dict[str, float] = {}
    for g, v in reader.take(where, value, (dict,), {}).items():
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or not (math.isfinite(v) and v >= 0)
        ):
            reader.problem(f"{where}.{g}", f"must be a learning rate >= 0, got {v!r}")
        else:
            fixed[g] = float(v)
    return fixed


def weight_decay(
    reader: Reader, where: str, value: Any, seen: Seen
) -> float | tuple[float, float] | None:
    """A fixed weight decay (a number), or a searched range (a pair)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0 or not math.isfinite(value):
            reader.problem(where, f"must be >= 0, got {value!r}")
            return None
        return float(value)
    if isinstance(value, list):
        return reader.pair(where, value, (1e-6, 1e-1))
    reader.problem(
        where, f"must be a number >= 0 (fixed) or a [low, high] pair (searched), got {value!r}"
    )
    return None


def study_name(seen: Seen) -> Iterable[tuple[str, str]]:
    """A name Optuna's schema can store (lrsearch.limits)."""
    problem = study_name_problem(seen.values["name"]) if "name" in seen.present else None
    return [("name", problem)] if problem else []


def grace_after_interval(seen: Seen) -> Iterable[tuple[str, str]]:
    """A live trial must not count as lost between two heartbeats."""
    interval, grace = seen.values["heartbeat_interval"], seen.values["grace_period"]
    # A bad interval is reported once, not again as the grace period's bound.
    if "heartbeat_interval" in seen.bad or grace > interval:
        return []
    return [
        (
            "grace_period",
            f"must be > heartbeat_interval ({interval}), got {grace}; two or three intervals "
            "leave room for a late heartbeat",
        )
    ]


def entry_point(entry: str) -> str | None:
    """``package.module:function``, the way user code is named."""
    if entry and not _ENTRY.match(entry):
        return f"must look like 'package.module:function', got {entry!r}"
    return None


def prefix_only_with_freeze(seen: Seen) -> Iterable[tuple[str, str]]:
    """``freeze_mode = "prefix"`` chooses among the freeze groups, so there must be some."""
    if seen.values["freeze_mode"] == "prefix" and not seen.values["freeze"]:
        return [
            (
                "freeze_mode",
                "'prefix' chooses how many of the freeze groups to freeze, but freeze names "
                "none; list the lowest groups in freeze, or remove freeze_mode",
            )
        ]
    return []


def fixed_or_frozen(seen: Seen) -> Iterable[tuple[str, str]]:
    """A group is fixed or searched (freezing is searched), not both."""
    both = set(seen.values["freeze"]) & set(seen.values["fixed"])
    return [(f"fixed.{g}", "is also in freeze; a group is fixed or searched") for g in sorted(both)]


def below_one(warmup: float) -> str | None:
    """A fraction of the steps."""
    return f"must be < 1 (a fraction of the steps), got {warmup}" if warmup >= 1.0 else None


def auto_or_bool(value: bool | str) -> str | None:
    """``true``, ``false`` or ``"auto"``."""
    if isinstance(value, str) and value != "auto":
        return f'must be true, false or "auto"; got {value!r}'
    return None


def non_empty_path(value: str) -> str | None:
    """A folder's path, not blank."""
    return None if value.strip() else "must be a directory path, got an empty string"


def cache_dir_needs_cache(seen: Seen) -> Iterable[tuple[str, str]]:
    """A cache folder without the prefix cache is a mistake worth saying."""
    # cache_mb is not checked so: a spec's to_dict writes its default back.
    if seen.values["cache_dir"] is not None and not seen.values["prefix_cache"]:
        return [("cache_dir", "has no effect unless prefix_cache = true; set it or remove it")]
    return []


def compile_needs_one_at_a_time(seen: Seen) -> Iterable[tuple[str, str]]:
    """torch.compile wraps one model's forward; stacked trials run under vmap instead."""
    if seen.values["compile"] and seen.values["batch_trials"] > 1:
        return [
            (
                "compile",
                "compiles trials trained one at a time, and batch_trials > 1 stacks them under "
                "vmap; set compile = false or batch_trials = 1",
            )
        ]
    return []


def group_needs_multivariate(seen: Seen) -> Iterable[tuple[str, str]]:
    """TPE's group decomposition is a mode of its multivariate model."""
    if seen.values["group"] and not seen.values["multivariate"]:
        return [
            (
                "group",
                "group decomposition is a mode of multivariate TPE; set multivariate = true or "
                "group = false",
            )
        ]
    return []

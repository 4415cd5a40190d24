"""An exported optimizer config, read back and applied to a user's model, with torch alone.

A user's training script imports this module (``from lrsearch.config import build_optimizer``,
or ``lrsearch.build_optimizer``), so it imports neither Optuna nor SQLAlchemy: only torch and
lrsearch's own torch-only ``groups``. ``lrsearch.export`` writes the documents this module reads.

Example:
    >>> from lrsearch.config import build_optimizer
    >>> optimizer = build_optimizer(model, "best.json")
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrsearch.errors import ExportError, GroupError
from lrsearch.groups import build_param_groups, make_optimizer, resolve_groups

SCHEMA = "lrsearch/optimizer-config/v1"
# The optimizers a config may name: lower-case spec name -> torch.optim class name.
OPTIMIZER_NAMES = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD"}


def load_config(config: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Read and check an exported config (a path to its JSON, or the dict itself).

    Args:
        config: A path to a file ``lrsearch export`` wrote, or the dict it holds.

    Returns:
        The config as a dict (``optimizer``, ``train``, ``groups``, ...), every problem checked.

    Raises:
        ExportError: The file is missing, not JSON, of another schema, or malformed (every
            problem of a malformed one named at once).
    """
    if isinstance(config, Mapping):
        data = dict(config)
        source = "config"
    else:
        source = str(config)
        try:
            text = Path(config).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ExportError(
                f"{source}: file not found; export one with `lrsearch export`"
            ) from None
        except UnicodeDecodeError:
            raise ExportError(f"{source}: not JSON (not UTF-8 text)") from None
        except OSError as e:
            raise ExportError(f"{source}: cannot read the file: {e.strerror or e}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ExportError(f"{source}: not JSON ({e})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        got = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ExportError(f"{source}: schema must be {SCHEMA!r}, got {got!r}")
    problems = []
    groups = data.get("groups")
    if not isinstance(groups, list) or not groups:
        problems.append("'groups' must be a non-empty list")
        groups = []
    names: list[str] = []
    for i, g in enumerate(groups):
        ok = (
            isinstance(g, dict)
            and isinstance(g.get("name"), str)
            and bool(g["name"])
            and isinstance(g.get("match"), list)
            and bool(g["match"])
            and all(isinstance(p, str) and p for p in g["match"])
            and _is_rate(g.get("lr"))
        )
        if not ok:
            problems.append(
                f"groups[{i}] must have a name, match (a non-empty list of patterns) and a finite "
                f"lr >= 0, got {g!r}"
            )
        elif g["name"] in names:
            problems.append(f"groups[{i}]: group name {g['name']!r} is used twice")
        else:
            names.append(g["name"])
    opt = data.get("optimizer")
    if not isinstance(opt, dict) or str(opt.get("name", "")).lower() not in OPTIMIZER_NAMES:
        problems.append(f"optimizer.name must be one of {', '.join(OPTIMIZER_NAMES.values())}")
    elif not isinstance(opt.get("kwargs", {}), dict):
        problems.append("optimizer.kwargs must be an object")
    if not isinstance(data.get("train", {}), dict):
        problems.append("train must be an object")
    if problems:
        raise ExportError(f"{source}: " + "; ".join(problems))
    return data


def _is_rate(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value) and value >= 0
    except OverflowError:  # an int too large for a float
        return False


def build_optimizer(
    model: nn.Module, config: str | Path | Mapping[str, Any]
) -> torch.optim.Optimizer:
    """Apply an exported config to ``model``: freeze its frozen groups and build the optimizer.

    Args:
        model: The user's model; its trainable parameters must match the exported groups exactly.
        config: A path to an exported JSON file, or the dict itself.

    Returns:
        The optimizer with one param group per trained group (its ``name`` and ``lr`` set).

    Raises:
        ExportError: The config is invalid or the model's parameters do not match its groups (the
            message names the parameters). The model is left as it was.
    """
    data = load_config(config)
    groups = [(g["name"], g["match"]) for g in data["groups"]]
    lrs = {g["name"]: float(g["lr"]) for g in data["groups"]}
    # build_param_groups freezes as it goes; on any error, give the model back as it came.
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        return _build(model, groups, lrs, data["optimizer"])
    except BaseException:
        for p in trainable:
            p.requires_grad_(True)
        raise


def _build(
    model: nn.Module,
    groups: list[tuple[str, list[str]]],
    lrs: dict[str, float],
    opt: dict[str, Any],
) -> torch.optim.Optimizer:
    try:
        resolved = resolve_groups(model, groups)
        param_groups = build_param_groups(model, resolved, lrs)
        if not param_groups:
            raise ExportError("every group is frozen in this config; there is nothing to optimize")
        return make_optimizer(opt["name"], param_groups, **dict(opt.get("kwargs", {})))
    except GroupError as e:
        raise ExportError(f"the model does not match the exported groups: {e}") from e
    except (TypeError, ValueError) as e:
        raise ExportError(f"optimizer {opt!r} rejected its kwargs: {e}") from e

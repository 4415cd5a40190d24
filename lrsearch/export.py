"""The winning configuration, out of the study and into a user's own training script.

``export_config`` turns a trial into a versioned JSON document (schema
``lrsearch/optimizer-config/v1``): the optimizer, and per group its name, the patterns that define
it, its rate and whether it is frozen. ``build_optimizer(model, config)`` reads that document back
and builds the same param groups on the user's model; ``to_python`` writes a standalone snippet that
does the same with torch alone.

Example:
    >>> optimizer = lrsearch.build_optimizer(model, "best.json")
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from lrsearch.errors import ExportError, GroupError, LrsearchError
from lrsearch.groups import build_param_groups, make_optimizer, resolve_groups
from lrsearch.pick import Rule, numbered, pick
from lrsearch.storage import GROUPS_ATTR, load_study, stored_spec, trial_info

SCHEMA = "lrsearch/optimizer-config/v1"
_OPTIMIZER_NAMES = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD"}


def pick_trial(
    study: optuna.Study, number: int | None = None, rule: Rule | None = None
) -> optuna.trial.FrozenTrial:
    """Trial ``number``, which must be complete, or the one ``rule`` picks (default: the best).

    Raises:
        ExportError: No complete trial, no such trial, the trial is not complete, or no trial meets
            ``rule``.
    """
    trials = study.get_trials(deepcopy=False)
    try:
        if number is None:
            maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
            return pick(trials, maximize=maximize, rule=rule)
        return numbered(trials, number, study=study.study_name, use="export")
    except LrsearchError as e:
        where = f"study {study.study_name!r}: " if number is None else ""
        raise ExportError(f"{where}{e}") from None


def export_config(
    storage: optuna.storages.BaseStorage,
    study_name: str,
    trial: int | None = None,
    *,
    rule: Rule | None = None,
) -> dict[str, Any]:
    """The optimizer config of a trial (default: the best, or the one ``rule`` picks) as JSON-ready
    data.

    Raises:
        StorageError: No such study, or not an lrsearch study.
        ExportError: No such complete trial.
    """
    study = load_study(storage, study_name)
    spec = stored_spec(study)
    chosen = pick_trial(study, trial, rule)
    info = trial_info(chosen)
    lrs: dict[str, float] = info["lrs"]
    patterns: dict[str, list[str]] = study.user_attrs.get(GROUPS_ATTR) or {
        g: list(p) for g, p in spec.groups.patterns
    }
    missing = [g for g in lrs if g not in patterns]
    if not lrs or missing:
        raise ExportError(
            f"trial {chosen.number} of study {study_name!r} has no stored rates for groups "
            f"{missing or list(patterns)}; it was not run by lrsearch"
        )
    kwargs: dict[str, Any] = {}
    if info["weight_decay"] is not None:
        kwargs["weight_decay"] = info["weight_decay"]
    if spec.train.optimizer == "sgd":
        kwargs["momentum"] = spec.train.momentum
    return {
        "schema": SCHEMA,
        "study": study_name,
        "trial": chosen.number,
        "value": chosen.values[0],
        "direction": study.directions[0].name.lower(),
        "optimizer": {"name": _OPTIMIZER_NAMES[spec.train.optimizer], "kwargs": kwargs},
        "train": {
            "epochs": spec.train.epochs,
            "max_steps": spec.train.max_steps,
            "batch_size": spec.train.batch_size,
            "schedule": spec.train.schedule,
            "warmup_ratio": spec.train.warmup_ratio,
            "grad_clip": spec.train.grad_clip,
            "freeze_batchnorm": spec.train.freeze_batchnorm,
        },
        "groups": [
            {"name": g, "match": patterns[g], "lr": float(lr), "frozen": lr == 0}
            for g, lr in lrs.items()
        ],
    }


def load_config(config: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Read and check an exported config (a path to its JSON, or the dict itself).

    Raises:
        ExportError: The file is missing, not JSON, of another schema, or malformed.
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
    if not isinstance(opt, dict) or str(opt.get("name", "")).lower() not in _OPTIMIZER_NAMES:
        problems.append(f"optimizer.name must be one of {', '.join(_OPTIMIZER_NAMES.values())}")
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


_SNIPPET = '''\
# Optimizer config exported by lrsearch: study {study}, trial {trial}, value {value}.
"""Optimizer config exported by lrsearch.

Needs only torch. Usage:
    optimizer = build_optimizer(model)
Frozen groups get requires_grad=False and stay out of the optimizer.{bn_note}
"""

from fnmatch import fnmatchcase

import torch

# (group, patterns, lr); lr 0 = frozen. A parameter goes to the first group that matches.
GROUPS = [
{groups}
]
OPTIMIZER = torch.optim.{optimizer}
OPTIMIZER_KWARGS = {kwargs!r}


def _matches(name, pattern):
    if any(c in pattern for c in "*?["):
        return fnmatchcase(name, pattern)
    return name == pattern or name.startswith(pattern + ".")


def build_param_groups(model):
    members = {{name: [] for name, _, _ in GROUPS}}
    unmatched = []
    for pname, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = next((g for g, pats, _ in GROUPS if any(_matches(pname, p) for p in pats)), None)
        if group is None:
            unmatched.append(pname)
        else:
            members[group].append(param)
    if unmatched:
        raise ValueError(f"parameters match no exported group: {{unmatched[:5]}}")
    empty = [g for g, pats, _ in GROUPS if not members[g] and list(pats) != ["*"]]
    if empty:
        raise ValueError(f"exported groups match no parameter of this model: {{empty}}")
    param_groups = []
    for name, _, lr in GROUPS:
        if lr == 0:
            for param in members[name]:
                param.requires_grad_(False)
        elif members[name]:
            param_groups.append({{"params": members[name], "lr": lr, "name": name}})
    return param_groups


def build_optimizer(model):
    return OPTIMIZER(build_param_groups(model), **OPTIMIZER_KWARGS)
'''


def to_python(config: Mapping[str, Any]) -> str:
    """A standalone Python snippet (torch only) that builds the same optimizer as the config."""
    data = load_config(config)
    rows = "\n".join(
        f"    ({g['name']!r}, {list(g['match'])!r}, {float(g['lr'])!r})," for g in data["groups"]
    )
    bn = ""
    if data.get("train", {}).get("freeze_batchnorm") and any(g["lr"] == 0 for g in data["groups"]):
        bn = (
            "\nThe search kept BatchNorm layers of frozen groups in eval mode (pretrained running "
            "statistics):\ncall .eval() on them after each model.train() to train the same way."
        )
    # In a comment, as repr: a study name can hold quotes, backslashes or newlines.
    return _SNIPPET.format(
        study=repr(data.get("study")),
        trial=repr(data.get("trial")),
        value=repr(data.get("value")),
        bn_note=bn,
        groups=rows,
        optimizer=_OPTIMIZER_NAMES[str(data["optimizer"]["name"]).lower()],
        kwargs=dict(data["optimizer"].get("kwargs", {})),
    )

"""The winning configuration, out of the study and into a user's own training script.

``export_config`` turns a trial into a versioned JSON document (schema
``lrsearch/optimizer-config/v1``): the optimizer, and per group its name, the patterns that define
it, its rate and whether it is frozen. ``lrsearch.config.build_optimizer(model, config)`` reads that
document back and builds the same param groups on the user's model (without this module's Optuna
and SQLAlchemy); ``to_python`` writes a standalone snippet that does the same with torch alone.

Example:
    >>> config = export_config(open_storage(url), "quickstart")
    >>> optimizer = lrsearch.build_optimizer(model, config)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from lrsearch.config import OPTIMIZER_NAMES, SCHEMA, load_config
from lrsearch.errors import ExportError, LrsearchError
from lrsearch.pick import Rule, numbered, pick, rank_seeded
from lrsearch.retrain.records import describe, seed_values
from lrsearch.schema import GROUPS_ATTR
from lrsearch.spec import TrainSection
from lrsearch.storage import load_study, stored_spec, trial_info


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
            return pick(trials, maximize=maximize, rule=rule, seeds=seed_values(study))
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
    config: dict[str, Any] = {
        "schema": SCHEMA,
        "study": study_name,
        "trial": chosen.number,
        "value": chosen.values[0],
        "direction": study.directions[0].name.lower(),
        "optimizer": {"name": OPTIMIZER_NAMES[spec.train.optimizer], "kwargs": kwargs},
        "train": {k: getattr(spec.train, k) for k in _TRAIN_KEYS},
        "groups": [
            {"name": g, "match": patterns[g], "lr": float(lr), "frozen": lr == 0}
            for g, lr in lrs.items()
        ],
    }
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    seeded = rank_seeded(study.get_trials(deepcopy=False), seed_values(study), maximize=maximize)
    if trial is None and seeded:
        # The winner was ranked by its mean over seeds (lrsearch confirm): say so, with the mean.
        config["selection"] = describe(seeded)
        mine = [x for x in seeded if x.trial.number == chosen.number]
        if mine:
            config["mean"], config["n_seeds"] = mine[0].mean, len(mine[0].values)
    return config


_SNIPPET = '''\
# Optimizer config exported by lrsearch: study {study}, trial {trial}, value {value}.
"""Optimizer config exported by lrsearch: the trial's param groups, schedule and training settings.

Needs only torch. Usage (steps_per_epoch: optimizer steps per epoch, e.g. len(train_loader)):
    optimizer = build_optimizer(model)
    scheduler = build_scheduler(optimizer, steps_per_epoch)   # scheduler.step() after each step
    norms = frozen_batchnorms(model)   # call .eval() on each after every model.train()
    for epoch in range(TRAIN["epochs"]): ...   # at most total_steps(steps_per_epoch) steps
Frozen groups get requires_grad=False and stay out of the optimizer. The schedule multiplies
each group's own rate by one factor: never set one lr for all groups: it erases the search.{bn_note}
"""

import math
from fnmatch import fnmatchcase

import torch

# (group, patterns, lr); lr 0 = frozen. A parameter goes to the first group that matches.
GROUPS = [
{groups}
]
OPTIMIZER = torch.optim.{optimizer}
OPTIMIZER_KWARGS = {kwargs!r}
# What the trial trained with: epochs, max_steps (a cap on optimizer steps, or None), batch_size,
# schedule (constant | warmup_cosine | warmup_linear), warmup_ratio, grad_clip (max gradient norm,
# or None) and freeze_batchnorm (BatchNorm layers of frozen groups kept in eval mode).
TRAIN = {train!r}


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


def total_steps(steps_per_epoch):
    """The trial's optimizer steps: epochs x steps per epoch, capped by max_steps."""
    total = TRAIN["epochs"] * steps_per_epoch
    return total if TRAIN["max_steps"] is None else min(total, TRAIN["max_steps"])


def lr_factor(total):
    """The factor on each group's own rate at step k (0-based) of ``total`` steps."""
    warmup = round(TRAIN["warmup_ratio"] * total)

    def factor(step):
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if TRAIN["schedule"] == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if TRAIN["schedule"] == "warmup_linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))  # warmup_cosine

    return factor


def build_scheduler(optimizer, steps_per_epoch):
    """The trial's schedule as a LambdaLR; call scheduler.step() after every optimizer.step()."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(total_steps(steps_per_epoch)))


def frozen_batchnorms(model):
    """BatchNorm layers the trial kept in eval mode (call after build_optimizer)."""
    if not TRAIN["freeze_batchnorm"]:
        return []
    nn = torch.nn
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    return [
        m
        for m in model.modules()
        if isinstance(m, norms)
        and list(m.parameters(recurse=False))
        and not any(p.requires_grad for p in m.parameters(recurse=False))
    ]
'''

# The training settings exported with a trial (``train``), and those of lrsearch's [train] defaults
# for a config written before ``train`` existed.
_TRAIN_KEYS = (
    "epochs",
    "max_steps",
    "batch_size",
    "schedule",
    "warmup_ratio",
    "grad_clip",
    "freeze_batchnorm",
)
_TRAIN_DEFAULTS = {k: getattr(TrainSection(), k) for k in _TRAIN_KEYS}


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
        value=repr(data.get("value")) + (f"; {data['selection']}" if data.get("selection") else ""),
        bn_note=bn,
        groups=rows,
        optimizer=OPTIMIZER_NAMES[str(data["optimizer"]["name"]).lower()],
        kwargs=dict(data["optimizer"].get("kwargs", {})),
        train={
            **_TRAIN_DEFAULTS,
            **{k: v for k, v in (data.get("train") or {}).items() if k in _TRAIN_KEYS},
        },
    )

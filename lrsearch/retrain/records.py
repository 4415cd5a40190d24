"""What retraining stores with a study, read and written without torch.

Every retraining run of a trial (``verify``'s and ``confirm``'s) is kept in one study user
attribute per trial, ``lrsearch.verify.<trial>`` (schema ``lrsearch/verify/v1``): the trial's
rates and one entry per run (seed, value, outcome, seconds, device, host, UTC timestamp).
Seeds are ``10000, 10001, ...``, skipping any seed a trial of the search trained with, so a
retraining is out of sample. A confirmed study also names its confirmed trials in the
study attribute ``lrsearch.confirm``; :func:`seed_values` gives ``lrsearch.pick`` their values.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import optuna

from lrsearch import _optuna_compat as compat
from lrsearch.pick import Seeded, metric, pooled_sd
from lrsearch.schema import CONFIRM_ATTR
from lrsearch.storage import stored_spec

__all__ = [
    "ATTR_PREFIX",
    "SCHEMA",
    "SEED_BASE",
    "RunCallback",
    "describe",
    "search_seeds",
    "seed_values",
    "store_run",
    "stored_runs",
    "stored_values",
    "stored_verifications",
    "summarize",
    "verify_attr",
    "verify_seeds",
]

ATTR_PREFIX = "lrsearch.verify."
SCHEMA = "lrsearch/verify/v1"
# Far above the seeds of any realistic search (study seed + trial number), and skipped if not.
SEED_BASE = 10_000

RunCallback = Callable[[str, int, dict[str, Any]], None]


def verify_attr(trial: int) -> str:
    """The study user attribute that holds the verification runs of ``trial``."""
    return f"{ATTR_PREFIX}{trial}"


def stored_verifications(study: optuna.Study) -> dict[int, dict[str, Any]]:
    """Every verification stored with ``study``, by trial number (no training, no torch)."""
    out: dict[int, dict[str, Any]] = {}
    for key, value in study.user_attrs.items():
        number = key[len(ATTR_PREFIX) :]
        if key.startswith(ATTR_PREFIX) and number.isdigit() and isinstance(value, dict):
            out[int(number)] = value
    return out


def verify_seeds(k: int, taken: set[int]) -> list[int]:
    """The first ``k`` verification seeds: ``SEED_BASE`` upwards, skipping ``taken``."""
    seeds: list[int] = []
    seed = SEED_BASE
    while len(seeds) < k:
        if seed not in taken:
            seeds.append(seed)
        seed += 1
    return seeds


def summarize(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max of the finite values; failures counted apart.

    ``std`` is ``None`` with fewer than two finite values (one seed has no spread).
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {
        "n": len(finite),
        "failed": len(values) - len(finite),
        "mean": statistics.fmean(finite) if finite else None,
        "std": statistics.stdev(finite) if len(finite) > 1 else None,
        "min": min(finite) if finite else None,
        "max": max(finite) if finite else None,
    }


def search_seeds(study: optuna.Study, trials: Sequence[optuna.trial.FrozenTrial]) -> set[int]:
    """The seeds the search's trials trained with (``[study] seed`` + trial number)."""
    base = stored_spec(study).study.seed or 0
    return {base + t.number for t in trials}


def stored_values(
    storage: optuna.storages.BaseStorage, study: optuna.Study, trial: int
) -> list[float | None]:
    """The values of every run stored for ``trial`` (``None`` for one that failed or diverged)."""
    return [r.get("value") for r in stored_runs(storage, study, verify_attr(trial))]


def stored_runs(
    storage: optuna.storages.BaseStorage, study: optuna.Study, attr: str
) -> list[dict[str, Any]]:
    # Read from the storage, not the study object: another `verify` may have stored runs since.
    record = storage.get_study_user_attrs(compat.study_id(study)).get(attr)
    if not isinstance(record, dict) or not isinstance(record.get("runs"), list):
        return []
    return [r for r in record["runs"] if isinstance(r, dict) and isinstance(r.get("seed"), int)]


def store_run(
    storage: optuna.storages.BaseStorage,
    study: optuna.Study,
    trial: optuna.trial.FrozenTrial,
    info: dict[str, Any],
    search_seed: int,
    run: dict[str, Any],
) -> None:
    """Add ``run`` to the trial's record, after each run: an interrupted verify keeps its work."""
    attr = verify_attr(trial.number)
    # Re-read just before writing, so runs another process stored meanwhile are kept.
    runs = [r for r in stored_runs(storage, study, attr) if r["seed"] != run["seed"]]
    record = {
        "schema": SCHEMA,
        "trial": trial.number,
        "lrs": dict(info["lrs"]),
        "weight_decay": info["weight_decay"],
        "search_value": metric(trial),
        "search_seed": search_seed + trial.number,
        "runs": sorted([*runs, run], key=lambda r: r["seed"]),
    }
    storage.set_study_user_attr(compat.study_id(study), attr, record)


def seed_values(
    study: optuna.Study, storage: optuna.storages.BaseStorage | None = None
) -> dict[int, list[float | None]]:
    """Each confirmed trial's retrained values (``{}``: the study was never confirmed)."""
    record = study.user_attrs.get(CONFIRM_ATTR)
    if not isinstance(record, dict):
        return {}
    store = storage if storage is not None else compat.study_storage(study)
    numbers = [n for n in record.get("trials", []) if isinstance(n, int)]
    return {n: stored_values(store, study, n) for n in numbers}


def describe(seeded: list[Seeded]) -> str:
    """One line saying how the winner was ranked, for ``best``, ``export`` and ``report``."""
    best = seeded[0]
    sd = pooled_sd(seeded)
    spread = "" if sd is None else f"; one seed's sd {sd:.3g}"
    return (
        f"ranked by the mean over seeds (lrsearch confirm): {len(seeded)} trial(s) retrained; "
        f"trial {best.trial.number} has mean {best.mean:.4g} over {len(best.values)} seed(s)"
        f"{spread}"
    )

"""lrsearch: search per-group learning rates (and freezing) for fine-tuning PyTorch models.

Public names are imported on first use, so ``import lrsearch`` (and the CLI's start) does not pay
for torch and Optuna until something needs them.

Example:
    >>> import lrsearch
    >>> optimizer = lrsearch.build_optimizer(model, "best.json")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "LrsearchError": "errors",
    "SpecError": "errors",
    "TaskError": "errors",
    "UntrustedTaskError": "errors",
    "GroupError": "errors",
    "StorageError": "errors",
    "StorageUnavailable": "errors",
    "StudyNotFoundError": "errors",
    "StudyMismatchError": "errors",
    "ExportError": "errors",
    "StudySpec": "spec",
    "load_spec": "spec",
    "LayerGroups": "groups",
    "resolve_groups": "groups",
    "build_param_groups": "groups",
    "make_optimizer": "groups",
    "Sample": "space",
    "SearchSpace": "space",
    "Task": "tasks",
    "TensorClassificationTask": "tasks",
    "load_task": "tasks",
    "TrainResult": "training",
    "train_trial": "training",
    "mask_url": "storage",
    "open_storage": "storage",
    "SearchSummary": "search",
    "TrialOutcome": "search",
    "run_search": "search",
    "run_worker": "search",
    "load_trials": "analysis",
    "export_config": "export",
    "to_python": "export",
    # Torch only: what a user's training script imports (no Optuna, no SQLAlchemy).
    "load_config": "config",
    "build_optimizer": "config",
    "verify_trial": "verify",
    "confirm_study": "retrain",
    "BestConfig": "notebook",
}

__all__ = [
    "BestConfig",
    "ExportError",
    "GroupError",
    "LayerGroups",
    "LrsearchError",
    "Sample",
    "SearchSpace",
    "SearchSummary",
    "SpecError",
    "StorageError",
    "StorageUnavailable",
    "StudyMismatchError",
    "StudyNotFoundError",
    "StudySpec",
    "Task",
    "TaskError",
    "TensorClassificationTask",
    "TrainResult",
    "TrialOutcome",
    "UntrustedTaskError",
    "__version__",
    "build_optimizer",
    "build_param_groups",
    "confirm_study",
    "export_config",
    "load_config",
    "load_spec",
    "load_task",
    "load_trials",
    "make_optimizer",
    "mask_url",
    "open_storage",
    "resolve_groups",
    "run_search",
    "run_worker",
    "search",
    "to_python",
    "train_trial",
    "verify_trial",
]


def __getattr__(name: str) -> Any:
    if name == "search":
        # The module of the search loop, callable as the notebook API (lrsearch.notebook.search):
        # importing it sets this attribute anyway, so it is the one object either way.
        return importlib.import_module("lrsearch.search")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lrsearch' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lrsearch.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from lrsearch.analysis import load_trials
    from lrsearch.config import build_optimizer, load_config
    from lrsearch.errors import (
        ExportError,
        GroupError,
        LrsearchError,
        SpecError,
        StorageError,
        StudyMismatchError,
        StudyNotFoundError,
        TaskError,
        UntrustedTaskError,
    )
    from lrsearch.export import export_config, to_python
    from lrsearch.groups import LayerGroups, build_param_groups, make_optimizer, resolve_groups
    from lrsearch.notebook import BestConfig, search
    from lrsearch.retrain import confirm_study
    from lrsearch.search import SearchSummary, TrialOutcome, run_search, run_worker
    from lrsearch.space import Sample, SearchSpace
    from lrsearch.spec import StudySpec, load_spec
    from lrsearch.storage import mask_url, open_storage
    from lrsearch.tasks import Task, TensorClassificationTask, load_task
    from lrsearch.training import TrainResult, train_trial
    from lrsearch.verify import verify_trial

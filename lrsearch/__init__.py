"""lrsearch: search per-group learning rates (and freezing) for fine-tuning PyTorch models."""

from __future__ import annotations

from lrsearch.errors import (
    ExportError,
    GroupError,
    LrsearchError,
    SpecError,
    StorageError,
    StudyMismatchError,
    StudyNotFoundError,
    TaskError,
)
from lrsearch.export import build_optimizer, export_config, load_config, to_python
from lrsearch.groups import LayerGroups, build_param_groups, make_optimizer, resolve_groups
from lrsearch.search import SearchSummary, TrialOutcome, run_search
from lrsearch.space import Sample, SearchSpace
from lrsearch.spec import StudySpec, load_spec
from lrsearch.storage import mask_url, open_storage
from lrsearch.tasks import Task, TensorClassificationTask, load_task
from lrsearch.trainer import TrainResult, train_trial

__version__ = "0.1.0"

__all__ = [
    "ExportError",
    "GroupError",
    "LayerGroups",
    "LrsearchError",
    "Sample",
    "SearchSpace",
    "SearchSummary",
    "SpecError",
    "StorageError",
    "StudyMismatchError",
    "StudyNotFoundError",
    "StudySpec",
    "Task",
    "TaskError",
    "TensorClassificationTask",
    "TrainResult",
    "TrialOutcome",
    "__version__",
    "build_optimizer",
    "build_param_groups",
    "export_config",
    "load_config",
    "load_spec",
    "load_task",
    "make_optimizer",
    "mask_url",
    "open_storage",
    "resolve_groups",
    "run_search",
    "to_python",
    "train_trial",
]

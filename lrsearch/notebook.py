"""``lrsearch.search``: a per-group search from Python, on a model and data already in memory.

The notebook API builds a study spec from keyword arguments, checks it with the study-file reader
(the same errors as a bad study file), wraps the model and data in a task and runs the ordinary
search loop (:func:`lrsearch.search.run_search`): the same storage, budget, pruning and trial
records as ``lrsearch run``. It returns the best trial as a :class:`BestConfig`.

What it accepts as ``train`` and ``val``:

- ``(X, y)``: two tensors with the examples along dimension 0 (a
  :class:`~lrsearch.tasks.TensorClassificationTask`, batched by slicing);
- a map-style ``torch.utils.data.Dataset`` whose items are ``(input, target)``;
- a ``torch.utils.data.DataLoader`` over such a dataset: its dataset and ``collate_fn`` are used,
  batched at ``[train] batch_size`` and shuffled with each trial's seed (its own batch size,
  sampler and worker processes are not).

The study stores its task entry for other processes to re-import, but an in-memory model cannot be
imported: the entry is :func:`in_process`, which says so. Such a study is searched in this process
only (resume it by calling ``search`` again with the same objects); ``best``, ``export``,
``trials`` and ``report`` read it like any other, while ``worker`` and ``verify`` stop with that
one-line error.

Example:
    >>> best = lrsearch.search(make_model, (x_train, y_train), (x_val, y_val),
    ...                        groups={"body": ["body.*"], "head": ["head"]}, n_trials=20)
    >>> optimizer = best.build_optimizer(make_model())
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from lrsearch.errors import TaskError
from lrsearch.tasks import Batch, Task, TensorClassificationTask

ENTRY = "lrsearch.notebook:in_process"
DEFAULT_STUDY = "notebook"

Data = tuple[torch.Tensor, torch.Tensor] | Dataset[Any] | DataLoader[Any]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MetricFn = Callable[[torch.Tensor, torch.Tensor], float]


def in_process(**kwargs: Any) -> Task:
    """The stored task entry of a ``lrsearch.search`` study: it cannot be rebuilt elsewhere.

    Raises:
        TaskError: Always, naming what to do instead.
    """
    raise TaskError(
        "this study was run from Python with lrsearch.search() on an in-memory model and data "
        f"({kwargs.get('model_fn', 'a model_fn')}), which another process cannot import; resume "
        "it by calling lrsearch.search() again with the same objects, or name a task module in a "
        "study file ([task] entry, README 'Your own task') to use `lrsearch worker` or `verify`"
    )


@dataclass(frozen=True)
class BestConfig:
    """The best trial of a ``lrsearch.search`` study, ready to train with.

    Attributes:
        study: The study's name.
        trial: The best trial's number.
        value: Its metric on the validation data.
        lrs: Each group's learning rate (0 = frozen), in the groups' order.
        weight_decay: The trial's weight decay (``None``: the optimizer's default).
        config: The exported config (``lrsearch export``'s JSON, schema
            ``lrsearch/optimizer-config/v1``), with the ``train`` settings the trial used.
        summary: What this call's search did (``lrsearch.SearchSummary``).
    """

    study: str
    trial: int
    value: float
    lrs: dict[str, float]
    weight_decay: float | None
    config: dict[str, Any]
    summary: Any = field(repr=False)

    @property
    def frozen(self) -> list[str]:
        """The groups the trial froze (lr 0)."""
        return [g for g, lr in self.lrs.items() if lr == 0]

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The trial's optimizer on ``model`` (frozen groups get ``requires_grad=False``).

        Raises:
            ExportError: ``model`` does not have the searched model's parameters.
        """
        from lrsearch.config import build_optimizer

        return build_optimizer(model, self.config)

    def to_python(self) -> str:
        """A standalone, torch-only snippet of the config (``lrsearch export --format python``)."""
        from lrsearch.export import to_python

        return to_python(self.config)


def search(
    model_fn: Callable[[], nn.Module],
    train: Data,
    val: Data,
    *,
    groups: Mapping[str, str | Sequence[str]] | None = None,
    auto_depth: int | None = None,
    n_trials: int = 20,
    storage: str | None = None,
    study: str = DEFAULT_STUDY,
    space: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    pruner: Mapping[str, Any] | None = None,
    sampler: Mapping[str, Any] | None = None,
    seed: int | None = 0,
    timeout: float | None = None,
    loss: LossFn | None = None,
    metric: MetricFn | None = None,
    direction: Literal["maximize", "minimize"] | None = None,
    device: str | None = None,
    threads: int | None = None,
) -> BestConfig:
    """Search a learning rate (or freezing) per group of ``model_fn()``'s parameters.

    Args:
        model_fn: Returns a fresh model (pretrained weights loaded); called once per trial.
        train: Training data: ``(X, y)`` tensors, a map-style ``Dataset`` of ``(input, target)``
            items, or a ``DataLoader`` over one (its dataset and ``collate_fn`` are used).
        val: Validation data, in the same forms; the metric is computed on all of it.
        groups: Group name to parameter patterns, in order (``[groups]`` of a study file).
        auto_depth: Instead of ``groups``: one group per module path of that depth.
        n_trials: The study's budget of finished trials (``[study] n_trials``).
        storage: Storage URL (default as for the CLI: ``$LRSEARCH_STORAGE``, then
            ``sqlite:///lrsearch.db``).
        study: The study's name; calling again with the same name, storage and search resumes it.
        space, training, pruner, sampler: The ``[space]``, ``[train]``, ``[pruner]`` and
            ``[sampler]`` tables of a study file, as dicts (same keys and defaults).
        seed: ``[study] seed``.
        timeout: Seconds after which no new trial starts.
        loss: ``loss(outputs, targets)`` -> a scalar tensor; default cross-entropy.
        metric: ``metric(outputs, targets)`` -> a number, over the whole validation set (the
            outputs of every batch concatenated); default accuracy (argmax of the outputs).
        direction: ``maximize`` or ``minimize``; required with ``metric`` (accuracy: maximize).
        device: ``auto`` (default), ``cpu``, ``cuda``, ``cuda:N``.
        threads: Torch CPU threads, as ``lrsearch run --threads`` (default: one per physical
            core unless ``$OMP_NUM_THREADS`` is set).

    Returns:
        The best complete trial of the study (this call's trials and any before it).

    Raises:
        SpecError: A bad setting (every problem at once), as for a study file.
        TaskError: ``model_fn``, ``train`` or ``val`` is not of a kind listed above.
        LrsearchError: Groups that do not fit the model, a storage problem, a study of that name
            with a different search, or no complete trial.
    """
    from lrsearch.export import export_config
    from lrsearch.search import run_search
    from lrsearch.spec import StudySpec
    from lrsearch.storage import open_storage, resolve_url
    from lrsearch.threads import set_threads

    if not callable(model_fn):
        raise TaskError(f"model_fn must be a function returning a model, got {model_fn!r}")
    if metric is not None and direction is None:
        raise TaskError(
            "a custom metric needs direction='maximize' or 'minimize' (which way is better?)"
        )
    task = _task(model_fn, train, val, loss=loss, metric=metric, direction=direction)
    group_table: dict[str, Any] = {}
    if auto_depth is not None:
        group_table["auto_depth"] = auto_depth
    for name, patterns in (groups or {}).items():
        group_table[name] = [patterns] if isinstance(patterns, str) else list(patterns)
    study_table: dict[str, Any] = {"name": study, "n_trials": n_trials}
    for key, value in (("seed", seed), ("timeout", timeout), ("direction", direction)):
        if value is not None:
            study_table[key] = value
    data: dict[str, Any] = {
        "study": study_table,
        "task": {"entry": ENTRY, "kwargs": _describe(model_fn, train, val, loss, metric)},
        "groups": group_table,
    }
    for section, table in (
        ("space", space),
        ("train", training),
        ("pruner", pruner),
        ("sampler", sampler),
    ):
        if table is not None:
            data[section] = _as_toml(dict(table))
    spec = StudySpec.from_dict(data, source="lrsearch.search()")
    set_threads(threads)
    url = resolve_url(storage)
    summary = run_search(spec, storage=url, device=device, task=task)
    config = export_config(open_storage(url, create=False), study)
    lrs = {g["name"]: float(g["lr"]) for g in config["groups"]}
    return BestConfig(
        study=study,
        trial=int(config["trial"]),
        value=float(config["value"]),
        lrs=lrs,
        weight_decay=config["optimizer"]["kwargs"].get("weight_decay"),
        config=config,
        summary=summary,
    )


def _as_toml(value: Any) -> Any:
    """``value`` as the TOML reader has it: a tuple (``lr=(1e-4, 1e-1)``) is a list."""
    if isinstance(value, dict):
        return {k: _as_toml(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_as_toml(v) for v in value]
    return value


def _task(
    model_fn: Callable[[], nn.Module],
    train: Data,
    val: Data,
    *,
    loss: LossFn | None,
    metric: MetricFn | None,
    direction: Literal["maximize", "minimize"] | None,
) -> Task:
    """The task over ``train`` and ``val``: tensors are sliced, datasets collated per batch."""
    train_pair, val_pair = _pair(train, "train"), _pair(val, "val")
    common: dict[str, Any] = {
        "model_fn": model_fn,
        "loss_fn": loss,
        "metric": "metric" if metric is not None else "accuracy",
        "direction": direction or "maximize",
    }
    if train_pair is not None and val_pair is not None:
        if metric is None:
            return _TensorTask(
                x_train=train_pair[0],
                y_train=train_pair[1],
                x_val=val_pair[0],
                y_val=val_pair[1],
                **common,
            )
        return _TensorMetricTask(
            x_train=train_pair[0],
            y_train=train_pair[1],
            x_val=val_pair[0],
            y_val=val_pair[1],
            **common,
            metric_fn=metric,
        )
    return _DatasetTask(
        train=_dataset(train, "train"),
        val=_dataset(val, "val"),
        collate=_collate(train),
        val_collate=_collate(val),
        metric_fn=metric,
        **common,
    )


def _pair(data: Any, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not isinstance(data, (tuple, list)):
        return None
    if len(data) != 2 or not all(isinstance(t, torch.Tensor) for t in data):
        raise TaskError(
            f"{name} must be (X, y) with two tensors, a Dataset or a DataLoader; got a "
            f"{type(data).__name__} of {len(data)} item(s)"
        )
    x, y = data
    if x.dim() == 0 or y.dim() == 0 or len(x) != len(y) or len(x) == 0:
        raise TaskError(
            f"{name}: X and y must hold the same number (> 0) of examples along dimension 0, got "
            f"shapes {tuple(x.shape)} and {tuple(y.shape)}"
        )
    return x, y


def _dataset(data: Any, name: str) -> Dataset[Any]:
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if isinstance(dataset, IterableDataset) or not isinstance(dataset, Dataset):
        raise TaskError(
            f"{name} must be (X, y) tensors, a map-style Dataset (len() and [i]) or a DataLoader "
            f"over one; got {type(dataset).__name__}"
        )
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError as e:
        raise TaskError(f"{name}: the Dataset has no len(); give it __len__") from e
    if n == 0:
        raise TaskError(f"{name}: the Dataset is empty")
    return dataset


def _collate(data: Any) -> Callable[[list[Any]], Any]:
    if isinstance(data, DataLoader) and data.collate_fn is not None:
        return data.collate_fn
    return default_collate


def _describe(model_fn: Any, train: Any, val: Any, loss: Any, metric: Any) -> dict[str, str | int]:
    """What the study stores of the in-memory objects: enough to refuse resuming with others."""

    def name(fn: Any) -> str:
        return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"

    def data(d: Any) -> str:
        if isinstance(d, (tuple, list)):
            return ", ".join(f"{t.dtype} {tuple(t.shape)}" for t in d)
        dataset: Any = d.dataset if isinstance(d, DataLoader) else d
        return f"{type(dataset).__name__} of {len(dataset)}"

    out: dict[str, str | int] = {"model_fn": name(model_fn), "train": data(train), "val": data(val)}
    if loss is not None:
        out["loss"] = name(loss)
    if metric is not None:
        out["metric"] = name(metric)
    return out


def _accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return float((outputs.argmax(dim=-1) == targets).float().mean()) if len(targets) else 0.0


@dataclass
class _TensorTask(TensorClassificationTask):
    """``TensorClassificationTask`` with the loss given to ``search``."""

    loss_fn: LossFn | None = None

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        if self.loss_fn is None:
            return super().loss(model, batch)
        x, y = batch
        return self.loss_fn(model(x), y)


@dataclass
class _TensorMetricTask(_TensorTask):
    """... and the metric given to ``search``, over all validation outputs at once."""

    metric_fn: MetricFn | None = None

    def evaluate(self, model: nn.Module, batches: Iterable[Batch]) -> float:
        return _evaluate(model, batches, self.metric_fn or _accuracy)


def _evaluate(model: nn.Module, batches: Iterable[Batch], metric: MetricFn) -> float:
    outputs, targets = [], []
    for x, y in batches:
        outputs.append(model(x))
        targets.append(y)
    return float(metric(torch.cat(outputs), torch.cat(targets)))


@dataclass
class _DatasetTask:
    """A task over map-style datasets of ``(input, target)`` items, collated per batch."""

    model_fn: Callable[[], nn.Module]
    train: Dataset[Any]
    val: Dataset[Any]
    collate: Callable[[list[Any]], Any]
    val_collate: Callable[[list[Any]], Any]
    loss_fn: LossFn | None = None
    metric_fn: MetricFn | None = None
    metric: str = "accuracy"
    direction: Literal["maximize", "minimize"] = "maximize"

    def build_model(self) -> nn.Module:
        return self.model_fn()

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        order = torch.randperm(len(self.train), generator=generator)  # type: ignore[arg-type]
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size].tolist()
            yield self.collate([self.train[i] for i in idx])

    def val_batches(self, batch_size: int) -> Iterator[Batch]:
        n = len(self.val)  # type: ignore[arg-type]
        for start in range(0, n, batch_size):
            yield self.val_collate([self.val[i] for i in range(start, min(start + batch_size, n))])

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        out = model(x)
        return self.loss_fn(out, y) if self.loss_fn else F.cross_entropy(out.float(), y)

    def evaluate(self, model: nn.Module, batches: Iterable[Batch]) -> float:
        return _evaluate(model, batches, self.metric_fn or _accuracy)

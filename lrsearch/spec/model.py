"""The study file's sections as frozen dataclasses, and the words their keys may take.

A field of a section is a key of the study file's table of the same name (docs/study-file.md,
"Study file reference", lists every key); ``lrsearch.spec.validate`` reads a table into one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

SECTIONS = ("study", "task", "groups", "space", "train", "pruner", "sampler", "winner")
OPTIMIZERS = ("adamw", "adam", "sgd")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("constant", "warmup_cosine", "warmup_linear")
PRUNERS = ("hyperband", "successive_halving", "median", "none")
SAMPLERS = ("tpe", "gp", "random", "auto")
# How a per_group study starts: the sampler's own start-up trials, or a one-rate sweep (enqueued).
STARTS = ("sampler", "single")
SPACE_KINDS = ("per_group", "layer_decay", "single")
FREEZE_MODES = ("any", "prefix")
# Keys of [space] that the chosen kind of space never reads, and the kind that does.
_IGNORED_BY_KIND = {
    "per_group": ("decay", "head", "head_multiplier"),
    "layer_decay": ("lr_ranges", "start", "start_trials"),
    "single": ("decay", "head", "head_multiplier", "lr_ranges", "start", "start_trials"),
}
_EXECUTION_KEYS = ("cache_mb", "cache_dir", "batch_trials")
_GROUP_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_ENTRY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class StudySection:
    name: str
    direction: Literal["maximize", "minimize"] | None = None
    n_trials: int = 20
    timeout: float | None = None
    seed: int | None = None
    # Seconds between a running trial's heartbeats, and without one before it counts as lost
    # (its worker died): lrsearch.search then fails it and queues its parameters again.
    heartbeat_interval: int = 10
    grace_period: int = 30
    # A second objective, minimised: the trial's training cost (lrsearch.pick says how it is
    # measured). None: one objective, the task's metric.
    cost: Literal["seconds", "examples"] | None = None


@dataclass(frozen=True)
class TaskSection:
    entry: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    # The study file's folder, where the entry's module is looked for too (tasks.load_task);
    # where the file is, not what it searches: never stored, never compared.
    folder: str | None = field(default=None, compare=False, metadata={"in_file": False})


@dataclass(frozen=True)
class GroupsSection:
    """Ordered ``(group, patterns)`` pairs, or ``auto_depth``: a group per module at that depth."""

    patterns: tuple[tuple[str, tuple[str, ...]], ...] = ()
    auto_depth: int | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.patterns)


@dataclass(frozen=True)
class SpaceSection:
    kind: Literal["per_group", "layer_decay", "single"] = "per_group"
    lr: tuple[float, float] = (1e-5, 1e-1)
    lr_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    freeze: tuple[str, ...] = ()
    freeze_mode: Literal["any", "prefix"] = "any"
    fixed: dict[str, float] = field(default_factory=dict)
    decay: tuple[float, float] = (0.5, 1.0)
    head: tuple[str, ...] = ()
    head_multiplier: tuple[float, float] = (1.0, 100.0)
    weight_decay: float | tuple[float, float] | None = None
    # per_group only: "single" spends the first start_trials trials on a one-rate sweep (every
    # searched group the same rate, spread log-uniformly over the range; lrsearch.space), so the
    # per-group search starts from what a one-rate search would find.
    start: Literal["sampler", "single"] = "sampler"
    start_trials: int = 8


@dataclass(frozen=True)
class TrainSection:
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 32
    eval_batch_size: int = 256
    eval_every: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    schedule: Literal["constant", "warmup_cosine", "warmup_linear"] = "constant"
    warmup_ratio: float = 0.0
    grad_clip: float | None = None
    momentum: float = 0.9
    freeze_batchnorm: bool = True
    # Trials trained together in one stacked model step (lrsearch.training.stacked); 1 = one at a
    # time.
    # Pays on a GPU with a small model; trials that cannot stack fall back to one at a time.
    batch_trials: int = 1
    # true, false, or "auto": per prefix, cached only where a timed trial shows it pays.
    prefix_cache: bool | Literal["auto"] = False
    cache_mb: int = 512
    cache_dir: str | None = None


@dataclass(frozen=True)
class PrunerSection:
    kind: Literal["hyperband", "successive_halving", "median", "none"] = "median"
    min_resource: int = 1
    reduction_factor: int = 3
    n_startup_trials: int = 5
    n_warmup_steps: int = 0


@dataclass(frozen=True)
class SamplerSection:
    kind: Literal["tpe", "gp", "random", "auto"] = "tpe"
    n_startup_trials: int = 10
    multivariate: bool = True
    # TPE's group decomposition (a conditional parameter modelled only where it was sampled);
    # None: the same as multivariate. Optuna needs multivariate for it.
    group: bool | None = None


@dataclass(frozen=True)
class WinnerSection:
    """Noise-aware winners (lrsearch.confirm): after the search, the ``top_k`` best trials are
    retrained with ``reseeds`` more seeds each, counted in ``[study] n_trials``, and ranked by
    their mean; 0 reseeds: the winner is the best single value."""

    reseeds: int = 0
    top_k: int = 3

"""The study file's sections as frozen dataclasses, and the words their keys may take.

A field of a section is a key of the study file's table of the same name (docs/study-file.md,
"Study file reference", lists every key). Its type, default and ``metadata`` are all that
``lrsearch.spec.validate`` needs to read the table (that module lists the metadata it reads);
rules no type can say are in ``lrsearch.spec.checks``. Two more keys of metadata are read here:
``for_kind`` (a ``[space]`` key only that kind of space reads) and ``execution`` (a ``[train]``
key that says how a machine runs trials, not what they compute).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

from lrsearch.limits import SEED_RANGE
from lrsearch.spec import checks
from lrsearch.spec.validate import Seen

Direction = Literal["maximize", "minimize"]
Cost = Literal["seconds", "examples"]
SpaceKind = Literal["per_group", "layer_decay", "single"]
FreezeMode = Literal["any", "prefix"]
# How a per_group study starts: the sampler's own start-up trials, or a one-rate sweep (enqueued).
Start = Literal["sampler", "single"]
Optimizer = Literal["adamw", "adam", "sgd"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Schedule = Literal["constant", "warmup_cosine", "warmup_linear"]
PrunerKind = Literal["hyperband", "successive_halving", "median", "none"]
SamplerKind = Literal["tpe", "gp", "random", "auto"]

OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
PRECISIONS: tuple[str, ...] = get_args(Precision)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
PRUNERS: tuple[str, ...] = get_args(PrunerKind)
SAMPLERS: tuple[str, ...] = get_args(SamplerKind)
STARTS: tuple[str, ...] = get_args(Start)
SPACE_KINDS: tuple[str, ...] = get_args(SpaceKind)
FREEZE_MODES: tuple[str, ...] = get_args(FreezeMode)


@dataclass(frozen=True)
class StudySection:
    name: str = field(metadata={"required": True, "check": checks.study_name})
    direction: Direction | None = None
    n_trials: int = field(default=20, metadata={"minimum": 1})
    timeout: float | None = field(default=None, metadata={"kinds": (int, float), "above": 0})
    seed: int | None = field(default=None, metadata={"minimum": 0, "maximum": SEED_RANGE - 1})
    # Seconds between a running trial's heartbeats, and without one before it counts as lost
    # (its worker died): lrsearch.search then fails it and queues its parameters again.
    heartbeat_interval: int = field(default=10, metadata={"minimum": 1})
    grace_period: int = field(
        default=30, metadata={"minimum": 1, "check": checks.grace_after_interval}
    )
    # A second objective, minimised: the trial's training cost (lrsearch.pick says how it is
    # measured). None: one objective, the task's metric.
    cost: Cost | None = None


@dataclass(frozen=True)
class TaskSection:
    entry: str = field(metadata={"required": True, "refine": checks.entry_point})
    kwargs: dict[str, Any] = field(default_factory=dict)
    # The study file's folder, where the entry's module is looked for too (tasks.load_task);
    # where the file is, not what it searches: never stored, never compared.
    folder: str | None = field(default=None, compare=False, metadata={"in_file": False})


@dataclass(frozen=True)
class GroupsSection:
    """Ordered ``(group, patterns)`` pairs, or ``auto_depth``: a group per module at that depth.

    Its table's keys are the group names themselves, so ``lrsearch.spec.rules.read_groups``
    reads it.
    """

    patterns: tuple[tuple[str, tuple[str, ...]], ...] = ()
    auto_depth: int | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.patterns)


def ignored_by_kind(kind: str) -> tuple[str, ...]:
    """The keys of ``[space]`` that ``kind`` of space never reads (another kind does)."""
    # Another kind's keys in the order of the kinds' names, then of the fields.
    return tuple(
        f.name
        for other in sorted(k for k in SPACE_KINDS if k != kind)
        for f in fields(SpaceSection)
        if f.metadata.get("for_kind") == other
    )


def _read_by_this_kind(seen: Seen) -> Iterable[tuple[str, str]]:
    # A key the chosen kind ignores would silently search something else than the file says.
    problems = []
    for key in ignored_by_kind(seen.values["kind"]):
        if key in seen.present:
            other = SpaceSection.__dataclass_fields__[key].metadata["for_kind"]
            problems.append(
                (key, f"applies to kind = {other!r} only; remove it or set kind = {other!r}")
            )
    return problems


@dataclass(frozen=True)
class SpaceSection:
    kind: SpaceKind = field(default="per_group", metadata={"check": _read_by_this_kind})
    lr: tuple[float, float] = (1e-5, 1e-1)
    lr_ranges: dict[str, tuple[float, float]] = field(
        default_factory=dict, metadata={"read": checks.lr_ranges, "for_kind": "per_group"}
    )
    freeze: tuple[str, ...] = field(default=(), metadata={"read": checks.group_names})
    freeze_mode: FreezeMode = field(
        default="any", metadata={"check": checks.prefix_only_with_freeze}
    )
    fixed: dict[str, float] = field(
        default_factory=dict,
        metadata={"read": checks.fixed_rates, "check": checks.fixed_or_frozen},
    )
    decay: tuple[float, float] = field(
        default=(0.5, 1.0), metadata={"upper": 1.0, "for_kind": "layer_decay"}
    )
    head: tuple[str, ...] = field(
        default=(), metadata={"read": checks.group_names, "for_kind": "layer_decay"}
    )
    head_multiplier: tuple[float, float] = field(
        default=(1.0, 100.0), metadata={"for_kind": "layer_decay"}
    )
    weight_decay: float | tuple[float, float] | None = field(
        default=None, metadata={"read": checks.weight_decay}
    )
    # per_group only: "single" spends the first start_trials trials on a one-rate sweep (every
    # searched group the same rate, spread log-uniformly over the range; lrsearch.space), so the
    # per-group search starts from what a one-rate search would find.
    start: Start = field(default="sampler", metadata={"for_kind": "per_group"})
    start_trials: int = field(default=8, metadata={"minimum": 1, "for_kind": "per_group"})


@dataclass(frozen=True)
class TrainSection:
    optimizer: Optimizer = "adamw"
    epochs: int = field(default=1, metadata={"minimum": 1})
    max_steps: int | None = field(default=None, metadata={"minimum": 1})
    batch_size: int = field(default=32, metadata={"minimum": 1})
    eval_batch_size: int = field(default=256, metadata={"minimum": 1})
    eval_every: int = field(default=0, metadata={"minimum": 0})
    precision: Precision = "auto"
    schedule: Schedule = "constant"
    warmup_ratio: float = field(default=0.0, metadata={"minimum": 0.0, "refine": checks.below_one})
    grad_clip: float | None = field(default=None, metadata={"above": 0.0})
    momentum: float = field(default=0.9, metadata={"minimum": 0.0})
    freeze_batchnorm: bool = True
    # Trials trained together in one stacked model step (lrsearch.training.stacked); 1 = one at a
    # time.
    # Pays on a GPU with a small model; trials that cannot stack fall back to one at a time.
    batch_trials: int = field(default=1, metadata={"minimum": 1, "execution": True})
    # true, false, or "auto": per prefix, cached only where a timed trial shows it pays.
    prefix_cache: bool | Literal["auto"] = field(
        default=False, metadata={"kinds": (bool, str), "refine": checks.auto_or_bool}
    )
    cache_mb: int = field(default=512, metadata={"minimum": 1, "execution": True})
    cache_dir: str | None = field(
        default=None,
        metadata={
            "refine": checks.non_empty_path,
            "check": checks.cache_dir_needs_cache,
            "execution": True,
        },
    )
    # torch.compile the training forward of one-at-a-time trials: compiled once per worker and
    # frozen pattern, then reused by every trial (lrsearch.training.single).
    compile: bool = field(
        default=False, metadata={"check": checks.compile_needs_one_at_a_time, "execution": True}
    )


def execution_keys() -> tuple[str, ...]:
    """The keys of ``[train]`` that say how a machine runs trials, not what they compute."""
    return tuple(f.name for f in fields(TrainSection) if f.metadata.get("execution"))


@dataclass(frozen=True)
class PrunerSection:
    kind: PrunerKind = "median"
    min_resource: int = field(default=1, metadata={"minimum": 1})
    reduction_factor: int = field(default=3, metadata={"minimum": 2})
    n_startup_trials: int = field(default=5, metadata={"minimum": 0})
    n_warmup_steps: int = field(default=0, metadata={"minimum": 0})


@dataclass(frozen=True)
class SamplerSection:
    kind: SamplerKind = "tpe"
    n_startup_trials: int = field(default=10, metadata={"minimum": 0})
    multivariate: bool = True
    # TPE's group decomposition (a conditional parameter modelled only where it was sampled);
    # None: the same as multivariate. Optuna needs multivariate for it.
    group: bool | None = field(default=None, metadata={"check": checks.group_needs_multivariate})


@dataclass(frozen=True)
class WinnerSection:
    """Noise-aware winners (lrsearch.retrain.confirm): after the search, the ``top_k`` best
    trials are retrained with ``reseeds`` more seeds each, counted in ``[study] n_trials``, and
    ranked by their mean; 0 reseeds: the winner is the best single value."""

    reseeds: int = field(default=0, metadata={"minimum": 0})
    top_k: int = field(default=3, metadata={"minimum": 1})

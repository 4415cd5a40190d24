"""Study files: TOML in, frozen dataclasses out, every problem reported at once.

A study file has the sections ``study``, ``task``, ``groups``, ``space``, ``train``, ``pruner`` and
``sampler`` (README.md, "Study file reference", lists every key). Unknown keys are errors, because
a typo in a learning-rate search silently searches the wrong thing. The same reader checks a spec
stored inside a study (``StudySpec.from_dict``), so a worker rebuilding a study from the database
gets the same checks.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

from lrsearch.errors import SpecError
from lrsearch.limits import MAX_GROUPS, SEED_RANGE, study_name_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

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


@dataclass(frozen=True)
class StudySpec:
    """A whole study file, checked."""

    study: StudySection
    task: TaskSection
    groups: GroupsSection
    space: SpaceSection
    train: TrainSection
    pruner: PrunerSection
    sampler: SamplerSection
    winner: WinnerSection = field(default_factory=WinnerSection)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that :meth:`from_dict` reads back to an equal spec."""
        # TOML has no null: an unset optional key is left out, as it was in the file.
        data = {
            section: {k: v for k, v in values.items() if v is not None}
            for section, values in asdict(self).items()
        }
        for key in _IGNORED_BY_KIND[self.space.kind]:
            data["space"].pop(key, None)
        data["groups"] = (
            {"auto_depth": self.groups.auto_depth}
            if self.groups.auto_depth
            else {name: list(patterns) for name, patterns in self.groups.patterns}
        )
        return _jsonable(data)

    def search_dict(self) -> dict[str, Any]:
        """The parts that define what a study searches: all but its name and budget."""
        data = self.to_dict()
        data["study"] = {
            k: v for k, v in data["study"].items() if k in ("direction", "seed", "cost")
        }
        # How a machine executes trials, not what they compute: a worker may differ (its own
        # cache folder, memory, batching, which gives the same results within rounding).
        for key in _EXECUTION_KEYS:
            data["train"].pop(key, None)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<spec>") -> StudySpec:
        """Check ``data`` (the TOML's tables) and build a spec.

        Raises:
            SpecError: Listing every problem found, not only the first.
        """
        return _Reader(source).read(data)


def load_spec(path: str | Path) -> StudySpec:
    """Read and check a study file.

    Raises:
        SpecError: The file is missing, is not valid TOML, or has any problem (all listed together).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise SpecError(str(p), ["file not found; check the path to the study file"]) from e
    except OSError as e:
        raise SpecError(str(p), [f"cannot read the file: {e.strerror}"]) from e
    except UnicodeDecodeError as e:
        # A binary file or another encoding: without this a traceback reaches the user.
        raise SpecError(str(p), [f"not UTF-8 text ({e.reason} at byte {e.start})"]) from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(str(p), [f"invalid TOML: {e}"]) from e
    return StudySpec.from_dict(data, source=str(p))


def group_ref_problems(space: SpaceSection, group_names: tuple[str, ...]) -> list[str]:
    """Problems with group names referenced by ``[space]`` (freeze, fixed, lr_ranges, head)."""
    problems = []
    known = ", ".join(group_names)
    refs: list[tuple[str, str]] = [("freeze", p) for p in space.freeze]
    refs += [("head", p) for p in space.head]
    refs += [("fixed", g) for g in space.fixed]
    refs += [("lr_ranges", g) for g in space.lr_ranges]
    for key, ref in refs:
        if not any(fnmatchcase(g, ref) for g in group_names):
            problems.append(f"[space] {key}: {ref!r} names no group; the groups are: {known}")
    if space.freeze_mode == "prefix":
        problems += _prefix_problems(space, group_names)
    if space.kind == "layer_decay":
        heads = {g for g in group_names if any(fnmatchcase(g, h) for h in space.head)}
        if not [g for g in group_names if g not in heads]:
            problems.append(
                "[space] head: every group is a head group, so layer_decay has no layers to decay; "
                "name only the head groups in head"
            )
    return problems


def fixed_rate(space: SpaceSection, group: str) -> float | None:
    """The rate ``[space] fixed`` gives ``group`` (its first matching pattern); None: searched."""
    for pattern, lr in space.fixed.items():
        if fnmatchcase(group, pattern):
            return lr
    return None


def _prefix_problems(space: SpaceSection, group_names: tuple[str, ...]) -> list[str]:
    """``freeze_mode = "prefix"`` freezes the lowest freeze groups first: below the highest of
    them, every group must be one too, or be fixed at 0 (frozen for good). A fixed group is not
    searched, so a ``freeze`` pattern that matches it does not make it freezable."""
    freezable = [
        i
        for i, g in enumerate(group_names)
        if fixed_rate(space, g) is None and any(fnmatchcase(g, p) for p in space.freeze)
    ]
    if not freezable:
        return []
    gaps = [
        g
        for i, g in enumerate(group_names[: freezable[-1]])
        if i not in freezable and fixed_rate(space, g) != 0
    ]
    if not gaps:
        return []
    return [
        f"[space] freeze_mode: 'prefix' freezes groups from the bottom up, but {', '.join(gaps)} "
        f"lies below {group_names[freezable[-1]]!r} and may not be frozen; add it to freeze, "
        "fix it at 0, or set freeze_mode = 'any'"
    ]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class _Reader:
    """Pops keys off TOML tables with type checks, collecting problems instead of stopping."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def read(self, data: dict[str, Any]) -> StudySpec:
        if not isinstance(data, dict):
            raise SpecError(self.source, ["a spec must be a table of sections"])
        for name in data:
            if name not in SECTIONS:
                self.problem(
                    f"[{name}]", f"unknown section; the sections are {', '.join(SECTIONS)}"
                )
        tables = {s: self.table(data, s) for s in SECTIONS}
        study = self.study(tables["study"])
        task = self.task(tables["task"], "task" in data)
        groups = self.groups(tables["groups"], "groups" in data)
        space = self.space(tables["space"])
        train = self.train(tables["train"])
        pruner = self.pruner(tables["pruner"])
        sampler = self.sampler(tables["sampler"])
        winner = self.winner(tables["winner"])
        if not groups.auto_depth and groups.patterns:
            # Every well-named group, also one whose patterns were bad, so that a reference to it is
            # not reported as a second, misleading problem.
            named = tuple(n for n in tables["groups"] if _GROUP_NAME.match(n))
            self.problems.extend(group_ref_problems(space, named))
        if study.cost is not None and pruner.kind != "none":
            self.problem(
                "[study] cost",
                "makes the study two-objective (metric and cost), and Optuna cannot prune a "
                'two-objective trial; set [pruner] kind = "none", or remove cost (lrsearch best '
                "--within / --max-cost still trade metric against wall time)",
            )
        self.budget_problems(study, space, winner)
        if self.problems:
            raise SpecError(self.source, self.problems)
        return StudySpec(study, task, groups, space, train, pruner, sampler, winner)

    def budget_problems(self, study: StudySection, space: SpaceSection, w: WinnerSection) -> None:
        reserved = w.reseeds * w.top_k
        if reserved and reserved >= study.n_trials:
            self.problem(
                "[winner] reseeds",
                f"reseeds x top_k = {reserved} retrainings are counted in [study] n_trials "
                f"({study.n_trials}), which leaves no trial to search; raise n_trials or lower "
                "reseeds / top_k",
            )
        elif space.start == "single" and space.start_trials >= study.n_trials - reserved:
            self.problem(
                "[space] start_trials",
                f"the one-rate sweep ({space.start_trials} trials) takes the whole search budget "
                f"({study.n_trials - reserved} trials); lower start_trials or raise n_trials",
            )

    def table(self, data: dict[str, Any], name: str) -> dict[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, dict):
            self.problem(f"[{name}]", f"must be a table, got {type(value).__name__}")
            return {}
        return dict(value)

    def unknown(self, section: str, table: dict[str, Any], known: tuple[str, ...]) -> None:
        for key in table:
            self.problem(
                f"[{section}] {key}",
                f"unknown key; the keys of [{section}] are {', '.join(known)}",
            )

    def take(
        self,
        section: str,
        table: dict[str, Any],
        key: str,
        kind: type | tuple[type, ...],
        default: Any,
        *,
        choices: tuple[str, ...] | None = None,
        minimum: float | None = None,
        maximum: float | None = None,
        above: float | None = None,
        required: bool = False,
    ) -> Any:
        where = f"[{section}] {key}"
        if key not in table:
            if required:
                self.problem(where, "is required")
            return default
        value: Any = table.pop(key)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; a learning rate of `true` is a typo, not 1.
        if isinstance(value, bool) and bool not in kinds:
            self.problem(where, f"must be {_kind_name(kinds)}, got {value!r}")
            return default
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        is_kind = isinstance(value, kinds)  # a bool, so mypy keeps `value: Any` below
        if not is_kind:
            self.problem(where, f"must be {_kind_name(kinds)}, got {value!r}")
            return default
        if choices is not None and value not in choices:
            self.problem(where, f"must be one of {', '.join(choices)}; got {value!r}")
            return default
        if minimum is not None and value < minimum:
            self.problem(where, f"must be >= {minimum}, got {value!r}")
            return default
        if maximum is not None and value > maximum:
            self.problem(where, f"must be <= {maximum}, got {value!r}")
            return default
        if above is not None and value <= above:
            self.problem(where, f"must be > {above}, got {value!r}")
            return default
        if isinstance(value, float) and not math.isfinite(value):
            self.problem(where, f"must be finite, got {value!r}")
            return default
        return value

    def range(
        self,
        where: str,
        value: Any,
        default: tuple[float, float],
        *,
        positive: bool = True,
        upper: float | None = None,
    ) -> tuple[float, float]:
        ok = (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        )
        if not ok:
            self.problem(where, f"must be a [low, high] pair of numbers, got {value!r}")
            return default
        low, high = float(value[0]), float(value[1])
        if not (math.isfinite(low) and math.isfinite(high)):
            self.problem(where, f"must be finite, got {value!r}")
        elif positive and low <= 0:
            self.problem(
                where,
                f"`low > 0` must hold for a log-uniform range, but got (low={low}, high={high}); "
                "use [space] freeze to allow lr = 0",
            )
        elif low > high:
            self.problem(where, f"`low <= high` must hold, but got (low={low}, high={high})")
        elif upper is not None and high > upper:
            self.problem(where, f"`high <= {upper}` must hold, but got (low={low}, high={high})")
        else:
            return (low, high)
        return default

    def study(self, t: dict[str, Any]) -> StudySection:
        s = "study"
        had_name = "name" in t
        name = self.take(s, t, "name", str, "", required=True)
        name_problem = study_name_problem(name) if isinstance(name, str) else None
        if had_name and name_problem:
            self.problem("[study] name", name_problem)
        direction = self.take(s, t, "direction", str, None, choices=("maximize", "minimize"))
        n_trials = self.take(s, t, "n_trials", int, 20, minimum=1)
        timeout = self.take(s, t, "timeout", (int, float), None, above=0)
        seed = self.take(s, t, "seed", int, None, minimum=0, maximum=SEED_RANGE - 1)
        d = StudySection("")
        known_so_far = len(self.problems)
        interval = self.take(s, t, "heartbeat_interval", int, d.heartbeat_interval, minimum=1)
        # A bad interval is reported once, not again as the grace period's bound.
        interval_ok = len(self.problems) == known_so_far
        grace = self.take(s, t, "grace_period", int, d.grace_period, minimum=1)
        if interval_ok and grace <= interval:
            # Between two heartbeats a live trial would already count as lost.
            self.problem(
                "[study] grace_period",
                f"must be > heartbeat_interval ({interval}), got {grace}; two or three intervals "
                "leave room for a late heartbeat",
            )
        cost = self.take(s, t, "cost", str, None, choices=("seconds", "examples"))
        known = ("name", "direction", "n_trials", "timeout", "seed")
        self.unknown(s, t, (*known, "heartbeat_interval", "grace_period", "cost"))
        return StudySection(
            name,
            direction,
            n_trials,
            None if timeout is None else float(timeout),
            seed,
            interval,
            grace,
            cost,
        )

    def task(self, t: dict[str, Any], present: bool) -> TaskSection:
        s = "task"
        if not present:
            self.problem("[task]", 'section is required (entry = "package.module:function")')
            return TaskSection("")
        entry = self.take(s, t, "entry", str, "", required=True)
        if entry and not _ENTRY.match(entry):
            self.problem(
                "[task] entry",
                f"must look like 'package.module:function', got {entry!r}",
            )
        kwargs = self.take(s, t, "kwargs", dict, {})
        self.unknown(s, t, ("entry", "kwargs"))
        return TaskSection(entry, dict(kwargs))

    def groups(self, t: dict[str, Any], present: bool) -> GroupsSection:
        if not present or not t:
            self.problem(
                "[groups]",
                "section is required: name groups by parameter patterns "
                '(head = ["classifier.*"]) or set auto_depth = 1',
            )
            return GroupsSection()
        if "auto_depth" in t:
            depth = self.take("groups", t, "auto_depth", int, None, minimum=1)
            for key in t:
                self.problem(
                    f"[groups] {key}",
                    "auto_depth makes every group itself; remove the named groups or auto_depth",
                )
            return GroupsSection(auto_depth=depth)
        if len(t) > MAX_GROUPS:  # checked alone: 10,000 groups would give 10,000 problems
            self.problem(
                "[groups]",
                f"{len(t)} groups, at most {MAX_GROUPS}: each is a searched dimension; put layers "
                'in one group with a pattern (blocks = ["blocks.*"])',
            )
            return GroupsSection()
        pairs: list[tuple[str, tuple[str, ...]]] = []
        for name, value in t.items():
            where = f"[groups] {name}"
            if not _GROUP_NAME.match(name):
                self.problem(where, "a group name may use letters, digits, '_', '.', '-' only")
                continue
            if isinstance(value, str):
                value = [value]
            if (
                not isinstance(value, list)
                or not value
                or not all(isinstance(v, str) and v for v in value)
            ):
                self.problem(
                    where, f"must be a non-empty list of parameter name patterns, got {value!r}"
                )
                continue
            pairs.append((name, tuple(value)))
        return GroupsSection(patterns=tuple(pairs))

    def space(self, t: dict[str, Any]) -> SpaceSection:
        s = "space"
        d = SpaceSection()
        kind = self.take(s, t, "kind", str, d.kind, choices=SPACE_KINDS)
        # A key the chosen kind ignores would silently search something else than the file says.
        for key in _IGNORED_BY_KIND[kind]:
            if key in t:
                other = (
                    "layer_decay" if key in ("decay", "head", "head_multiplier") else "per_group"
                )
                self.problem(
                    f"[space] {key}",
                    f"applies to kind = {other!r} only; remove it or set kind = {other!r}",
                )
        lr = self.range("[space] lr", t.pop("lr"), d.lr) if "lr" in t else d.lr
        ranges: dict[str, tuple[float, float]] = {}
        raw_ranges = self.take(s, t, "lr_ranges", dict, {})
        for g, r in raw_ranges.items():
            ranges[g] = self.range(f"[space] lr_ranges.{g}", r, lr)
        freeze = self.names(s, t, "freeze")
        freeze_mode = self.take(s, t, "freeze_mode", str, d.freeze_mode, choices=FREEZE_MODES)
        if freeze_mode == "prefix" and not freeze:
            self.problem(
                "[space] freeze_mode",
                "'prefix' chooses how many of the freeze groups to freeze, but freeze names none; "
                "list the lowest groups in freeze, or remove freeze_mode",
            )
        head = self.names(s, t, "head")
        fixed: dict[str, float] = {}
        for g, v in self.take(s, t, "fixed", dict, {}).items():
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not (math.isfinite(v) and v >= 0)
            ):
                self.problem(f"[space] fixed.{g}", f"must be a learning rate >= 0, got {v!r}")
            else:
                fixed[g] = float(v)
        decay = (
            self.range("[space] decay", t.pop("decay"), d.decay, upper=1.0)
            if ("decay" in t)
            else d.decay
        )
        mult = (
            self.range("[space] head_multiplier", t.pop("head_multiplier"), d.head_multiplier)
            if "head_multiplier" in t
            else d.head_multiplier
        )
        wd: float | tuple[float, float] | None = None
        if "weight_decay" in t:
            raw = t.pop("weight_decay")
            if isinstance(raw, (int, float)) and not isinstance(raw, bool):
                if raw < 0 or not math.isfinite(raw):
                    self.problem("[space] weight_decay", f"must be >= 0, got {raw!r}")
                else:
                    wd = float(raw)
            elif isinstance(raw, list):
                wd = self.range("[space] weight_decay", raw, (1e-6, 1e-1))
            else:
                self.problem(
                    "[space] weight_decay",
                    f"must be a number >= 0 (fixed) or a [low, high] pair (searched), got {raw!r}",
                )
        start = self.take(s, t, "start", str, d.start, choices=STARTS)
        start_trials = self.take(s, t, "start_trials", int, d.start_trials, minimum=1)
        both = set(freeze) & set(fixed)
        for g in sorted(both):
            self.problem(f"[space] fixed.{g}", "is also in freeze; a group is fixed or searched")
        self.unknown(
            s,
            t,
            (
                "kind",
                "lr",
                "lr_ranges",
                "freeze",
                "freeze_mode",
                "fixed",
                "decay",
                "head",
                "head_multiplier",
                "weight_decay",
                "start",
                "start_trials",
            ),
        )
        return SpaceSection(
            kind, lr, ranges, freeze, freeze_mode, fixed, decay, head, mult, wd, start, start_trials
        )

    def names(self, s: str, t: dict[str, Any], key: str) -> tuple[str, ...]:
        value = self.take(s, t, key, (list, str), [])
        if isinstance(value, str):
            value = [value]
        if not all(isinstance(v, str) and v for v in value):
            self.problem(f"[{s}] {key}", f"must be a list of group names, got {value!r}")
            return ()
        return tuple(value)

    def train(self, t: dict[str, Any]) -> TrainSection:
        s = "train"
        d = TrainSection()
        optimizer = self.take(s, t, "optimizer", str, d.optimizer, choices=OPTIMIZERS)
        epochs = self.take(s, t, "epochs", int, d.epochs, minimum=1)
        max_steps = self.take(s, t, "max_steps", int, None, minimum=1)
        batch_size = self.take(s, t, "batch_size", int, d.batch_size, minimum=1)
        eval_batch_size = self.take(s, t, "eval_batch_size", int, d.eval_batch_size, minimum=1)
        eval_every = self.take(s, t, "eval_every", int, d.eval_every, minimum=0)
        precision = self.take(s, t, "precision", str, d.precision, choices=PRECISIONS)
        schedule = self.take(s, t, "schedule", str, d.schedule, choices=SCHEDULES)
        warmup = self.take(s, t, "warmup_ratio", float, d.warmup_ratio, minimum=0.0)
        if warmup >= 1.0:
            self.problem(
                "[train] warmup_ratio", f"must be < 1 (a fraction of the steps), got {warmup}"
            )
        grad_clip = self.take(s, t, "grad_clip", float, None, above=0.0)
        momentum = self.take(s, t, "momentum", float, d.momentum, minimum=0.0)
        freeze_bn = self.take(s, t, "freeze_batchnorm", bool, d.freeze_batchnorm)
        batch_trials = self.take(s, t, "batch_trials", int, d.batch_trials, minimum=1)
        prefix_cache = self.take(s, t, "prefix_cache", (bool, str), d.prefix_cache)
        if isinstance(prefix_cache, str) and prefix_cache != "auto":
            self.problem(
                "[train] prefix_cache", f'must be true, false or "auto"; got {prefix_cache!r}'
            )
            prefix_cache = d.prefix_cache
        cache_mb = self.take(s, t, "cache_mb", int, d.cache_mb, minimum=1)
        cache_dir = self.take(s, t, "cache_dir", str, None)
        if cache_dir is not None and not cache_dir.strip():
            self.problem("[train] cache_dir", "must be a directory path, got an empty string")
            cache_dir = None
        if cache_dir is not None and not prefix_cache:
            # cache_mb is not checked so: a spec's to_dict writes its default back.
            self.problem(
                "[train] cache_dir", "has no effect unless prefix_cache = true; set it or remove it"
            )
        self.unknown(
            s,
            t,
            (
                "optimizer",
                "epochs",
                "max_steps",
                "batch_size",
                "eval_batch_size",
                "eval_every",
                "precision",
                "schedule",
                "warmup_ratio",
                "grad_clip",
                "momentum",
                "freeze_batchnorm",
                "batch_trials",
                "prefix_cache",
                "cache_mb",
                "cache_dir",
            ),
        )
        return TrainSection(
            optimizer,
            epochs,
            max_steps,
            batch_size,
            eval_batch_size,
            eval_every,
            precision,
            schedule,
            warmup,
            grad_clip,
            momentum,
            freeze_bn,
            batch_trials=batch_trials,
            prefix_cache=prefix_cache,
            cache_mb=cache_mb,
            cache_dir=cache_dir,
        )

    def pruner(self, t: dict[str, Any]) -> PrunerSection:
        s = "pruner"
        d = PrunerSection()
        p = PrunerSection(
            kind=self.take(s, t, "kind", str, d.kind, choices=PRUNERS),
            min_resource=self.take(s, t, "min_resource", int, d.min_resource, minimum=1),
            reduction_factor=self.take(
                s, t, "reduction_factor", int, d.reduction_factor, minimum=2
            ),
            n_startup_trials=self.take(
                s, t, "n_startup_trials", int, d.n_startup_trials, minimum=0
            ),
            n_warmup_steps=self.take(s, t, "n_warmup_steps", int, d.n_warmup_steps, minimum=0),
        )
        self.unknown(
            s, t, ("kind", "min_resource", "reduction_factor", "n_startup_trials", "n_warmup_steps")
        )
        return p

    def sampler(self, t: dict[str, Any]) -> SamplerSection:
        s = "sampler"
        d = SamplerSection()
        p = SamplerSection(
            kind=self.take(s, t, "kind", str, d.kind, choices=SAMPLERS),
            n_startup_trials=self.take(
                s, t, "n_startup_trials", int, d.n_startup_trials, minimum=0
            ),
            multivariate=self.take(s, t, "multivariate", bool, d.multivariate),
            group=self.take(s, t, "group", bool, None),
        )
        if p.group and not p.multivariate:
            self.problem(
                "[sampler] group",
                "group decomposition is a mode of multivariate TPE; set multivariate = true or "
                "group = false",
            )
        self.unknown(s, t, ("kind", "n_startup_trials", "multivariate", "group"))
        return p

    def winner(self, t: dict[str, Any]) -> WinnerSection:
        s = "winner"
        d = WinnerSection()
        w = WinnerSection(
            reseeds=self.take(s, t, "reseeds", int, d.reseeds, minimum=0),
            top_k=self.take(s, t, "top_k", int, d.top_k, minimum=1),
        )
        self.unknown(s, t, ("reseeds", "top_k"))
        return w


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        dict: "a table",
        list: "a list",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)

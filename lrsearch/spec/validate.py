"""Reading TOML tables into the sections of ``lrsearch.spec.model``, every problem collected."""

from __future__ import annotations

import math
from typing import Any

from lrsearch.errors import SpecError
from lrsearch.limits import MAX_GROUPS, SEED_RANGE, study_name_problem
from lrsearch.spec.model import (
    _ENTRY,
    _GROUP_NAME,
    _IGNORED_BY_KIND,
    FREEZE_MODES,
    OPTIMIZERS,
    PRECISIONS,
    PRUNERS,
    SAMPLERS,
    SCHEDULES,
    SECTIONS,
    SPACE_KINDS,
    STARTS,
    GroupsSection,
    PrunerSection,
    SamplerSection,
    SpaceSection,
    StudySection,
    TaskSection,
    TrainSection,
    WinnerSection,
)
from lrsearch.spec.rules import group_ref_problems


class _Reader:
    """Pops keys off TOML tables with type checks, collecting problems instead of stopping."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def read(self, data: dict[str, Any]) -> tuple[Any, ...]:
        """The sections in ``SECTIONS`` order, checked.

        Raises:
            SpecError: Listing every problem found.
        """
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
        return (study, task, groups, space, train, pruner, sampler, winner)

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

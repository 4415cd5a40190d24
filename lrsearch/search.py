"""The search loop of ``run`` and ``worker``: ask Optuna for a trial, train it, tell the result.

Everything that can happen to a trial is decided in one place, :func:`_finish`:

============  ==============  ================================================================
outcome       Optuna state    why
============  ==============  ================================================================
complete      COMPLETE        trained to the end; its value is the last evaluation
pruned        PRUNED          the pruner stopped it at an evaluation
diverged      PRUNED          NaN/inf loss; NaN is reported at that step so TPE ranks it worst
                              among trials that got as far (a FAIL would be ignored by TPE, and
                              it would sample the same cliff again)
failed        FAIL            out of memory, or the task raised; the reason is stored
interrupted   FAIL            Ctrl-C / SIGTERM, or the database unreachable for the whole retry
                              limit; the study stays intact and can be resumed, the trial does
                              not count against the budget, and its parameters are queued again
                              (the next ``run`` or any worker re-runs them first)
lost          FAIL            (seen by the worker only) another worker found no heartbeat of
                              the trial for ``grace_period`` seconds and failed it; this worker
                              drops it and goes on (a trial's ``tell`` never crashes a worker)
============  ==============  ================================================================

A trial that "completes" with a NaN/inf value is diverged too (Optuna refuses to complete it).

Each trial stores its resolved rates in one user attribute (``lrsearch.trial``) so readers never
reconstruct them from the sampled parameters.

**One budget for all workers.** ``n_trials`` counts the study's finished trials (complete, pruned
and failed), whichever worker ran them, except a trial stopped by an interrupt and a trial queued
again after its worker was lost (its re-run counts instead). Before each trial a worker reads the
study: it starts a trial while ``counted + running + queued < n_trials``, or while a queued trial
(a re-run) waits; when the trials other workers are running would meet the budget, it waits for
them (a lost one is re-run by whoever is still there); it stops once ``counted >= n_trials``. Only
workers that read the study at the same moment can start more than the budget leaves, so the study
ends with at most ``n_trials + workers - 1`` counted trials, and exactly ``n_trials`` unless such a
race happened.

**Workers that die.** While a trial trains, a thread of the worker writes its heartbeat every
``[study] heartbeat_interval`` seconds (the first one at once). Every worker sweeps the study when
it starts, before its trials (at most once per heartbeat interval: a trial cannot go stale faster),
while it waits and before it exits: a RUNNING trial whose last heartbeat is older
than ``[study] grace_period`` seconds is failed with reason ``"worker lost"`` and its parameters are
queued again once (``lrsearch.retry_of`` names the trial a re-run replaces; a re-run that loses its
worker too stays failed). A RUNNING trial that never had a heartbeat (its worker died in the few
milliseconds between creating it and the first heartbeat) is swept :data:`ORPHAN_AFTER_S` seconds
after it started. A lost trial that was never sampled (its worker died between ``ask`` and its
rates) has no configuration to lose: it is stored interrupted, and does not count. SIGTERM and
SIGINT interrupt the trial in training at once; anywhere else (a storage write, a sweep, a wait
for the database) the worker stops at its next step, so a write is never cut in half, and more
signals change nothing (:class:`_StopSignals`). A SIGTERM is delivered again once the search has
cleaned up, when the program had left SIGTERM to its default (it ends the program, as it would
have without lrsearch).

**Batches.** With ``[train] batch_trials = K`` above 1 a worker asks up to K trials at once (one at
a time while the budget rule lets it start another), keeps them all alive with heartbeats and trains
them together (``Trainer.train_many``, :mod:`lrsearch.training.stacked`); each trial still has its
own seed, reports, pruning and fate (:func:`_finish`). Trials that cannot stack are trained one at
a time, the reason logged once. An interrupt interrupts every trial of the batch not yet finished.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import FrameType, TracebackType
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from lrsearch import _optuna_compat as compat
from lrsearch.confirm import confirm_study, search_budget
from lrsearch.errors import LrsearchError, StorageUnavailable, TaskError, TrialFailure
from lrsearch.groups import LayerGroups, resolve_groups
from lrsearch.limits import SEED_RANGE
from lrsearch.pick import metric, rank
from lrsearch.sampler import build_sampler
from lrsearch.schema import (  # re-exported: readers imported them from here first
    GROUPS_ATTR,
    LOSSES_ATTR,
    LOST_REASON,
    OUTCOME_ATTR,
    REASON_ATTR,
    RETRY_OF_ATTR,
    TRIAL_ATTR,
    BudgetCount,
    Outcome,
)
from lrsearch.space import Sample, SearchSpace, enqueue_start
from lrsearch.spec import StudySpec
from lrsearch.storage import (
    FINISHED,
    ResilientStorage,
    create_or_resume,
    db_wait,
    load_study,
    mask_url,
    open_storage,
    resolve_url,
    stored_spec,
    trial_lrs,
)
from lrsearch.tasks import Task, load_task
from lrsearch.training import (
    DEFAULT,
    BatchingUnsupported,
    Report,
    TrainerLike,
    TrainResult,
    resolve_device,
    resolve_precision,
)
from lrsearch.trust import check_stored_entry

__all__ = [
    "FINISHED",
    "GROUPS_ATTR",
    "OUTCOME_ATTR",
    "REASON_ATTR",
    "RETRY_OF_ATTR",
    "TRIAL_ATTR",
    "CreatedStudy",
    "Prepared",
    "SearchSummary",
    "TrialOutcome",
    "create_study",
    "make_pruner",
    "make_sampler",
    "prepare",
    "run_search",
    "run_worker",
]

_HOST = socket.gethostname()
_log = logging.getLogger("lrsearch")
# How often a worker with nothing to start looks again while other workers finish the budget.
POLL_S = 1.0
# A RUNNING trial that never had a heartbeat is failed this long after it started: long enough for
# clocks of different machines to disagree (its start time is the worker's clock).
ORPHAN_AFTER_S = 600.0
# The reason of a lost trial that was never sampled (not counted: no configuration was lost).
_UNSAMPLED = "worker lost before the trial was sampled"
# A configuration whose worker died is re-run this many times; after that its trial stays failed
# (a configuration that kills its worker, e.g. by exhausting memory, must not kill them all).
MAX_LOSSES = 1

TrainFn = Callable[..., TrainResult]


@dataclass(frozen=True)
class TrialOutcome:
    """What became of one trial."""

    number: int
    outcome: str  # complete | pruned | diverged | failed | interrupted | lost
    value: float | None
    lrs: dict[str, float]
    seconds: float
    reason: str | None = None


@dataclass
class SearchSummary:
    """A run's result: what this run did and the study's best so far."""

    study: str
    storage: str
    direction: str
    budget: int
    resumed: bool
    already_finished: int
    outcomes: list[TrialOutcome] = field(default_factory=list)
    best_number: int | None = None
    best_value: float | None = None
    best_lrs: dict[str, float] | None = None
    interrupted: bool = False
    seconds: float = 0.0
    # Of ``seconds``, the time the trainer computed (its reports' storage writes and pruning
    # checks not counted); the rest went to asking, sampling, telling, sweeps and waits.
    training_seconds: float = 0.0
    # [winner] reseeds: what lrsearch.confirm found once the search budget was met.
    confirmation: dict[str, Any] | None = None

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes if o.outcome == outcome)


OnTrial = Callable[[TrialOutcome, SearchSummary], None]


def make_sampler(
    spec: StudySpec, *, space: SearchSpace | None = None, offset: int = 0, seeded: bool = True
) -> optuna.samplers.BaseSampler:
    """The study's sampler (:mod:`lrsearch.sampler` says which and why).

    Args:
        spec: The study's spec; ``[study] seed`` seeds the sampler.
        space: The resolved space, whose dimension ``[sampler] kind = "auto"`` weighs; default:
            the spec's named groups.
        offset: Trials the study already has. A resumed seeded study adds it to the seed: the same
            seed again would sample the same random start-up points as the first run did.
        seeded: ``False`` ignores the seed. Workers do: workers that start together see the same
            number of trials, so one seed would have them all sample the same start-up points.

    Raises:
        LrsearchError: The chosen sampler's package is not installed.
    """
    seed = None
    if spec.study.seed is not None and seeded:
        # Wrapped: NumPy, under Optuna's samplers, takes seeds below 2**32 only, and a study
        # seeded near the top would fail on resume.
        seed = (spec.study.seed + offset) % SEED_RANGE
    space = space or SearchSpace(spec.space, spec.groups.names)
    dimensions, conditional = space.dimensions()
    return build_sampler(spec, seed=seed, dimensions=dimensions, conditional=conditional)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The study's pruner; each evaluation (every ``eval_every`` steps) is a pruning point."""
    p = spec.pruner
    if p.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource, reduction_factor=p.reduction_factor
        )
    if p.kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=p.min_resource, reduction_factor=p.reduction_factor
        )
    if p.kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    return optuna.pruners.NopPruner()


@dataclass(frozen=True)
class Prepared:
    """Everything checked before the study is touched."""

    spec: StudySpec
    task: Task
    groups: LayerGroups
    space: SearchSpace
    direction: str
    # Parameters per group, for [study] cost = "examples" (the share of the model that trains).
    sizes: dict[str, int] = field(default_factory=dict)

    def cost(self, result: TrainResult, sample: Sample) -> float:
        """The trial's training cost, as ``[study] cost`` measures it (see lrsearch.pick)."""
        if self.spec.study.cost == "examples":
            total = sum(self.sizes.values()) or 1
            trained = sum(n for g, n in self.sizes.items() if sample.lrs.get(g, 0.0) != 0)
            return float(result.steps * self.spec.train.batch_size) * trained / total
        return float(result.seconds)


def prepare(
    spec: StudySpec,
    *,
    device: str | None = None,
    check_device: bool = True,
    task: Task | None = None,
) -> Prepared:
    """Build the task, resolve the groups on one model and check the space, before any write.

    Args:
        spec: The study's spec.
        device: The device trials will run on (checked with ``[train] precision``).
        check_device: ``False`` skips the device check: ``create`` may run on a machine without
            the workers' GPUs.
        task: The task itself, in place of importing ``[task] entry`` (``lrsearch.search``'s
            in-memory model and data).

    Raises:
        LrsearchError: Any problem with the task, groups, space or device.
    """
    if check_device:
        resolve_precision(spec.train.precision, resolve_device(device))
    try:
        if task is None:
            folders = [spec.task.folder] if spec.task.folder else []
            task = load_task(spec.task.entry, spec.task.kwargs, folders=folders)
    except LrsearchError:
        raise
    except Exception as e:  # the task's own factory raised: a user error, not ours
        raise TaskError(
            f"task {spec.task.entry!r} failed to load with kwargs {spec.task.kwargs}: {e!r}"
        ) from e
    try:
        model = task.build_model()
    except LrsearchError:
        raise
    except Exception as e:
        raise TaskError(f"task {spec.task.entry!r} failed to build its model: {e!r}") from e
    groups = resolve_groups(model, spec.groups.patterns or None, auto_depth=spec.groups.auto_depth)
    space = SearchSpace(spec.space, groups.names)
    direction = spec.study.direction or task.direction
    params = dict(model.named_parameters())
    sizes = {g: sum(params[p].numel() for p in groups.members(g)) for g in groups.names}
    return Prepared(spec, task, groups, space, direction, sizes)


def _connect(url: str, retry_s: float | None = None) -> ResilientStorage:
    """The storage for a search: waits for a database still starting, retries lost connections
    (for ``retry_s`` seconds, default :func:`lrsearch.outage.retry_limit`)."""
    return ResilientStorage(open_storage(url, wait=db_wait()), shown=mask_url(url), retry_s=retry_s)


def _open_study(
    store: ResilientStorage, name: str, prepared: Prepared
) -> tuple[optuna.Study, bool]:
    spec = prepared.spec
    study, resumed = create_or_resume(
        store,
        name,
        spec,
        direction=prepared.direction,
        sampler=make_sampler(spec, space=prepared.space),
        pruner=make_pruner(spec),
    )
    if GROUPS_ATTR not in study.user_attrs:  # also when a first run died right after creating it
        study.set_user_attr(GROUPS_ATTR, {g: list(p) for g, p in prepared.groups.patterns})
    enqueue_start(study, prepared.space)
    return study, resumed


@dataclass(frozen=True)
class CreatedStudy:
    """What ``create`` did: the study, whether it is new, and the budget stored with it."""

    study: str
    storage: str  # masked
    created: bool
    direction: str
    n_trials: int  # the stored spec's budget (an existing study keeps its own)


def create_study(
    spec: StudySpec, *, storage: str | None = None, study_name: str | None = None
) -> CreatedStudy:
    """Create study ``spec`` for workers to join, or check that an existing one has the same search.

    The task, groups and space are checked first (nothing is written on bad input); the device is
    not: workers may have GPUs this machine lacks.

    Args:
        spec: The checked study file.
        storage: Storage URL (resolved as in :func:`lrsearch.storage.resolve_url`).
        study_name: Overrides ``[study] name``.

    Raises:
        LrsearchError: Bad input (nothing is written).
        StudyMismatchError: A study of that name exists with a different search.
    """
    prepared = prepare(spec, check_device=False)
    name = study_name or spec.study.name
    url = resolve_url(storage)
    study, existed = _open_study(_connect(url), name, prepared)
    kept = stored_spec(study) if existed else spec
    return CreatedStudy(
        study=name,
        storage=mask_url(url),
        created=not existed,
        direction=prepared.direction,
        n_trials=kept.study.n_trials,
    )


def run_search(
    spec: StudySpec,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    device: str | None = None,
    on_trial: OnTrial | None = None,
    train_fn: TrainFn | None = None,
    trainer: TrainerLike | None = None,
    task: Task | None = None,
    storage_retry: float | None = None,
) -> SearchSummary:
    """Run (or resume) a study until it has ``n_trials`` finished trials or ``timeout`` passes.

    Args:
        spec: The checked study file.
        storage: Storage URL (default: ``$LRSEARCH_STORAGE``, then ``sqlite:///lrsearch.db``).
        study_name: Overrides ``[study] name``.
        n_trials: The study's total budget of finished trials; overrides ``[study] n_trials``.
        timeout: Seconds after which no new trial starts; overrides ``[study] timeout``.
        device: ``auto`` (default), ``cpu``, ``cuda``, ``cuda:N``.
        on_trial: Called after every trial (a progress bar hangs here).
        train_fn: Trains one trial in place of ``trainer.train_one`` (``train_trial``'s
            signature); replaceable for tests and benchmarks. Batched trials (``[train]
            batch_trials``) still stack with ``trainer.train_many``, and use it when they cannot.
        trainer: Trains the trials (default: ``lrsearch.training.DEFAULT``, whose prefix cache
            the process's searches share).
        task: The task object, in place of importing ``[task] entry`` (see :func:`prepare`).
        storage_retry: Seconds a storage call is retried while the database is unreachable
            (default ``$LRSEARCH_STORAGE_RETRY``, else 600).

    Returns:
        What this run did; ``interrupted`` is set when Ctrl-C or SIGTERM stopped it (a SIGTERM is
        delivered again after cleanup where SIGTERM had its default action: it ends the program).

    Raises:
        LrsearchError: Bad input (nothing is written), or the task failed in a way that is a bug in
            the task (the trial is marked failed with the reason first).
    """
    prepared = prepare(spec, device=device, task=task)
    budget = search_budget(spec, n_trials if n_trials is not None else spec.study.n_trials)
    name = study_name or spec.study.name
    url = resolve_url(storage)
    store = _connect(url, storage_retry)
    study, resumed = _open_study(store, name, prepared)
    if resumed:
        study.sampler = make_sampler(
            spec, space=prepared.space, offset=len(store.get_all_trials(compat.study_id(study)))
        )
    loop = _Loop(
        study=study,
        store=store,
        prepared=prepared,
        device=resolve_device(device),
        budget=budget,
        limit=timeout if timeout is not None else spec.study.timeout,
        trainer=_trainer(trainer, train_fn),
        on_trial=on_trial,
    )
    summary = _search(loop, _summary(loop, name, url, resumed=resumed))
    if (
        spec.winner.reseeds
        and not summary.interrupted
        and store.count(compat.study_id(study)).counted >= budget
    ):
        # The search budget is met: the retrainings reserved from n_trials name the winner.
        # The study file given here is the user's own: its entry is allowed (lrsearch.trust).
        summary.confirmation = confirm_study(
            store, name, device=device, train_fn=train_fn, allow_tasks=(spec.task.entry,)
        )
    return summary


def run_worker(
    storage: str | None,
    study_name: str,
    *,
    n_trials: int | None = None,
    device: str | None = None,
    on_trial: OnTrial | None = None,
    train_fn: TrainFn | None = None,
    trainer: TrainerLike | None = None,
    allow_tasks: Sequence[str] = (),
    storage_retry: float | None = None,
) -> SearchSummary:
    """Join an existing study and run its trials until its budget is met, with its stored spec.

    Only the task's code must be importable here; the study file is not needed. Several workers,
    on one machine or many, share the study's budget (the rule is in this module's docstring).
    SIGTERM / SIGINT stop the worker cleanly: its trial is marked interrupted and queued again.

    Args:
        storage: Storage URL (resolved as in :func:`lrsearch.storage.resolve_url`); a database that
            is not up yet is waited for (``$LRSEARCH_DB_WAIT`` seconds, default 60).
        study_name: The study, created before with ``lrsearch create`` (or ``run``).
        n_trials: The study's total budget; default the stored ``[study] n_trials``.
        device: ``auto`` (default), ``cpu``, ``cuda``, ``cuda:N``.
        on_trial: Called after every trial this worker finishes.
        train_fn: Trains one trial in place of ``trainer.train_one`` (``train_trial``'s
            signature); replaceable for tests and benchmarks. Batched trials (``[train]
            batch_trials``) still stack with ``trainer.train_many``, and use it when they cannot.
        trainer: Trains the trials (default: ``lrsearch.training.DEFAULT``, whose prefix cache
            the process's searches share).
        allow_tasks: Task entries this worker may run besides the built-in ones and
            ``$LRSEARCH_ALLOW_TASKS`` (see :mod:`lrsearch.trust`).
        storage_retry: Seconds a storage call is retried while the database is unreachable
            (default ``$LRSEARCH_STORAGE_RETRY``, else 600).

    Returns:
        What this worker did; ``interrupted`` is set when a signal stopped it.

    Raises:
        StudyNotFoundError: No such study.
        UntrustedTaskError: The stored task entry is not allowed here (nothing is imported).
        LrsearchError: The stored spec or the task does not load here, or a bug in the task.
    """
    url = resolve_url(storage)
    store = _connect(url, storage_retry)
    study = load_study(store, study_name)
    spec = stored_spec(study)
    check_stored_entry(spec.task.entry, study_name, allow_tasks)
    prepared = prepare(spec, device=device)
    study.sampler = make_sampler(spec, space=prepared.space, seeded=False)
    study.pruner = make_pruner(spec)
    if GROUPS_ATTR not in study.user_attrs:
        study.set_user_attr(GROUPS_ATTR, {g: list(p) for g, p in prepared.groups.patterns})
    loop = _Loop(
        study=study,
        store=store,
        prepared=prepared,
        device=resolve_device(device),
        budget=search_budget(spec, n_trials if n_trials is not None else spec.study.n_trials),
        limit=spec.study.timeout,
        trainer=_trainer(trainer, train_fn),
        on_trial=on_trial,
    )
    return _search(loop, _summary(loop, study_name, url, resumed=True))


class _Timing:
    """Seconds in the trainer, and of them in the trials' reports (storage and pruner)."""

    def __init__(self) -> None:
        self.trainer = self.reports = 0.0


@dataclass(frozen=True)
class _Loop:
    """What the one search loop needs, from ``run`` or ``worker``."""

    study: optuna.Study
    store: ResilientStorage
    prepared: Prepared
    device: Any
    budget: int
    limit: float | None
    trainer: TrainerLike
    on_trial: OnTrial | None
    # Why a batch first fell back to one trial at a time (then logged as a warning), if one did.
    fell_back: list[str] = field(default_factory=list)
    timing: _Timing = field(default_factory=_Timing)

    @property
    def grace(self) -> int:
        return self.prepared.spec.study.grace_period

    @property
    def two_objectives(self) -> bool:
        """``[study] cost``: metric and cost are told, and Optuna takes no reports."""
        return len(self.study.directions) > 1


class _OneByFunction:
    """A trainer whose ``train_one`` is a given function; ``train_many`` is the base trainer's."""

    def __init__(self, train_fn: TrainFn, base: TrainerLike) -> None:
        self.train_one = train_fn
        self.train_many = base.train_many


def _trainer(trainer: TrainerLike | None, train_fn: TrainFn | None) -> TrainerLike:
    base = trainer if trainer is not None else DEFAULT
    return base if train_fn is None else _OneByFunction(train_fn, base)


def _summary(loop: _Loop, name: str, url: str, *, resumed: bool) -> SearchSummary:
    return SearchSummary(
        study=name,
        storage=mask_url(url),
        direction=loop.prepared.direction,
        budget=loop.budget,
        resumed=resumed,
        already_finished=0,
    )


def _search(loop: _Loop, summary: SearchSummary) -> SearchSummary:
    """The loop of ``run`` and ``worker``: sweep, count, ask, train, tell, until the budget."""
    study = loop.study
    stop = _StopSignals()
    current: list[optuna.Trial] = []  # the trial in flight, for an interrupt that lands outside it
    start = time.perf_counter()
    look = _Looker(loop)
    loop.store.should_stop = lambda: stop.requested  # a signal ends a wait for the database
    # Installed until the very end: a signal that comes late is only noted, never raised in the
    # search's last writes (nor in a garbage collector's callback, as a printed traceback).
    with stop.installed():
        try:
            with (
                _cleaned_up(loop, summary, current),
                _Heartbeat(loop.store, loop.prepared.spec.study.heartbeat_interval) as beat,
            ):
                count = look(sweep=True)  # also of the trials of workers that died before this one
                summary.already_finished = count.counted
                _update_best(summary, study)  # once here, then from this run's own results
                while not stop.requested and not (
                    loop.limit is not None and time.perf_counter() - start >= loop.limit
                ):
                    if not count.start_another(loop.budget):
                        if count.counted >= loop.budget:
                            break
                        # The trials other workers are running would meet the budget: wait for them
                        # (and re-run one of them if its worker is lost).
                        stop.wait(POLL_S)
                        count = look()
                        continue
                    if loop.prepared.spec.train.batch_trials > 1:
                        outcomes = _run_batch(loop, stop, beat, current, count)
                        # all of them recorded
                        stops = [_record(loop, summary, o) for o in outcomes]
                        if any(stops):
                            break
                        count = look()
                        continue
                    try:
                        outcome = _run_one(loop, stop, beat, current)
                    finally:
                        beat.track(None)
                    if _record(loop, summary, outcome):
                        break
                    count = look()
                summary.interrupted = stop.requested or summary.count("interrupted") > 0
                if not stop.requested:  # a stop asked is not delayed by a sweep
                    # before leaving: a trial lost meanwhile is failed, queued again
                    look(sweep=True)
        finally:
            summary.seconds = time.perf_counter() - start
            summary.training_seconds = loop.timing.trainer - loop.timing.reports
            loop.store.release()
        _update_best(summary, study)  # other workers may have found better meanwhile
    return summary


@contextmanager
def _cleaned_up(loop: _Loop, summary: SearchSummary, current: list[optuna.Trial]) -> Iterator[None]:
    """A KeyboardInterrupt that lands outside training (from ``on_trial``, or with no handler
    installed: not the main thread) leaves no trial of ours RUNNING. Inside the installed handler,
    so that more signals meanwhile are only noted."""
    try:
        yield
    except KeyboardInterrupt:
        summary.interrupted = True
        for trial in current:
            _fail_if_running(loop.study, trial)


def _record(loop: _Loop, summary: SearchSummary, outcome: TrialOutcome) -> bool:
    """Note a trial's outcome in the summary and tell ``on_trial``; whether the search stops."""
    summary.outcomes.append(outcome)
    if outcome.outcome == "interrupted":
        return True
    if outcome.outcome == "complete":
        _note_best(summary, outcome)
    if loop.on_trial is not None and outcome.outcome != "lost":
        loop.on_trial(outcome, summary)
    return False


class _Looker:
    """Reads the study before each trial: its count always (one query), and its heartbeats with a
    sweep of lost trials once per heartbeat interval (a trial cannot go stale faster), and also
    whenever the count alone cannot tell whether to start a trial: near the budget, where a dead
    trial must not hold the others up."""

    def __init__(self, loop: _Loop) -> None:
        self.loop = loop
        self.interval = loop.prepared.spec.study.heartbeat_interval
        self.next_sweep = 0.0

    def __call__(self, *, sweep: bool = False) -> BudgetCount:
        loop = self.loop
        study_id = compat.study_id(loop.study)
        if not sweep and time.monotonic() < self.next_sweep:
            count = loop.store.count(study_id)  # every RUNNING trial taken for alive
            if count.start_another(loop.budget) or count.counted >= loop.budget:
                return count
        self.next_sweep = time.monotonic() + self.interval
        look = loop.store.look(study_id, grace=loop.grace, orphan_after=ORPHAN_AFTER_S)
        # Just after an outage every heartbeat is old: the other workers get a grace period to
        # beat again before their trials are taken for lost (and re-run for nothing).
        settled = time.monotonic() - loop.store.recovered_at > loop.grace
        if look.lost and not settled:  # taken for alive meanwhile
            return replace(look.count, running=look.count.running + len(look.lost))
        if look.lost and _sweep(loop.study, loop.store, look.lost, loop.grace):
            look = loop.store.look(study_id, grace=loop.grace, orphan_after=ORPHAN_AFTER_S)
        return look.count


def _sweep(study: optuna.Study, store: ResilientStorage, lost: Sequence[int], grace: int) -> int:
    """Fail the trials whose worker is gone and queue their parameters again; how many."""
    swept = 0
    for trial_id in lost:
        trial = store.get_trial(trial_id)
        # A trial whose worker died before sampling it has no configuration to re-run, and must
        # not use the budget (the budget rule skips interrupted trials).
        sampled = bool(_params(study, trial))
        try:
            # Attributes first: a finished trial takes no more writes.
            outcome, reason = ("failed", LOST_REASON) if sampled else ("interrupted", _UNSAMPLED)
            store.set_trial_user_attr(trial_id, OUTCOME_ATTR, outcome)
            store.set_trial_user_attr(trial_id, REASON_ATTR, reason)
            store.set_trial_state_values(trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # its worker finished it after all, or another worker swept it first
        swept += 1
        if not sampled:
            _log.warning(
                "lrsearch: trial %d lost its worker before it was sampled: not counted, nothing "
                "to re-run",
                trial.number,
            )
            continue
        queued = _queue_again(study, trial, lost=True)
        _log.warning(
            "lrsearch: trial %d lost its worker (no heartbeat for %d s): failed, %s",
            trial.number,
            grace,
            "its parameters queued again"
            if queued
            else f"not queued again (its worker was lost {MAX_LOSSES + 1} times)",
        )
    return swept


def _params(study: optuna.Study, trial: FrozenTrial | optuna.Trial) -> dict[str, Any]:
    """The trial's configuration: its sampled parameters, or, for a queued trial not sampled yet
    (its worker died or was stopped first), the parameters it was queued with."""
    if trial.params:
        return dict(trial.params)
    stored = (
        trial
        if isinstance(trial, FrozenTrial)
        else compat.study_storage(study).get_trial(compat.trial_id(trial))
    )
    return dict(stored.system_attrs.get("fixed_params") or {})


def _queue_again(study: optuna.Study, trial: FrozenTrial | optuna.Trial, *, lost: bool) -> bool:
    """Queue ``trial``'s parameters as a new trial that replaces it; whether it was queued."""
    losses = int(trial.user_attrs.get(LOSSES_ATTR, 0)) + int(lost)
    params = _params(study, trial)
    if not params or losses > MAX_LOSSES:
        return False
    # enqueue_trial, not Optuna's RetryHeartbeatStaleTrialCallback: that copies the system
    # attributes, among them the pruner's rung records, which a re-run must earn anew.
    study.enqueue_trial(params, user_attrs={RETRY_OF_ATTR: trial.number, LOSSES_ATTR: losses})
    return True


def _fail_if_running(study: optuna.Study, trial: optuna.Trial) -> None:
    store, trial_id = compat.study_storage(study), compat.trial_id(trial)
    if store.get_trial(trial_id).state == TrialState.RUNNING:
        try:
            store.set_trial_user_attr(trial_id, OUTCOME_ATTR, Outcome.INTERRUPTED.value)
            store.set_trial_user_attr(trial_id, REASON_ATTR, Outcome.INTERRUPTED.value)
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        except UpdateFinishedTrialError:
            return
        _queue_again(study, trial, lost=False)


def _update_best(summary: SearchSummary, study: optuna.Study) -> None:
    # Not study.best_trial: it refuses two-objective studies, and its choice among equal values
    # depends on the database's row order; ours is the earliest.
    ranked = rank(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
        maximize=summary.direction == "maximize",
    )
    if not ranked:  # no complete trial yet
        return
    best = ranked[0]
    summary.best_number = best.number
    summary.best_value = metric(best)
    summary.best_lrs = trial_lrs(best)


def _note_best(summary: SearchSummary, outcome: TrialOutcome) -> None:
    assert outcome.value is not None
    sign = 1.0 if summary.direction == "maximize" else -1.0
    if summary.best_value is None or sign * (outcome.value - summary.best_value) > 0:
        summary.best_number = outcome.number
        summary.best_value = outcome.value
        summary.best_lrs = dict(outcome.lrs)


class _StopSignals:
    """SIGTERM and SIGINT during a search: the trial in training is interrupted at once; anywhere
    else (a storage write, a sweep, asking for a trial, a wait for the database) the loop stops at
    its next step, so no write is cut in half and no trial is left RUNNING. More signals change
    nothing: a KeyboardInterrupt raised outside training (as a second Ctrl-C once did) can land
    between a trial's creation and its first heartbeat, or in the cleanup, and leave it RUNNING.

    On leaving, the previous handlers come back, and a SIGTERM received is sent again where the
    previous SIGTERM handler was the default one: a program that runs a search in-process ends on
    SIGTERM as it would have without it (a ``timeout`` around a test suite must stop it).

    Installed from the main thread only (elsewhere signals cannot be handled); without it,
    KeyboardInterrupt is handled where it lands, as best as can be.
    """

    def __init__(self) -> None:
        self.requested = False
        self.received: set[int] = set()
        self._training = False
        self._woken = threading.Event()

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGTERM, signal.SIGINT)
        previous = {s: signal.getsignal(s) for s in signals}
        for s in signals:
            signal.signal(s, self._handle)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
            if signal.SIGTERM in self.received and previous[signal.SIGTERM] in (
                signal.SIG_DFL,
                None,
            ):
                signal.raise_signal(signal.SIGTERM)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.received.add(signum)
        self._woken.set()
        # The interrupt may land where Python swallows it (a weakref callback, a __del__): then
        # the trial's next report raises it again (`writing`).
        if self._training:
            self._training = False  # once: a signal more must not interrupt the interrupt
            raise KeyboardInterrupt

    @contextmanager
    def training(self) -> Iterator[None]:
        """Where a signal interrupts at once."""
        if self.requested:
            raise KeyboardInterrupt
        self._training = True
        try:
            yield
        finally:
            self._training = False

    @contextmanager
    def writing(self) -> Iterator[None]:
        """A storage write inside training: a signal waits for it, then interrupts."""
        was = self._training
        self._training = False
        try:
            yield
        finally:
            self._training = was
        if was and self.requested:
            raise KeyboardInterrupt

    def wait(self, seconds: float) -> None:
        """Sleep, woken early by a signal."""
        self._woken.wait(seconds)


class _Heartbeat:
    """Keeps the trials in hand alive (one, or a batch): their heartbeats, every ``interval``
    seconds, from a thread.

    Optuna records heartbeats inside ``study.optimize`` only; an ask/tell loop must do it itself.
    The thread never dies of a storage error (a dead heartbeat thread gets live trials failed): it
    says so and tries again at the next beat.
    """

    def __init__(self, store: ResilientStorage, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._trial_ids: tuple[int, ...] = ()
        # Messages name a trial by its number in the study, as every other line does, not by the
        # database's id.
        self._numbers: dict[int, int] = {}
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lrsearch-heartbeat", daemon=True)
        self.failures = 0

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._trial_ids = ()
        self._closing.set()
        self._thread.join(timeout=5.0)  # a beat stuck on a locked database is left to die with us

    def track(self, trial_id: int | None, number: int | None = None) -> None:
        """Beat for ``trial_id`` (trial ``number``) alone from now on (``None``: for no trial)."""
        if trial_id is not None:
            # At once, not one interval later: a trial whose worker dies before its first
            # heartbeat could never be found stale.
            self._store.record_heartbeat(trial_id)
        self._trial_ids = () if trial_id is None else (trial_id,)
        if trial_id is not None and number is not None:
            self._numbers[trial_id] = number

    def add(self, trial_id: int, number: int | None = None) -> None:
        """Beat for ``trial_id`` too from now on, with its first heartbeat at once (a batch)."""
        self._store.record_heartbeat(trial_id)
        self._trial_ids = (*self._trial_ids, trial_id)
        if number is not None:
            self._numbers[trial_id] = number

    def _run(self) -> None:
        failing: set[int] = set()
        while not self._closing.wait(self._interval):
            for trial_id in self._trial_ids:  # a tuple: the main thread swaps it, never edits it
                try:
                    self._store.backend.record_heartbeat(trial_id)
                except Exception as e:
                    self.failures += 1
                    if trial_id not in failing:
                        _log.warning(
                            "lrsearch: heartbeat of trial %s failed (%s); trying again in %g s",
                            self._numbers.get(trial_id, f"id {trial_id}"),
                            type(e).__name__,
                            self._interval,
                        )
                    failing.add(trial_id)
                else:
                    failing.discard(trial_id)


class _TrialLost(Exception):
    """The trial in training was failed by another worker's sweep."""


def _run_one(
    loop: _Loop,
    stop: _StopSignals,
    beat: _Heartbeat,
    current: list[optuna.Trial],
) -> TrialOutcome:
    current.clear()
    trial = loop.study.ask()
    current.append(trial)
    beat.track(compat.trial_id(trial), trial.number)
    outcome, error = _train_one(loop, stop, _Slot(trial, time.perf_counter()))
    if error is not None:
        raise error
    return outcome


class _Slot:
    """An asked trial on its way to :func:`_finish`: its sample once drawn, when it started, and
    the last step it reported (a diverged trial's NaN is reported one past it)."""

    __slots__ = ("last_step", "sample", "start", "trial")

    def __init__(self, trial: optuna.Trial, start: float) -> None:
        self.trial = trial
        self.start = start
        self.sample: Sample | None = None
        self.last_step = -1


def _sample(loop: _Loop, trial: optuna.Trial) -> Sample:
    """The trial's rates, stored with it (``lrsearch.trial``) before it trains."""
    sample = loop.prepared.space.sample(trial)
    loop.store.set_new_trial_user_attr(
        compat.trial_id(trial),
        TRIAL_ATTR,
        {
            "lrs": sample.lrs,
            "weight_decay": sample.weight_decay,
            "host": _HOST,
            "pid": os.getpid(),
        },
    )
    return sample


def _seed(loop: _Loop, trial: optuna.Trial) -> int:
    """The trial's training seed (initial weights, data order), batched or not."""
    return (loop.prepared.spec.study.seed or 0) + trial.number


def _reporter(loop: _Loop, stop: _StopSignals, slot: _Slot) -> Report:
    """The trial's ``report``: stores each evaluation and raises ``TrialPruned`` when the pruner
    says so."""
    trial = slot.trial
    two_objectives = loop.two_objectives

    def report(step: int, value: float) -> None:
        slot.last_step = max(slot.last_step, step)
        if two_objectives:
            return  # Optuna takes no intermediate values (and prunes nothing) with two
        start = time.perf_counter()
        with stop.writing():
            try:
                trial.report(value, step)
                prune = trial.should_prune()
            except UpdateFinishedTrialError as e:
                raise _TrialLost from e
            finally:
                loop.timing.reports += time.perf_counter() - start
        if prune:
            raise optuna.TrialPruned(f"pruned at step {step} (value {value:.4g})")

    return report


def _train_one(
    loop: _Loop, stop: _StopSignals, slot: _Slot
) -> tuple[TrialOutcome, LrsearchError | None]:
    """Sample (unless sampled already) and train an asked trial alone, then decide its fate."""
    prepared = loop.prepared
    result: TrainResult | BaseException
    try:
        if slot.sample is None:
            slot.sample = _sample(loop, slot.trial)
        report = _reporter(loop, stop, slot)
        start = time.perf_counter()
        try:
            with stop.training():
                result = loop.trainer.train_one(
                    prepared.task,
                    prepared.groups,
                    slot.sample,
                    prepared.spec.train,
                    device=loop.device,
                    seed=_seed(loop, slot.trial),
                    report=report,
                )
        finally:
            loop.timing.trainer += time.perf_counter() - start
    except (KeyboardInterrupt, Exception) as e:
        result = e
    return _settle(loop, slot, result)


def _settle(
    loop: _Loop, slot: _Slot, result: TrainResult | BaseException
) -> tuple[TrialOutcome, LrsearchError | None]:
    """The trial's outcome from what its training gave, a result or the exception that ended it,
    told through :func:`_finish`; and the error that must stop the search after it (the task's
    bug), if any."""
    trial, sample, start = slot.trial, slot.sample, slot.start
    if isinstance(result, TrainResult):
        assert sample is not None
        cost = loop.prepared.cost(result, sample) if loop.two_objectives else None
        outcome = _finish(
            loop,
            trial,
            sample,
            start,
            "complete",
            value=result.value,
            step=slot.last_step + 1,
            cost=cost,
        )
        return outcome, None
    if isinstance(result, (_TrialLost, UpdateFinishedTrialError)):
        return _lost(trial, sample, start, loop.grace), None
    if isinstance(result, optuna.TrialPruned):
        return _finish(loop, trial, sample, start, "pruned", reason=str(result) or None), None
    if isinstance(result, TrialFailure):
        kind = "diverged" if result.diverged else "failed"
        step = slot.last_step + 1
        return _finish(loop, trial, sample, start, kind, reason=result.reason, step=step), None
    if isinstance(result, KeyboardInterrupt):
        return _finish(loop, trial, sample, start, "interrupted", reason="interrupted"), None
    if isinstance(result, StorageUnavailable):
        # Not the configuration's fault: stored interrupted and queued again, once the database
        # answers (within the limit again); else it stays RUNNING and a sweep queues it again.
        reason = "interrupted: the database was unreachable"
        return _finish(loop, trial, sample, start, "interrupted", reason=reason), result
    if isinstance(result, LrsearchError):
        return _finish(loop, trial, sample, start, "failed", reason=str(result)), result
    if not isinstance(result, Exception):  # SystemExit and the like are never caught
        raise result
    reason = f"{type(result).__name__}: {result}"
    outcome = _finish(loop, trial, sample, start, "failed", reason=reason)
    error = TaskError(
        f"trial {trial.number} failed in the task's code ({reason}); the trial is stored as "
        "failed and the study kept; fix the task (--debug shows the traceback) and run again"
    )
    error.__cause__ = result  # `raise error from result`, raised later
    return outcome, error


def _run_batch(
    loop: _Loop,
    stop: _StopSignals,
    beat: _Heartbeat,
    current: list[optuna.Trial],
    count: BudgetCount,
) -> list[TrialOutcome]:
    """Ask up to ``[train] batch_trials`` trials, one at a time while the budget rule lets this
    worker start another (``count``: the last look, which must say yes to the first), and train
    them together.

    Raises:
        LrsearchError: The task failed in a way that is a bug in the task, after every trial of the
            batch has its fate.
    """
    current.clear()
    slots: list[_Slot] = []
    try:
        while True:
            trial = loop.study.ask()
            current.append(trial)
            beat.add(compat.trial_id(trial), trial.number)
            slots.append(_Slot(trial, time.perf_counter()))
            # The next look would count this trial running, and one queued trial fewer if there
            # was one (ask takes a queued trial first).
            count = replace(count, running=count.running + 1, waiting=max(count.waiting - 1, 0))
            if (
                len(slots) >= loop.prepared.spec.train.batch_trials
                or stop.requested
                or not count.start_another(loop.budget)
            ):
                break
        outcomes, error = _train_batch(loop, stop, slots)
    finally:
        beat.track(None)
    if error is not None:
        raise error
    return outcomes


def _train_batch(
    loop: _Loop, stop: _StopSignals, slots: list[_Slot]
) -> tuple[list[TrialOutcome], LrsearchError | None]:
    """Sample and train asked trials together (one at a time when they cannot stack), then decide
    each one's fate; the first error that must stop the search, if any."""
    prepared = loop.prepared
    results: list[TrainResult | BaseException | None] = [None] * len(slots)
    try:
        ready: list[int] = []
        samples: list[Sample] = []
        for i, slot in enumerate(slots):
            try:
                slot.sample = _sample(loop, slot.trial)
            except Exception as e:  # decided as for a trial alone; the others still train
                results[i] = e
            else:
                ready.append(i)
                samples.append(slot.sample)
        if any(r is not None and not isinstance(r, UpdateFinishedTrialError) for r in results):
            # That error stops the search after this batch: train none of the others.
            results = [KeyboardInterrupt() if r is None else r for r in results]
            ready = []
        if ready:
            start = time.perf_counter()
            try:
                with stop.training():
                    trained = loop.trainer.train_many(
                        prepared.task,
                        prepared.groups,
                        samples,
                        prepared.spec.train,
                        device=loop.device,
                        seeds=[_seed(loop, slots[i].trial) for i in ready],
                        reports=[_reporter(loop, stop, slots[i]) for i in ready],
                    )
            finally:
                loop.timing.trainer += time.perf_counter() - start
            for i, done in zip(ready, trained, strict=True):
                results[i] = done
    except BatchingUnsupported as e:
        # Raised before any report: the same trials, one at a time (below). Warned once a
        # search: the same cause recurs batch after batch (with other trial numbers).
        _log.log(
            logging.DEBUG if loop.fell_back else logging.WARNING,
            "lrsearch: [train] batch_trials: cannot batch these trials (%s); training them one "
            "at a time",
            e.reason,
        )
        if not loop.fell_back:
            loop.fell_back.append(e.reason)
    except (KeyboardInterrupt, Exception) as e:  # every trial not ended yet ends with it
        results = [e if r is None else r for r in results]
    outcomes: list[TrialOutcome] = []
    error: LrsearchError | None = None
    for slot, result in zip(slots, results, strict=True):
        stopping = error is not None or any(o.outcome == "interrupted" for o in outcomes)
        if result is not None:
            outcome, failed = _settle(loop, slot, result)
        elif stopping:
            # The search stops after this batch: a trial not trained yet is not trained at all.
            outcome, failed = _settle(loop, slot, KeyboardInterrupt())
        else:
            outcome, failed = _train_one(loop, stop, slot)
        outcomes.append(outcome)
        error = error or failed
    return outcomes, error


def _lost(trial: optuna.Trial, sample: Sample | None, start: float, grace: int) -> TrialOutcome:
    _log.warning(
        "lrsearch: trial %d was failed by another worker, which saw no heartbeat of it for %d s; "
        "dropped here (a re-run, if queued, goes on elsewhere)",
        trial.number,
        grace,
    )
    return TrialOutcome(
        number=trial.number,
        outcome="lost",
        value=None,
        lrs=dict(sample.lrs) if sample else {},
        seconds=time.perf_counter() - start,
        reason=LOST_REASON,
    )


def _finish(
    loop: _Loop,
    trial: optuna.Trial,
    sample: Sample | None,
    start: float,
    outcome: str,
    *,
    value: float | None = None,
    reason: str | None = None,
    step: int = 0,
    cost: float | None = None,
) -> TrialOutcome:
    """Tell Optuna the trial's fate; the one place that decides it.

    ``step`` is where a diverged trial's NaN is reported: one past its last report. ``cost`` is
    the second objective of a study with ``[study] cost``.
    """
    if outcome == "complete":
        try:
            value = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            outcome, reason = "failed", f"the trainer returned {value!r}, not a number"
            value = None
        else:
            if not math.isfinite(value):
                # Optuna refuses to complete a trial with NaN/inf: a divergence the trainer missed.
                outcome, reason = "diverged", f"diverged: final value is {value}"
                value = None
    state = TrialState[Outcome(outcome).optuna_state]
    try:
        if outcome != "complete":
            trial.set_user_attr(OUTCOME_ATTR, outcome)
        if reason and outcome != "pruned":
            trial.set_user_attr(REASON_ATTR, reason)
        two = loop.two_objectives
        if outcome == "diverged" and not two:
            # NaN as the last intermediate value: TPE ranks it worst among trials that got as far.
            # (A two-objective trial takes no reports: it stays PRUNED without a value.)
            trial.report(math.nan, step)
        told_values: float | list[float] | None = None
        if state == TrialState.COMPLETE:
            assert value is not None
            told_values = [value, float(cost if cost is not None else math.nan)] if two else value
        told = compat.tell(loop.study, trial, told_values, state)
    except UpdateFinishedTrialError:
        told = None
    if told != state:  # another worker's sweep failed it first
        return _lost(trial, sample, start, loop.grace)
    if outcome == "interrupted":
        _queue_again(loop.study, trial, lost=False)
    return TrialOutcome(
        number=trial.number,
        outcome=outcome,
        value=value,
        lrs=dict(sample.lrs) if sample else {},
        seconds=time.perf_counter() - start,
        reason=reason,
    )


class _NotebookModule(types.ModuleType):
    """This module, callable as ``lrsearch.search(model_fn, train, val, ...)``.

    Importing ``lrsearch.search`` makes it the package's ``search`` attribute, which is also the
    name of the notebook API (:func:`lrsearch.notebook.search`): a call goes there.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from lrsearch.notebook import search

        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _NotebookModule

"""The search's entry points: ``create`` (:func:`create_study`), ``run`` (:func:`run_search`) and
``worker`` (:func:`run_worker`), over the one loop of :mod:`lrsearch.search.loop`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import optuna

from lrsearch import _optuna_compat as compat
from lrsearch.retrain.confirm import confirm_study, search_budget
from lrsearch.schema import GROUPS_ATTR
from lrsearch.search.context import TrainFn, _Loop, _trainer
from lrsearch.search.factories import make_pruner, make_sampler
from lrsearch.search.liveness import Liveness
from lrsearch.search.loop import _search, _summary
from lrsearch.search.results import OnTrial, SearchSummary, TrialOutcome
from lrsearch.space import enqueue_start
from lrsearch.spec import StudySpec
from lrsearch.storage import (
    ResilientStorage,
    create_or_resume,
    db_wait,
    load_study,
    mask_url,
    open_storage,
    resolve_url,
    stored_spec,
)
from lrsearch.tasks import Task
from lrsearch.training import TrainerLike, resolve_device
from lrsearch.training.prepare import Prepared, prepare
from lrsearch.trust import check_stored_entry

__all__ = [
    "CreatedStudy",
    "Liveness",
    "SearchSummary",
    "TrialOutcome",
    "create_study",
    "run_search",
    "run_worker",
]


def _connect(url: str, retry_s: float | None = None) -> ResilientStorage:
    """The storage for a search: waits for a database still starting, retries lost connections
    (for ``retry_s`` seconds, default :func:`lrsearch.storage.outage.retry_limit`)."""
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
    _record_groups(study, prepared)  # also when a first run died right after creating it
    enqueue_start(study, prepared.space)
    return study, resumed


def _record_groups(study: optuna.Study, prepared: Prepared) -> None:
    """Store the resolved groups' patterns with the study, unless it has them."""
    if GROUPS_ATTR not in study.user_attrs:
        study.set_user_attr(GROUPS_ATTR, {g: list(p) for g, p in prepared.groups.patterns})


def _budget(spec: StudySpec, n_trials: int | None) -> int:
    """The trials to search: ``n_trials`` (default ``[study] n_trials``) less [winner]'s share."""
    return search_budget(spec, n_trials if n_trials is not None else spec.study.n_trials)


def _search_study(
    store: ResilientStorage,
    study: optuna.Study,
    prepared: Prepared,
    *,
    name: str,
    url: str,
    resumed: bool,
    budget: int,
    limit: float | None,
    device: str | None,
    on_trial: OnTrial | None,
    train_fn: TrainFn | None,
    trainer: TrainerLike | None,
    liveness: Liveness | None,
) -> SearchSummary:
    """The set-up ``run`` and ``worker`` share once their study is open and its sampler set: the
    loop over it, run until the budget is met (:func:`lrsearch.search.loop._search`)."""
    loop = _Loop(
        study=study,
        store=store,
        prepared=prepared,
        device=resolve_device(device),
        budget=budget,
        limit=limit,
        trainer=_trainer(trainer, train_fn),
        on_trial=on_trial,
        liveness=liveness or Liveness(),
    )
    return _search(loop, _summary(loop, name, url, resumed=resumed))


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
    liveness: Liveness | None = None,
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
        liveness: How lost trials are found and re-run (default :class:`Liveness`'s defaults;
            tests shorten them).

    Returns:
        What this run did; ``interrupted`` is set when Ctrl-C or SIGTERM stopped it (a SIGTERM is
        delivered again after cleanup where SIGTERM had its default action: it ends the program).

    Raises:
        LrsearchError: Bad input (nothing is written), or the task failed in a way that is a bug in
            the task (the trial is marked failed with the reason first).
    """
    prepared = prepare(spec, device=device, task=task)
    budget = _budget(spec, n_trials)  # before any write: a budget [winner] takes whole is refused
    name = study_name or spec.study.name
    url = resolve_url(storage)
    store = _connect(url, storage_retry)
    study, resumed = _open_study(store, name, prepared)
    if resumed:
        study.sampler = make_sampler(
            spec, space=prepared.space, offset=len(store.get_all_trials(compat.study_id(study)))
        )
    summary = _search_study(
        store,
        study,
        prepared,
        name=name,
        url=url,
        resumed=resumed,
        budget=budget,
        limit=timeout if timeout is not None else spec.study.timeout,
        device=device,
        on_trial=on_trial,
        train_fn=train_fn,
        trainer=trainer,
        liveness=liveness,
    )
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
    liveness: Liveness | None = None,
) -> SearchSummary:
    """Join an existing study and run its trials until its budget is met, with its stored spec.

    Only the task's code must be importable here; the study file is not needed. Several workers,
    on one machine or many, share the study's budget (the rule: :mod:`lrsearch.search.loop`).
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
        liveness: How lost trials are found and re-run (default :class:`Liveness`'s defaults;
            tests shorten them).

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
    _record_groups(study, prepared)
    return _search_study(
        store,
        study,
        prepared,
        name=study_name,
        url=url,
        resumed=True,
        budget=_budget(spec, n_trials),
        limit=spec.study.timeout,
        device=device,
        on_trial=on_trial,
        train_fn=train_fn,
        trainer=trainer,
        liveness=liveness,
    )

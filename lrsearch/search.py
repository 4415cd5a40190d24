"""The search loop: ask Optuna for a trial, train it, tell the result.

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
interrupted   FAIL            Ctrl-C / SIGTERM; the study stays intact and can be resumed, and
                              the trial does not count against the budget
============  ==============  ================================================================

A trial that "completes" with a NaN/inf value is diverged too (Optuna refuses to complete it).

Each trial stores its resolved rates in one user attribute (``lrsearch.trial``) so readers never
reconstruct them from the sampled parameters.
"""

from __future__ import annotations

import math
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

try:  # private but stable since Optuna 3; the dependency is pinned below 6
    from optuna.study._tell import _tell_with_warning
except ImportError:  # pragma: no cover
    _tell_with_warning = None  # type: ignore[assignment]

from lrsearch.errors import LrsearchError, TaskError, TrialFailure
from lrsearch.groups import LayerGroups, resolve_groups
from lrsearch.space import Sample, SearchSpace
from lrsearch.spec import StudySpec
from lrsearch.storage import (  # the attribute names are re-exported: they were defined here first
    GROUPS_ATTR,
    OUTCOME_ATTR,
    REASON_ATTR,
    TRIAL_ATTR,
    create_or_resume,
    mask_url,
    open_storage,
    resolve_url,
    trial_lrs,
)
from lrsearch.tasks import Task, load_task
from lrsearch.trainer import TrainResult, resolve_device, resolve_precision, train_trial

_HOST = socket.gethostname()
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

TrainFn = Callable[..., TrainResult]


@dataclass(frozen=True)
class TrialOutcome:
    """What became of one trial."""

    number: int
    outcome: str  # complete | pruned | diverged | failed | interrupted
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

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes if o.outcome == outcome)


def make_sampler(spec: StudySpec, *, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler; TPE is multivariate with group decomposition so that a group's rate is
    modelled only in the trials where that group trained (the freeze choice makes the space
    conditional).

    Args:
        spec: The study's spec; ``[study] seed`` seeds the sampler.
        offset: Trials the study already has. A resumed seeded study adds it to the seed: the same
            seed again would sample the same random start-up points as the first run did.
    """
    seed = None if spec.study.seed is None else spec.study.seed + offset
    if spec.sampler.kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        # `multivariate` and `group` are flagged experimental, yet they are what a conditional
        # space needs; the warning would print on every worker start.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=spec.sampler.n_startup_trials,
            multivariate=spec.sampler.multivariate,
            group=spec.sampler.multivariate,
            constant_liar=True,
        )


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


def prepare(spec: StudySpec, *, device: str | None = None) -> Prepared:
    """Build the task, resolve the groups on one model and check the space, before any write.

    Raises:
        LrsearchError: Any problem with the task, groups, space or device.
    """
    dev = resolve_device(device)
    resolve_precision(spec.train.precision, dev)
    try:
        task = load_task(spec.task.entry, spec.task.kwargs)
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
    return Prepared(spec, task, groups, space, direction)


def run_search(
    spec: StudySpec,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    device: str | None = None,
    on_trial: Callable[[TrialOutcome, SearchSummary], None] | None = None,
    train_fn: TrainFn = train_trial,
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
        train_fn: The trainer (``train_trial``'s signature); replaceable for benchmarks.

    Returns:
        What this run did; ``interrupted`` is set when Ctrl-C stopped it.

    Raises:
        LrsearchError: Bad input (nothing is written), or the task failed in a way that is a bug in
            the task (the trial is marked failed with the reason first).
    """
    prepared = prepare(spec, device=device)
    name = study_name or spec.study.name
    url = resolve_url(storage)
    study, resumed = create_or_resume(
        open_storage(url),
        name,
        spec,
        direction=prepared.direction,
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
    )
    trials = study.get_trials(deepcopy=False)
    if resumed:
        study.sampler = make_sampler(spec, offset=len(trials))
    if GROUPS_ATTR not in study.user_attrs:  # also when a first run died right after creating it
        study.set_user_attr(GROUPS_ATTR, {g: list(p) for g, p in prepared.groups.patterns})
    budget = n_trials if n_trials is not None else spec.study.n_trials
    limit = timeout if timeout is not None else spec.study.timeout
    finished = sum(1 for t in trials if _counts(t))
    summary = SearchSummary(
        study=name,
        storage=mask_url(url),
        direction=prepared.direction,
        budget=budget,
        resumed=resumed,
        already_finished=finished,
    )
    _update_best(summary, study)  # once here, then from this run's own results: no query per trial
    start = time.perf_counter()
    dev = resolve_device(device)
    current: list[optuna.Trial] = []  # the trial in flight, for a Ctrl-C that lands outside it
    try:
        while finished < budget and (limit is None or time.perf_counter() - start < limit):
            outcome = _run_one(study, prepared, dev, train_fn, current)
            summary.outcomes.append(outcome)
            if outcome.outcome == "interrupted":
                summary.interrupted = True
                break
            finished += 1
            if outcome.outcome == "complete":
                _note_best(summary, outcome)
            if on_trial is not None:
                on_trial(outcome, summary)
    except KeyboardInterrupt:
        # Between trials, or while a trial's fate was being stored: no trial stays RUNNING.
        summary.interrupted = True
        for trial in current:
            _fail_if_running(study, trial)
    finally:
        summary.seconds = time.perf_counter() - start
    _update_best(summary, study)  # other workers may have found better meanwhile
    return summary


def _counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a stored trial counts against the budget: finished, and not by an interrupt."""
    return trial.state in FINISHED and trial.user_attrs.get(OUTCOME_ATTR) != "interrupted"


def _fail_if_running(study: optuna.Study, trial: optuna.Trial) -> None:
    if study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
        study._storage.set_trial_user_attr(trial._trial_id, OUTCOME_ATTR, "interrupted")
        study._storage.set_trial_user_attr(trial._trial_id, REASON_ATTR, "interrupted")
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)


def _update_best(summary: SearchSummary, study: optuna.Study) -> None:
    try:
        best = study.best_trial
    except ValueError:  # no complete trial yet
        return
    summary.best_number = best.number
    summary.best_value = best.value
    summary.best_lrs = trial_lrs(best)


def _note_best(summary: SearchSummary, outcome: TrialOutcome) -> None:
    assert outcome.value is not None
    sign = 1.0 if summary.direction == "maximize" else -1.0
    if summary.best_value is None or sign * (outcome.value - summary.best_value) > 0:
        summary.best_number = outcome.number
        summary.best_value = outcome.value
        summary.best_lrs = dict(outcome.lrs)


def _tell(study: optuna.Study, trial: optuna.Trial, value: float | None, state: TrialState) -> None:
    """``study.tell`` without reading the finished trial back (what ``optimize`` does internally).

    ``study.tell`` re-reads and deep-copies the trial it just stored; that round trip alone is
    several percent of a trivial trial's cost. ``skip_if_finished``: a trial failed behind our back
    (a heartbeat sweep) must not crash the run.
    """
    if _tell_with_warning is None:  # pragma: no cover - a future Optuna without the helper
        study.tell(trial, value, state=state, skip_if_finished=True)
        return
    _tell_with_warning(
        study=study,
        trial=trial,
        value_or_values=value,
        state=state,
        skip_if_finished=True,
        suppress_warning=True,
    )


def _run_one(
    study: optuna.Study,
    prepared: Prepared,
    device: Any,
    train_fn: TrainFn,
    current: list[optuna.Trial],
) -> TrialOutcome:
    current.clear()
    trial = study.ask()
    current.append(trial)
    start = time.perf_counter()
    sample: Sample | None = None
    last_step = -1
    try:
        sample = prepared.space.sample(trial)
        trial.set_user_attr(
            TRIAL_ATTR,
            {"lrs": sample.lrs, "weight_decay": sample.weight_decay, "host": _HOST},
        )

        def report(step: int, value: float) -> None:
            nonlocal last_step
            last_step = max(last_step, step)
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} (value {value:.4g})")

        result = train_fn(
            prepared.task,
            prepared.groups,
            sample,
            prepared.spec.train,
            device=device,
            seed=(prepared.spec.study.seed or 0) + trial.number,
            report=report,
        )
    except optuna.TrialPruned as e:
        return _finish(study, trial, sample, start, "pruned", reason=str(e) or None)
    except TrialFailure as e:
        outcome = "diverged" if e.diverged else "failed"
        return _finish(study, trial, sample, start, outcome, reason=e.reason, step=last_step + 1)
    except KeyboardInterrupt:
        return _finish(study, trial, sample, start, "interrupted", reason="interrupted")
    except LrsearchError as e:
        _finish(study, trial, sample, start, "failed", reason=str(e))
        raise
    except Exception as e:
        reason = f"{type(e).__name__}: {e}"
        _finish(study, trial, sample, start, "failed", reason=reason)
        raise TaskError(
            f"trial {trial.number} failed in the task's code ({reason}); the trial is stored as "
            "failed and the study kept; fix the task (--debug shows the traceback) and run again"
        ) from e
    return _finish(study, trial, sample, start, "complete", value=result.value, step=last_step + 1)


def _finish(
    study: optuna.Study,
    trial: optuna.Trial,
    sample: Sample | None,
    start: float,
    outcome: str,
    *,
    value: float | None = None,
    reason: str | None = None,
    step: int = 0,
) -> TrialOutcome:
    """Tell Optuna the trial's fate; the one place that decides it.

    ``step`` is where a diverged trial's NaN is reported: one past its last report.
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
    state = {
        "complete": TrialState.COMPLETE,
        "pruned": TrialState.PRUNED,
        "diverged": TrialState.PRUNED,
        "failed": TrialState.FAIL,
        "interrupted": TrialState.FAIL,
    }[outcome]
    if outcome != "complete":
        trial.set_user_attr(OUTCOME_ATTR, outcome)
    if reason and outcome != "pruned":
        trial.set_user_attr(REASON_ATTR, reason)
    if outcome == "diverged":
        # NaN as the last intermediate value: TPE ranks it worst among trials that got as far.
        trial.report(math.nan, step)
    _tell(study, trial, value if state == TrialState.COMPLETE else None, state)
    return TrialOutcome(
        number=trial.number,
        outcome=outcome,
        value=value,
        lrs=dict(sample.lrs) if sample else {},
        seconds=time.perf_counter() - start,
        reason=reason,
    )

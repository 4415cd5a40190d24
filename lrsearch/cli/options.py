"""The options several commands share, each written once as a decorator.

A decorator adds its option with the same name, help text and callback wherever it is used, so one
option reads the same in every command's ``--help`` and in ``docs/cli.md``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from lrsearch.errors import LrsearchError

F = TypeVar("F", bound=Callable[..., Any])


def spec_argument(f: F) -> F:
    """``SPEC``: the study file of a command that creates, checks or runs the study in it."""
    return click.argument(
        "spec_file", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path)
    )(f)


def storage_option(f: F) -> F:
    """``--storage URL`` and ``--storage-file PATH``; the command gets one ``storage`` (or None)."""

    @functools.wraps(f)
    def with_file(*args: Any, storage_file: Path | None = None, **kwargs: Any) -> Any:
        if storage_file is not None and kwargs.get("storage") is None:
            from lrsearch.storage import resolve_url

            kwargs["storage"] = resolve_url(None, file=storage_file)
        return f(*args, **kwargs)

    with_file = click.option(
        "--storage-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        metavar="PATH",
        help="A file whose first line is the storage URL (keeps a password off command lines).",
    )(with_file)
    return click.option(  # type: ignore[return-value]
        "--storage",
        metavar="URL",
        default=None,
        help="Study database (default: --storage-file, $LRSEARCH_STORAGE, the file in "
        "$LRSEARCH_STORAGE_FILE, then sqlite:///lrsearch.db).",
    )(with_file)


def _study_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--study``: one rule for every command (``""`` is no study, never the file's name)."""
    from lrsearch.limits import study_name_problem

    problem = None if value is None else study_name_problem(value)
    if problem:
        raise LrsearchError(f"--study: a study name {problem}")
    return value


def study_option(f: F) -> F:
    """``--study NAME``, required: the study a command reads or joins."""
    return click.option(
        "--study", "study", required=True, metavar="NAME", callback=_study_name, help="Study name."
    )(f)


def spec_study_option(f: F) -> F:
    """``--study NAME`` beside ``SPEC``: the study file's ``[study] name`` unless given."""
    return click.option(
        "--study",
        "study",
        default=None,
        metavar="NAME",
        callback=_study_name,
        help="Default: [study] name.",
    )(f)


def spec_n_trials_option(f: F) -> F:
    """``--n-trials N`` beside ``SPEC``: the study file's ``[study] n_trials`` unless given."""
    return click.option(
        "--n-trials",
        type=click.IntRange(min=1),
        default=None,
        help="The study's total budget of finished trials (default: [study] n_trials).",
    )(f)


def device_option(f: F) -> F:
    """``--device``: where a command that trains runs its trials."""
    return click.option("--device", default=None, help="auto (default), cpu, cuda or cuda:N.")(f)


def threads_option(f: F) -> F:
    """``--threads N``: torch's CPU threads in a command that trains."""
    return click.option(
        "--threads",
        type=click.IntRange(min=1),
        default=None,
        metavar="N",
        help="Torch CPU threads (default: torch's own if $OMP_NUM_THREADS is set, else one per "
        "physical core this process may use). On a machine shared with other jobs, fewer.",
    )(f)


def storage_retry_option(f: F) -> F:
    """``--storage-retry SECONDS``: how long a command that trains waits out a lost database."""
    return click.option(
        "--storage-retry",
        type=click.FloatRange(min=0),
        default=None,
        metavar="SECONDS",
        help="Keep retrying a database that stopped answering for this long, with backoff "
        "(default: $LRSEARCH_STORAGE_RETRY, else 600); past it the trial is queued again and "
        "the command stops with an error.",
    )(f)


def allow_task_option(f: F) -> F:
    """``--allow-task ENTRY``: a stored task entry this command may import and run."""
    return click.option(
        "--allow-task",
        "allow_tasks",
        multiple=True,
        metavar="MODULE:FUNCTION",
        help="Run this task entry if the study names it (repeatable; MODULE:* allows a module). "
        "Built-in tasks are always allowed; $LRSEARCH_ALLOW_TASKS adds more, comma-separated.",
    )(f)


def table_or_json_option(f: F) -> F:
    """``--format table|json``: a table for people (the default) or JSON for programs."""
    return click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")(f)


def pick_options(fn: F) -> F:
    """``--within`` / ``--max-cost``: pick a trial by trading the metric against training cost."""
    fn = click.option(
        "--max-cost",
        type=float,
        default=None,
        help="The best metric among trials that cost at most this (seconds, or the study's cost).",
    )(fn)
    fn = click.option(
        "--within-sd",
        is_flag=True,
        help="The cheapest confirmed trial whose mean is within one seed sd of the best mean "
        "(needs `lrsearch confirm`).",
    )(fn)
    return click.option(
        "--within",
        type=float,
        default=None,
        help="The cheapest trial whose metric is within this of the best (0.005: half a point).",
    )(fn)


def pick_rule(within: float | None, max_cost: float | None, within_sd: bool = False) -> Any:
    """The :class:`lrsearch.pick.Rule` of :func:`pick_options` (imported when a command runs)."""
    from lrsearch.pick import Rule

    return Rule(within=within, max_cost=max_cost, within_sd=within_sd)

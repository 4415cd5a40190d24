"""The commands that run trials: ``run``, ``create``, ``worker`` and ``launch``.

A command that trains owns SIGINT and SIGTERM around the search (:func:`_interrupts`); the search
takes them over while it runs and stops cleanly, leaving the study intact.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import click

from lrsearch.cli.app import EXIT_INTERRUPTED, one_line
from lrsearch.cli.options import (
    allow_task_option,
    device_option,
    spec_argument,
    spec_n_trials_option,
    spec_study_option,
    storage_option,
    storage_retry_option,
    study_option,
    threads_option,
)
from lrsearch.cli.text import ProgressBar, summary_text, trial_line
from lrsearch.schema import Outcome


class _Interrupts:
    """SIGINT and SIGTERM in a command that trains, outside the search (which handles them itself
    while it runs): KeyboardInterrupt before it, nothing once it has returned (the command is
    ending anyway: a Ctrl-C pressed again must not land in the summary, or in a garbage
    collector's callback or the interpreter's shutdown, as a traceback)."""

    def __init__(self) -> None:
        self.ended = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if not self.ended:
            raise KeyboardInterrupt


@contextmanager
def _interrupts() -> Iterator[_Interrupts]:
    """Installs :class:`_Interrupts`; an in-process caller (not the program itself) gets its own
    handlers back afterwards, the program ignores the signals while it exits."""
    handler = _Interrupts()
    signals = (signal.SIGINT, signal.SIGTERM)
    try:
        previous = {s: signal.signal(s, handler) for s in signals}
    except ValueError:  # not the main thread (an embedding app): its own handling stands
        yield handler
        return
    try:
        yield handler
    finally:
        root = click.get_current_context().find_root().command
        for s, old in previous.items():
            if getattr(root, "as_program", False):
                # The program is ending. Ignored, not handled: Python's shutdown puts the default
                # action back in place of a Python handler, and a late Ctrl-C would kill it.
                signal.signal(s, signal.SIG_IGN)
            else:
                signal.signal(s, signal.SIG_DFL if old is None else old)


def _set_threads(threads: int | None) -> None:
    """Torch's CPU threads for a command that trains; a note when the load took some away."""
    from lrsearch.threads import fewer_note, set_threads

    chosen = set_threads(threads)
    note = fewer_note(chosen) if threads is None else None
    if note:
        click.echo(note, err=True)


@click.command()
@spec_argument
@storage_option
@spec_study_option
@spec_n_trials_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Start no new trial after this many seconds.",
)
@device_option
@threads_option
@storage_retry_option
def run(
    spec_file: Path,
    storage: str | None,
    study: str | None,
    n_trials: int | None,
    timeout: float | None,
    device: str | None,
    threads: int | None,
    storage_retry: float | None,
) -> None:
    """Run (or resume) the study in SPEC until its budget of trials is met."""
    from lrsearch.search import run_search
    from lrsearch.spec import load_spec

    spec = load_spec(spec_file)
    _set_threads(threads)
    bar = ProgressBar()
    try:
        with _interrupts() as interrupts:
            summary = run_search(
                spec,
                storage=storage,
                study_name=study,
                n_trials=n_trials,
                timeout=timeout,
                device=device,
                on_trial=bar.update,
                storage_retry=storage_retry,
            )
            interrupts.ended = True
    finally:
        bar.close()
    click.echo(summary_text(summary))
    if summary.interrupted:
        click.echo("lrsearch: interrupted; the study is intact, run again to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)


@click.command()
@spec_argument
@storage_option
@spec_study_option
def create(spec_file: Path, storage: str | None, study: str | None) -> None:
    """Create the study in SPEC for workers to join (or check it), without running a trial."""
    from lrsearch.search import create_study
    from lrsearch.spec import load_spec

    spec = load_spec(spec_file)
    made = create_study(spec, storage=storage, study_name=study)
    what = "created" if made.created else "exists with the same search:"
    click.echo(
        f"study {made.study!r} {what} in {made.storage} ({made.direction}, budget "
        f"{made.n_trials} trials)"
    )
    if not made.created and made.n_trials != spec.study.n_trials:
        click.echo(
            f"lrsearch: note: the study keeps its budget of {made.n_trials}; give workers "
            f"--n-trials {spec.study.n_trials} to change it",
            err=True,
        )


@click.command()
@storage_option
@study_option
@click.option(
    "--n-trials",
    type=click.IntRange(min=1),
    default=None,
    help="The study's total budget of finished trials (default: the study's n_trials).",
)
@device_option
@threads_option
@allow_task_option
@storage_retry_option
def worker(
    storage: str | None,
    study: str,
    n_trials: int | None,
    device: str | None,
    threads: int | None,
    allow_tasks: tuple[str, ...],
    storage_retry: float | None,
) -> None:
    """Join a study and run its trials until its budget is met (SIGTERM: stop cleanly, exit 0)."""
    from lrsearch.search import run_worker

    _set_threads(threads)
    try:
        with _interrupts() as interrupts:
            summary = run_worker(
                storage,
                study,
                n_trials=n_trials,
                device=device,
                on_trial=trial_line,
                allow_tasks=allow_tasks,
                storage_retry=storage_retry,
            )
            interrupts.ended = True
    except KeyboardInterrupt:  # before its first trial: nothing to queue again
        click.echo("lrsearch: worker stopped before its first trial", err=True)
        return
    click.echo(summary_text(summary))
    stopped = [o.number for o in summary.outcomes if o.outcome == Outcome.INTERRUPTED]
    if stopped:
        click.echo(
            f"lrsearch: worker stopped; trial {stopped[0]} queued again for others", err=True
        )
    elif summary.interrupted:
        click.echo("lrsearch: worker stopped between trials", err=True)


def _devices_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    from lrsearch.launch import parse_devices

    try:
        return None if value is None else parse_devices(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e


@click.command()
@spec_argument
@click.option(
    "--workers",
    "n_workers",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes to start (default: one per --devices entry).",
)
@click.option(
    "--devices",
    default=None,
    metavar="LIST",
    callback=_devices_option,
    help="Each worker's GPU (its CUDA_VISIBLE_DEVICES), e.g. 0,1; repeat one to share it: "
    "0,0,0,0 is 4 workers on GPU 0. With --workers N, a list without repeats is shared "
    "round-robin.",
)
@storage_option
@spec_study_option
@spec_n_trials_option
def launch(
    spec_file: Path,
    n_workers: int | None,
    devices: list[str] | None,
    storage: str | None,
    study: str | None,
    n_trials: int | None,
) -> None:
    """Create or check the study in SPEC and run N local workers on it, shown as one view."""
    from lrsearch.launch import Launcher, LaunchOptions, assign_devices

    try:  # a usage error, before the study file is read
        assign_devices(n_workers, devices)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    launcher = Launcher(
        spec_file,
        LaunchOptions(
            n_workers=n_workers, devices=devices, storage=storage, study=study, n_trials=n_trials
        ),
    )
    result = launcher.run()
    if result.create_returncode == 0:
        click.echo(result.text())
    for worker in result.failed:
        click.echo(f"lrsearch: error: {one_line(worker.describe())}", err=True)
    if result.interrupted and not result.failed:
        click.echo("lrsearch: interrupted; the study is intact, launch again to resume", err=True)
    sys.exit(result.exit_code)

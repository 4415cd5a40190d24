"""The ``lrsearch`` command: a thin shell over the library.

Library errors (``LrsearchError``) become one line on stderr and a non-zero exit here, in one place;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import click

from lrsearch import __version__
from lrsearch.errors import LrsearchError
from lrsearch.schema import STATES

F = TypeVar("F", bound=Callable[..., Any])

EXIT_INTERRUPTED = 130


class _Cli(click.Group):
    """Turns library errors into one-line messages and exit codes."""

    as_program = False  # run as the program (arguments from sys.argv), not called in-process

    def main(self, *args: Any, **kwargs: Any) -> Any:
        self.as_program = not args and kwargs.get("args") is None
        return super().main(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LrsearchError as e:
            if ctx.params.get("debug"):
                raise
            click.echo(f"lrsearch: error: {one_line(str(e))}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            # Ctrl-C before a search took over its signals, or after it gave them back (a third
            # Ctrl-C in a row): one line, not click's "Aborted!"; no trial is in flight there.
            if ctx.params.get("debug"):
                raise
            click.echo("lrsearch: interrupted; the study is intact", err=True)
            ctx.exit(EXIT_INTERRUPTED)


def one_line(message: str) -> str:
    """``message`` on one line (an error may quote a task's multi-line exception)."""
    return (
        "; ".join(line.strip() for line in message.splitlines() if line.strip()) or "(no message)"
    )


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


def _study_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--study``: one rule for every command (``""`` is no study, never the file's name)."""
    from lrsearch.limits import study_name_problem

    problem = None if value is None else study_name_problem(value)
    if problem:
        raise LrsearchError(f"--study: a study name {problem}")
    return value


def study_option(f: F) -> F:
    return click.option(
        "--study", "study", required=True, metavar="NAME", callback=_study_name, help="Study name."
    )(f)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
# From the package itself, not its installed metadata: works from a source tree too.
@click.version_option(__version__, prog_name="lrsearch")
def main(debug: bool) -> None:
    """Search per-group learning rates (and freezing) for fine-tuning PyTorch models."""
    import optuna

    # Optuna logs every trial at INFO; the progress bar and summary say it better.
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@main.command()
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
@storage_option
@click.option(
    "--study",
    "study",
    default=None,
    metavar="NAME",
    callback=_study_name,
    help="Default: [study] name.",
)
@click.option(
    "--n-trials",
    type=click.IntRange(min=1),
    default=None,
    help="The study's total budget of finished trials (default: [study] n_trials).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Start no new trial after this many seconds.",
)
@click.option("--device", default=None, help="auto (default), cpu, cuda or cuda:N.")
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
    from lrsearch.threads import set_threads

    spec = load_spec(spec_file)
    set_threads(threads)
    bar = _ProgressBar()
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
    click.echo(_summary_text(summary))
    if summary.interrupted:
        click.echo("lrsearch: interrupted; the study is intact, run again to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)


class _ProgressBar:
    """A tqdm bar of finished trials with done / pruned / best in its postfix."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.log: logging.Handler | None = None
        self.started = time.time()  # the bar appears with the first trial's end, timed from here

    def update(self, outcome: Any, summary: Any) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(
                total=summary.budget,
                initial=summary.already_finished,
                desc=summary.study,
                unit="trial",
                file=sys.stderr,
                dynamic_ncols=True,
            )
            # Elapsed time and rate count the first trial too (not "21 trial/s" for a 51 s one).
            self.bar.start_t = self.bar.last_print_t = self.started
            # Warnings (a storage retry) go above the bar, not onto its line.
            self.log = _AboveBar()
            logging.getLogger("lrsearch").addHandler(self.log)
        self.bar.update(1)
        # The counts of the summary's "this run" line, word for word: a diverged trial is not
        # counted as pruned in one and apart in the other.
        counts = {k: summary.count(k) for k in ("complete", "pruned", "diverged", "failed")}
        self.bar.set_postfix(
            **{k: n for k, n in counts.items() if n or k in ("complete", "pruned")},
            best=_fmt(summary.best_value),
            refresh=False,
        )

    def close(self) -> None:
        if self.log is not None:
            logging.getLogger("lrsearch").removeHandler(self.log)
        if self.bar is not None:
            self.bar.close()


class _AboveBar(logging.Handler):
    """lrsearch's warnings, printed as without a bar (Python's last-resort stderr handler would),
    but through tqdm, which clears the bar's line first and redraws it below."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # as logging's own handlers: a failed warning never stops a search
            self.handleError(record)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        return f"{value:.4g}" if not math.isnan(value) else "nan"
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _lr_text(lr: float) -> str:
    return "frozen" if lr == 0 else f"{lr:.3g}"


def _summary_text(s: Any) -> str:
    ran = len(s.outcomes)
    lines = [
        f"study {s.study!r} in {s.storage} ({s.direction})",
        f"this run: {ran} trial(s) in {s.seconds:.1f} s: {s.count('complete')} complete, "
        f"{s.count('pruned')} pruned, {s.count('diverged')} diverged, {s.count('failed')} failed"
        + (f", {s.count('lost')} lost to a heartbeat sweep" if s.count("lost") else "")
        + (", 1 interrupted" if s.interrupted else ""),
    ]
    if ran and s.seconds > 0:
        outside = max(s.seconds - s.training_seconds, 0.0)
        lines.append(
            f"time: {s.training_seconds:.1f} s training, {outside:.1f} s "
            f"({100 * outside / s.seconds:.0f}%) outside it: asking and telling the storage, "
            "sampling, pruning checks, waits"
        )
    if ran == 0 and not s.interrupted:
        lines.append(
            f"the study already has {s.already_finished} finished trial(s), its budget is "
            f"{s.budget}; raise --n-trials to run more"
        )
    if s.best_lrs is not None:
        lines.append(f"best: trial {s.best_number}, value {_fmt(s.best_value)}")
        if s.confirmation is not None:
            lines.append(f"winner {s.confirmation['note']}")
        lines.append(_table(["group", "lr"], [[g, _lr_text(lr)] for g, lr in s.best_lrs.items()]))
    else:
        lines.append("no complete trial yet")
    return "\n".join(lines)


def _kwarg(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    from lrsearch.init import parse_kwarg

    try:
        return dict(parse_kwarg(v) for v in values)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e


@main.command()
@click.argument("model", metavar="MODEL")
@click.option(
    "-k",
    "--kwarg",
    "kwargs",
    multiple=True,
    callback=_kwarg,
    metavar="KEY=VALUE",
    help="A [task] kwarg (repeatable); VALUE is read as TOML (200, [1, 2]), else as text.",
)
@click.option(
    "--blocks",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Groups the repeated blocks are split into.",
)
@click.option("--name", default=None, metavar="NAME", help="Study name (default: from MODEL).")
@click.option("--n-trials", type=click.IntRange(min=1), default=30, show_default=True)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="Write the study file here (default: print it).",
)
def init(
    model: str,
    kwargs: dict[str, Any],
    blocks: int,
    name: str | None,
    n_trials: int,
    output: Path | None,
) -> None:
    """Write a study file for MODEL: a built-in task, a task entry or a Hugging Face folder."""
    from lrsearch.init import study_text
    from lrsearch.threads import set_threads

    set_threads(None)
    text = study_text(model, kwargs, blocks=blocks, name=name, n_trials=n_trials)
    if output is None:
        click.echo(text, nl=False)
        return
    output.write_text(text, encoding="utf-8")
    click.echo(f"wrote {output}; run it with: lrsearch run {output}", err=True)


@main.command()
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
@storage_option
@click.option(
    "--study",
    "study",
    default=None,
    metavar="NAME",
    callback=_study_name,
    help="Default: [study] name.",
)
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


@main.command()
@storage_option
@study_option
@click.option(
    "--n-trials",
    type=click.IntRange(min=1),
    default=None,
    help="The study's total budget of finished trials (default: the study's n_trials).",
)
@click.option("--device", default=None, help="auto (default), cpu, cuda or cuda:N.")
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
    from lrsearch.threads import set_threads

    set_threads(threads)
    try:
        with _interrupts() as interrupts:
            summary = run_worker(
                storage,
                study,
                n_trials=n_trials,
                device=device,
                on_trial=_trial_line,
                allow_tasks=allow_tasks,
                storage_retry=storage_retry,
            )
            interrupts.ended = True
    except KeyboardInterrupt:  # before its first trial: nothing to queue again
        click.echo("lrsearch: worker stopped before its first trial", err=True)
        return
    click.echo(_summary_text(summary))
    stopped = [o.number for o in summary.outcomes if o.outcome == "interrupted"]
    if stopped:
        click.echo(
            f"lrsearch: worker stopped; trial {stopped[0]} queued again for others", err=True
        )
    elif summary.interrupted:
        click.echo("lrsearch: worker stopped between trials", err=True)


def _trial_line(outcome: Any, summary: Any) -> None:
    value = "" if outcome.value is None else f" {_fmt(outcome.value)}"
    why = f" ({outcome.reason})" if outcome.outcome in ("failed", "diverged") else ""
    click.echo(
        f"trial {outcome.number}: {outcome.outcome}{value} in {outcome.seconds:.1f} s{why}",
        err=True,
    )


@main.command()
@storage_option
def studies(storage: str | None) -> None:
    """List the studies in a storage."""
    from lrsearch.analysis import list_studies
    from lrsearch.storage import open_storage

    rows = list_studies(open_storage(storage, create=False))
    if not rows:
        click.echo("no studies in this storage")
        return
    keys = ["study", "direction", "trials", "complete", "pruned", "failed", "running", "best"]
    click.echo(_table(keys, [[r[k] for k in keys] for r in rows]))


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


def _rule(within: float | None, max_cost: float | None, within_sd: bool = False) -> Any:
    from lrsearch.pick import Rule

    return Rule(within=within, max_cost=max_cost, within_sd=within_sd)


@main.command()
@study_option
@storage_option
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=None,
    help="How many trials, best first (default 1; with --front, the whole front).",
)
@click.option(
    "--front", is_flag=True, help="Only the Pareto front of metric against training cost."
)
@pick_options
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def best(
    study: str,
    storage: str | None,
    top: int | None,
    front: bool,
    within: float | None,
    within_sd: bool,
    max_cost: float | None,
    fmt: str,
) -> None:
    """Show the best trial(s) of a study and their per-group rates."""
    from lrsearch.analysis import best_trials
    from lrsearch.storage import open_storage

    records = best_trials(
        open_storage(storage, create=False),
        study,
        top=top,
        rule=_rule(within, max_cost, within_sd),
        front=front,
    )
    if fmt == "json":
        one = top in (None, 1) and not front
        click.echo(json.dumps(records[0] if one else records, indent=2))
        return
    groups = list(records[0]["lrs"])
    seeded = records[0]["seeds"] is not None
    # Every searched value: the rates, then weight decay and any other knob of any shown trial.
    knobs = list(dict.fromkeys(k for r in records for k in r["knobs"]))
    headers = [
        "trial",
        "value",
        *(["mean", "sd", "seeds"] if seeded else []),
        "cost",
        *groups,
        *knobs,
    ]
    rows = [
        [
            r["trial"],
            r["value"],
            *(_seed_cells(r["seeds"]) if seeded else []),
            "" if r["cost"] is None else f"{r['cost']:.4g}",
            *[_lr_text(r["lrs"].get(g, math.nan)) for g in groups],
            *["" if k not in r["knobs"] else f"{r['knobs'][k]:.3g}" for k in knobs],
        ]
        for r in records
    ]
    click.echo(_table(headers, rows))
    if seeded:
        click.echo(records[0]["ranking"])
    click.echo(f"cost: {records[0]['cost_meaning']}")


def _seed_cells(seeds: dict[str, Any] | None) -> list[Any]:
    if seeds is None:
        return ["", "", ""]
    return [seeds["mean"], "" if seeds["sd"] is None else seeds["sd"], seeds["n"]]


# As lrsearch.analysis.FORMATS (not imported: that module pulls in Optuna at start-up).
TRIAL_STATES = STATES
TRIAL_FORMATS = ("table", "csv", "json", "parquet")


@main.command()
@study_option
@storage_option
@click.option(
    "--state",
    "states",
    type=click.Choice(TRIAL_STATES),
    multiple=True,
    help="Only trials that ended this way (repeatable; default: all).",
)
@click.option("--format", "fmt", type=click.Choice(TRIAL_FORMATS), default="table")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file instead of stdout (parquet needs one).",
)
def trials(
    study: str, storage: str | None, states: tuple[str, ...], fmt: str, output: Path | None
) -> None:
    """List a study's trials: outcome, value, per-group rates, pruning step, reason, host."""
    from lrsearch.analysis import filter_states, load_trials, write_trials

    frame = filter_states(load_trials(storage, study), states)
    text = write_trials(frame, fmt=fmt, output=output)
    if text is not None:
        click.echo(text, nl=False)
    else:
        click.echo(f"wrote {len(frame)} trial(s) to {output}", err=True)


@main.command()
@study_option
@storage_option
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="Folder for index.html and the PNG plots (created if missing).",
)
def report(study: str, storage: str | None, output: Path) -> None:
    """Write a study's report: PNG plots and one self-contained index.html."""
    from lrsearch.report import write_report

    page = write_report(storage, study, output)
    click.echo(f"wrote {page}", err=True)


@main.command()
@study_option
@storage_option
@click.option("--trial", type=click.IntRange(min=0), default=None, help="Default: the best trial.")
@pick_options
@click.option("--format", "fmt", type=click.Choice(["json", "python"]), default="json")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file instead of stdout.",
)
def export(
    study: str,
    storage: str | None,
    trial: int | None,
    within: float | None,
    within_sd: bool,
    max_cost: float | None,
    fmt: str,
    output: Path | None,
) -> None:
    """Export a trial's optimizer config for your own training script."""
    from lrsearch.export import export_config, to_python
    from lrsearch.storage import open_storage

    if trial is not None and (within is not None or max_cost is not None or within_sd):
        raise click.UsageError(
            "--trial names the trial; --within / --max-cost / --within-sd pick one: give one"
        )
    config = export_config(
        open_storage(storage, create=False), study, trial, rule=_rule(within, max_cost, within_sd)
    )
    if "selection" in config:
        click.echo(f"trial {config['trial']}: {config['selection']}", err=True)
    text = json.dumps(config, indent=2) + "\n" if fmt == "json" else to_python(config)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as e:
        raise LrsearchError(f"cannot write {str(output)!r}: {e.strerror}") from e
    click.echo(f"wrote {output}", err=True)


@main.command()
@study_option
@storage_option
@click.option("--trial", type=click.IntRange(min=0), default=None, help="Default: the best trial.")
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Retrain each config with this many fresh seeds (not the search's).",
)
@click.option("--device", default=None, help="auto (default), cpu, cuda or cuda:N.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option(
    "--baseline",
    type=click.Choice(["single"]),
    default=None,
    help="single: first search one rate for every group (a study of its own, beside this one) "
    "and compare with its best trial.",
)
@click.option(
    "--baseline-trials",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="The budget of that one-rate search.",
)
@allow_task_option
def verify(
    study: str,
    storage: str | None,
    trial: int | None,
    seeds: int,
    device: str | None,
    fmt: str,
    baseline: str | None,
    baseline_trials: int,
    allow_tasks: tuple[str, ...],
) -> None:
    """Retrain a trial (default: the best) and the best single-rate trial with fresh seeds."""
    from lrsearch.storage import open_storage
    from lrsearch.verify import run_single_baseline, verify_trial

    progress = _run_progress(with_role=True)

    baseline_study = None
    if baseline == "single":
        baseline_study = run_single_baseline(
            storage,
            study,
            n_trials=baseline_trials,
            device=device,
            on_trial=_baseline_line,
            allow_tasks=allow_tasks,
        )
    result = verify_trial(
        open_storage(storage, create=False),
        study,
        trial=trial,
        seeds=seeds,
        device=device,
        on_run=progress,
        baseline_study=baseline_study,
        allow_tasks=allow_tasks,
    )
    click.echo(json.dumps(result, indent=2) if fmt == "json" else _verify_text(result))


@main.command()
@study_option
@storage_option
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=None,
    help="Retrain this many of the best trials (default: [winner] top_k, 3).",
)
@click.option(
    "--reseeds",
    type=click.IntRange(min=1),
    default=None,
    help="Seeds per trial beyond the search's own (default: [winner] reseeds).",
)
@click.option("--device", default=None, help="auto (default), cpu, cuda or cuda:N.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@allow_task_option
def confirm(
    study: str,
    storage: str | None,
    top_k: int | None,
    reseeds: int | None,
    device: str | None,
    fmt: str,
    allow_tasks: tuple[str, ...],
) -> None:
    """Retrain the best trials with more seeds; best, export and report then rank by the mean."""
    from lrsearch.confirm import confirm_study
    from lrsearch.storage import open_storage

    progress = _run_progress(with_role=False)

    result = confirm_study(
        open_storage(storage, create=False),
        study,
        top_k=top_k,
        reseeds=reseeds,
        device=device,
        on_run=progress,
        allow_tasks=allow_tasks,
    )
    if fmt == "json":
        click.echo(json.dumps(result, indent=2))
        return
    rows = [
        [
            t["trial"],
            t["search_value"],
            t["mean"],
            "" if t["sd"] is None else t["sd"],
            len(t["values"]),
            t["failed"],
        ]
        for t in result["trials"]
    ]
    click.echo(_table(["trial", "search", "mean", "sd", "seeds", "failed"], rows))
    click.echo(result["note"])


def _baseline_line(outcome: Any, summary: Any) -> None:
    click.echo(f"single-rate baseline ({summary.study}), ", err=True, nl=False)
    _trial_line(outcome, summary)


def _run_progress(*, with_role: bool) -> Callable[[str, int, dict[str, Any]], None]:
    """A retraining's progress, one line on stderr a run (``verify`` names the run's role)."""

    def progress(role: str, number: int, run: dict[str, Any]) -> None:
        value = run["outcome"] if run["value"] is None else _fmt(run["value"])
        who = f"{role} trial" if with_role else "trial"
        click.echo(f"{who} {number}, seed {run['seed']}: {value}", err=True)

    return progress


def _verify_text(r: dict[str, Any]) -> str:
    headers = ["config", "trial", "search", *[f"seed {s}" for s in r["seeds"]]]
    rows = [
        [
            c["role"],
            c["trial"],
            c["search_value"],
            *[run["outcome"] if run["value"] is None else run["value"] for run in c["runs"]],
            *[c["stats"][k] for k in ("mean", "std", "min", "max")],
        ]
        for c in r["configs"]
    ]
    lines = [
        f"study {r['study']!r} ({r['direction']}): {len(r['seeds'])} fresh seed(s) per config",
        _table([*headers, "mean", "std", "min", "max"], rows),
        "",
    ]
    for c in r["configs"]:
        rates = ", ".join(f"{g} {_lr_text(lr)}" for g, lr in c["lrs"].items())
        where = "" if c.get("study", r["study"]) == r["study"] else f" of study {c['study']!r}"
        lines.append(f"{c['role']}: trial {c['trial']}{where} ({rates})")
    comparison = r["comparison"]
    if comparison and comparison["difference"] is not None:
        spread = comparison["spread"]
        lines.append(
            f"winner - reference: {comparison['difference']:+.4g} (combined spread "
            f"{'-' if spread is None else f'{spread:.4g}'})"
        )
    lines.append(f"verdict: {r['verdict']}")
    attrs = ", ".join(c["attr"] for c in r["configs"])
    new = sum(c["new_runs"] for c in r["configs"])
    lines.append(f"stored with the study as {attrs} ({new} new run(s))")
    return "\n".join(lines)


def _devices_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    from lrsearch.launch import parse_devices

    try:
        return None if value is None else parse_devices(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e


@main.command()
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
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
@click.option(
    "--study",
    "study",
    default=None,
    metavar="NAME",
    callback=_study_name,
    help="Default: [study] name.",
)
@click.option(
    "--n-trials",
    type=click.IntRange(min=1),
    default=None,
    help="The study's total budget of finished trials (default: [study] n_trials).",
)
def launch(
    spec_file: Path,
    n_workers: int | None,
    devices: list[str] | None,
    storage: str | None,
    study: str | None,
    n_trials: int | None,
) -> None:
    """Create or check the study in SPEC and run N local workers on it, shown as one view."""
    from lrsearch.launch import Launcher, assign_devices

    try:  # a usage error, before the study file is read
        assign_devices(n_workers, devices)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    launcher = Launcher(
        spec_file,
        n_workers=n_workers,
        devices=devices,
        storage=storage,
        study=study,
        n_trials=n_trials,
    )
    result = launcher.run()
    if result.create_returncode == 0:
        click.echo(result.text())
    for worker in result.failed:
        click.echo(f"lrsearch: error: {one_line(worker.describe())}", err=True)
    if result.interrupted and not result.failed:
        click.echo("lrsearch: interrupted; the study is intact, launch again to resume", err=True)
    sys.exit(result.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()

"""The ``lrsearch`` command: a thin shell over the library.

Library errors (``LrsearchError``) become one line on stderr and a non-zero exit here, in one place;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import math
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import click

from lrsearch.errors import LrsearchError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_INTERRUPTED = 130


class _Cli(click.Group):
    """Turns library errors into one-line messages and exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LrsearchError as e:
            if ctx.params.get("debug"):
                raise
            click.echo(f"lrsearch: error: {one_line(str(e))}", err=True)
            ctx.exit(e.exit_code)


def one_line(message: str) -> str:
    """``message`` on one line (an error may quote a task's multi-line exception)."""
    return (
        "; ".join(line.strip() for line in message.splitlines() if line.strip()) or "(no message)"
    )


def storage_option(f: F) -> F:
    return click.option(
        "--storage",
        metavar="URL",
        default=None,
        help="Study database (default: $LRSEARCH_STORAGE, then sqlite:///lrsearch.db).",
    )(f)


def study_option(f: F) -> F:
    return click.option("--study", "study", required=True, metavar="NAME", help="Study name.")(f)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="lrsearch")
def main(debug: bool) -> None:
    """Search per-group learning rates (and freezing) for fine-tuning PyTorch models."""
    import optuna

    # Optuna logs every trial at INFO; the progress bar and summary say it better.
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@main.command()
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
@storage_option
@click.option("--study", "study", default=None, metavar="NAME", help="Default: [study] name.")
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
def run(
    spec_file: Path,
    storage: str | None,
    study: str | None,
    n_trials: int | None,
    timeout: float | None,
    device: str | None,
) -> None:
    """Run (or resume) the study in SPEC until its budget of trials is met."""
    from lrsearch.search import run_search
    from lrsearch.spec import load_spec

    spec = load_spec(spec_file)
    bar = _ProgressBar()
    try:
        previous: Any = signal.signal(signal.SIGTERM, _raise_interrupt)
        installed = True
    except ValueError:  # not the main thread (an embedding app): its own SIGTERM handling stands
        previous, installed = None, False
    try:
        summary = run_search(
            spec,
            storage=storage,
            study_name=study,
            n_trials=n_trials,
            timeout=timeout,
            device=device,
            on_trial=bar.update,
        )
    finally:
        bar.close()
        if installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    click.echo(_summary_text(summary))
    if summary.interrupted:
        click.echo("lrsearch: interrupted; the study is intact, run again to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class _ProgressBar:
    """A tqdm bar of finished trials with done / pruned / best in its postfix."""

    def __init__(self) -> None:
        self.bar: Any = None

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
        self.bar.update(1)
        self.bar.set_postfix(
            complete=summary.count("complete"),
            pruned=summary.count("pruned") + summary.count("diverged"),
            failed=summary.count("failed"),
            best=_fmt(summary.best_value),
            refresh=False,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
        + (", 1 interrupted" if s.interrupted else ""),
    ]
    if ran == 0 and not s.interrupted:
        lines.append(
            f"the study already has {s.already_finished} finished trial(s), its budget is "
            f"{s.budget}; raise --n-trials to run more"
        )
    if s.best_lrs is not None:
        lines.append(f"best: trial {s.best_number}, value {_fmt(s.best_value)}")
        lines.append(_table(["group", "lr"], [[g, _lr_text(lr)] for g, lr in s.best_lrs.items()]))
    else:
        lines.append("no complete trial yet")
    return "\n".join(lines)


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


@main.command()
@study_option
@storage_option
@click.option("--top", type=click.IntRange(min=1), default=1, help="How many trials, best first.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def best(study: str, storage: str | None, top: int, fmt: str) -> None:
    """Show the best trial(s) of a study and their per-group rates."""
    from lrsearch.analysis import best_trials
    from lrsearch.storage import open_storage

    records = best_trials(open_storage(storage, create=False), study, top=top)
    if fmt == "json":
        click.echo(json.dumps(records[0] if top == 1 else records, indent=2))
        return
    groups = list(records[0]["lrs"])
    headers = ["trial", "value", *groups]
    rows = [
        [r["trial"], r["value"], *[_lr_text(r["lrs"].get(g, math.nan)) for g in groups]]
        for r in records
    ]
    click.echo(_table(headers, rows))


@main.command()
@study_option
@storage_option
@click.option("--trial", type=click.IntRange(min=0), default=None, help="Default: the best trial.")
@click.option("--format", "fmt", type=click.Choice(["json", "python"]), default="json")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file instead of stdout.",
)
def export(
    study: str, storage: str | None, trial: int | None, fmt: str, output: Path | None
) -> None:
    """Export a trial's optimizer config for your own training script."""
    from lrsearch.export import export_config, to_python
    from lrsearch.storage import open_storage

    config = export_config(open_storage(storage, create=False), study, trial)
    text = json.dumps(config, indent=2) + "\n" if fmt == "json" else to_python(config)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as e:
        raise LrsearchError(f"cannot write {str(output)!r}: {e.strerror}") from e
    click.echo(f"wrote {output}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()

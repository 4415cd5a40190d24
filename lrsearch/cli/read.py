"""The commands that read a study and train nothing: ``studies``, ``best``, ``trials``,
``report`` and ``export``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from lrsearch.cli.options import (
    pick_options,
    pick_rule,
    storage_option,
    study_option,
    table_or_json_option,
)
from lrsearch.cli.text import lr_text, table
from lrsearch.errors import LrsearchError
from lrsearch.schema import STATES

# As lrsearch.analysis.FORMATS (not imported: that module pulls in Optuna at start-up).
TRIAL_STATES = STATES
TRIAL_FORMATS = ("table", "csv", "json", "parquet")


@click.command()
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
    click.echo(table(keys, [[r[k] for k in keys] for r in rows]))


@click.command()
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
@table_or_json_option
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
        rule=pick_rule(within, max_cost, within_sd),
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
            *[lr_text(r["lrs"].get(g, math.nan)) for g in groups],
            *["" if k not in r["knobs"] else f"{r['knobs'][k]:.3g}" for k in knobs],
        ]
        for r in records
    ]
    click.echo(table(headers, rows))
    if seeded:
        click.echo(records[0]["ranking"])
    click.echo(f"cost: {records[0]['cost_meaning']}")


def _seed_cells(seeds: dict[str, Any] | None) -> list[Any]:
    if seeds is None:
        return ["", "", ""]
    return [seeds["mean"], "" if seeds["sd"] is None else seeds["sd"], seeds["n"]]


@click.command()
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


@click.command()
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


@click.command()
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
        open_storage(storage, create=False),
        study,
        trial,
        rule=pick_rule(within, max_cost, within_sd),
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

"""The commands that retrain a study's trials with fresh seeds: ``verify`` and ``confirm``."""

from __future__ import annotations

import json
from typing import Any

import click

from lrsearch.cli.options import (
    allow_task_option,
    device_option,
    storage_option,
    study_option,
    table_or_json_option,
)
from lrsearch.cli.text import baseline_line, lr_text, run_progress, table


@click.command()
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
@device_option
@table_or_json_option
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

    progress = run_progress(with_role=True)

    baseline_study = None
    if baseline == "single":
        baseline_study = run_single_baseline(
            storage,
            study,
            n_trials=baseline_trials,
            device=device,
            on_trial=baseline_line,
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
        table([*headers, "mean", "std", "min", "max"], rows),
        "",
    ]
    for c in r["configs"]:
        rates = ", ".join(f"{g} {lr_text(lr)}" for g, lr in c["lrs"].items())
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


@click.command()
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
@device_option
@table_or_json_option
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
    from lrsearch.retrain import confirm_study
    from lrsearch.storage import open_storage

    progress = run_progress(with_role=False)

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
    click.echo(table(["trial", "search", "mean", "sd", "seeds", "failed"], rows))
    click.echo(result["note"])

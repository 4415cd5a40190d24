"""``lrsearch init``: write a study file for a model, to edit and run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


def _kwarg(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    from lrsearch.init import parse_kwarg

    try:
        return dict(parse_kwarg(v) for v in values)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e


@click.command()
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

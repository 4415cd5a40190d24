"""The ``lrsearch`` click group: library errors become one-line messages and exit codes here.

Library errors (``LrsearchError``) become one line on stderr and a non-zero exit here, in one place;
``--debug`` shows the traceback instead. The commands themselves live in the modules beside this
one and are added to the group by ``lrsearch/cli/__init__.py``.
"""

from __future__ import annotations

from typing import Any

import click

from lrsearch import __version__
from lrsearch.errors import EXIT_INTERRUPTED, LrsearchError


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


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
# From the package itself, not its installed metadata: works from a source tree too.
@click.version_option(__version__, prog_name="lrsearch")
def main(debug: bool) -> None:
    """Search per-group learning rates (and freezing) for fine-tuning PyTorch models."""
    import optuna

    # Optuna logs every trial at INFO; the progress bar and summary say it better.
    optuna.logging.set_verbosity(optuna.logging.WARNING)

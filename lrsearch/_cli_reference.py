"""The CLI reference page (``docs/cli.md``), written from the click commands themselves.

``python -m lrsearch._cli_reference > docs/cli.md`` regenerates it; ``tests/test_docs.py`` checks
that the page in the repository is what this prints, so it cannot fall behind the commands.
"""

from __future__ import annotations

import click

from lrsearch.cli import main as _main

_HEADER = """# CLI reference

Generated from the commands by `python -m lrsearch._cli_reference > docs/cli.md`; a test checks
that this page matches them. Every command takes `--help`; `lrsearch --debug COMMAND ...` shows a
traceback instead of a one-line error. Exit codes: 0 success, 2 something the user wrote is wrong
(the study file, its groups against the model, a task entry or its kwargs, the command line),
1 anything else.
"""


def _option_row(param: click.Parameter, ctx: click.Context) -> str:
    names = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
    help_text = ""
    if isinstance(param, click.Option):
        record = param.get_help_record(ctx)
        help_text = record[1] if record else ""
        metavar = param.make_metavar(ctx) if not param.is_flag else ""
        if metavar:
            names += f" {metavar.replace('|', ' or ')}"
    return f"| {names} | {' '.join(help_text.split()).replace('|', '/')} |"


def markdown() -> str:
    """The whole page."""
    out = [_HEADER]
    # The group's own settings (its -h): as when run, whatever click cached from earlier calls.
    group_ctx = click.Context(_main, info_name="lrsearch", **_main.context_settings)
    for name in sorted(_main.list_commands(group_ctx)):
        command = _main.get_command(group_ctx, name)
        if command is None or command.hidden:
            continue
        ctx = click.Context(command, info_name=name, parent=group_ctx)
        out.append(f"## `lrsearch {name}`\n")
        out.append(f"```text\n{command.get_usage(ctx).strip()}\n```\n")
        if command.help:
            out.append(" ".join(command.help.split()) + "\n")
        # The help option is written from the group's settings: click caches a command's help
        # option from the first context it saw, which depends on what ran before in a process.
        rows = [
            _option_row(p, ctx)
            for p in command.params
            if isinstance(p, click.Option) and not p.hidden
        ]
        helps = ", ".join(f"`{o}`" for o in group_ctx.help_option_names)
        rows.append(f"| {helps} | Show this message and exit. |")
        if rows:
            out.append("| option | meaning |\n| --- | --- |\n" + "\n".join(rows) + "\n")
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    print(markdown(), end="")

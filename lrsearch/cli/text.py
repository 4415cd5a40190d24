"""What the commands print: values, tables, a search's summary, and progress while trials run.

Progress goes to stderr (a bar, or one line a trial or a retraining); results go to stdout.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import click

from lrsearch.schema import Outcome

# The outcomes a run's summary line counts, in its order; the progress bar shows the same counts
# (a diverged trial is not counted as pruned in one and apart in the other), the first two always.
_COUNTED = (Outcome.COMPLETE, Outcome.PRUNED, Outcome.DIVERGED, Outcome.FAILED)
_ALWAYS_SHOWN = (Outcome.COMPLETE, Outcome.PRUNED)


def fmt(value: Any) -> str:
    """A value as a table cell: ``-`` for none, floats to 4 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        return f"{value:.4g}" if not math.isnan(value) else "nan"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """``rows`` under ``headers`` as a plain-text table, columns padded to their widest cell."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def lr_text(lr: float) -> str:
    """A learning rate as shown: ``frozen`` for 0, else 3 significant digits."""
    return "frozen" if lr == 0 else f"{lr:.3g}"


def summary_text(s: Any) -> str:
    """The lines ``run`` and ``worker`` end with: what this run did, and the study's best."""
    ran = len(s.outcomes)
    lines = [
        f"study {s.study!r} in {s.storage} ({s.direction})",
        f"this run: {ran} trial(s) in {s.seconds:.1f} s: "
        + ", ".join(f"{s.count(k)} {k}" for k in _COUNTED)
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
        lines.append(f"best: trial {s.best_number}, value {fmt(s.best_value)}")
        if s.confirmation is not None:
            lines.append(f"winner {s.confirmation['note']}")
        lines.append(table(["group", "lr"], [[g, lr_text(lr)] for g, lr in s.best_lrs.items()]))
    else:
        lines.append("no complete trial yet")
    return "\n".join(lines)


class ProgressBar:
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
        counts = {k.value: summary.count(k) for k in _COUNTED}
        self.bar.set_postfix(
            **{k: n for k, n in counts.items() if n or k in _ALWAYS_SHOWN},
            best=fmt(summary.best_value),
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


def trial_line(outcome: Any, summary: Any) -> None:
    """One finished trial, one line on stderr (``worker`` prints these instead of a bar)."""
    value = "" if outcome.value is None else f" {fmt(outcome.value)}"
    why = f" ({outcome.reason})" if outcome.outcome in (Outcome.FAILED, Outcome.DIVERGED) else ""
    click.echo(
        f"trial {outcome.number}: {outcome.outcome}{value} in {outcome.seconds:.1f} s{why}",
        err=True,
    )


def baseline_line(outcome: Any, summary: Any) -> None:
    """A trial of ``verify``'s single-rate baseline search, as :func:`trial_line` names it."""
    click.echo(f"single-rate baseline ({summary.study}), ", err=True, nl=False)
    trial_line(outcome, summary)


def run_progress(*, with_role: bool) -> Callable[[str, int, dict[str, Any]], None]:
    """A retraining's progress, one line on stderr a run (``verify`` names the run's role)."""

    def progress(role: str, number: int, run: dict[str, Any]) -> None:
        value = run["outcome"] if run["value"] is None else fmt(run["value"])
        who = f"{role} trial" if with_role else "trial"
        click.echo(f"{who} {number}, seed {run['seed']}: {value}", err=True)

    return progress

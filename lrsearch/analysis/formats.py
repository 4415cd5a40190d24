"""Writing a trials frame: the aligned text table, CSV, JSON and Parquet, and rates as people
write them (``3e-3``, ``frozen``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrsearch.analysis.trials import knob_columns
from lrsearch.errors import LrsearchError

if TYPE_CHECKING:
    import pandas as pd


FORMATS = ("table", "csv", "json", "parquet")


def format_rate(lr: float) -> str:
    """A learning rate as people write it: ``3e-3``, ``5.7e-4``; ``frozen`` for 0."""
    if lr == 0:
        return "frozen"
    if math.isnan(lr):
        return "-"
    mantissa, exponent = f"{lr:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def trials_table(trials: pd.DataFrame) -> str:
    """The trials as an aligned text table: the columns a person scans, rates as ``3e-3``/frozen.

    Hosts show only when several workers ran trials; every column is in the csv/json/parquet
    formats.
    """
    import pandas as pd

    if trials.empty:
        return "no trials"

    def num(fmt: str) -> Any:
        return lambda v: "-" if pd.isna(v) else format(v, fmt)

    # (header, cells, left-aligned): numbers to the right, words to the left.
    columns: list[tuple[str, list[str], bool]] = [
        ("trial", [str(n) for n in trials["number"]], False),
        ("state", [str(s) for s in trials["state"]], True),
        ("value", list(trials["value"].map(num(".4g"))), False),
        ("seconds", list(trials["duration_s"].map(num(".1f"))), False),
    ]
    for c in trials.columns:
        if c.startswith("lr."):
            columns.append((c.removeprefix("lr."), list(trials[c].map(format_rate)), False))
    for c in knob_columns(trials):
        columns.append((c, list(trials[c].map(num(".3g"))), False))
    columns.append(("pruned_step", list(trials["pruned_step"].map(num("d"))), False))
    if trials["host"].nunique() > 1:
        columns.append(("host", list(trials["host"].fillna("-")), True))
    reasons = ["-" if pd.isna(r) or not r else _clip(str(r), 60) for r in trials["reason"]]
    columns.append(("reason", reasons, True))
    widths = [max(len(h), *(len(c) for c in cells)) for h, cells, _ in columns]
    lines = []
    for row in range(-1, len(trials)):
        cells = [
            (h if row < 0 else cs[row]).ljust(w) if left else (h if row < 0 else cs[row]).rjust(w)
            for (h, cs, left), w in zip(columns, widths, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def write_trials(
    trials: pd.DataFrame, *, fmt: str = "table", output: Path | None = None
) -> str | None:
    """Write the trials as a table, CSV, JSON (one object per trial) or Parquet.

    Args:
        trials: From :func:`load_trials` (filtered or not).
        fmt: ``table``, ``csv``, ``json`` or ``parquet``.
        output: The file to write; ``None`` returns the text instead (not for parquet).

    Returns:
        The text when ``output`` is ``None``, else ``None``.

    Raises:
        LrsearchError: An unknown format, parquet without a file or without pyarrow, or a file that
            cannot be written.
    """
    if fmt not in FORMATS:
        raise LrsearchError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "parquet":
        if output is None:
            raise LrsearchError(
                "--format parquet writes a binary file, not text: name it with -o FILE"
            )
        try:
            import pyarrow  # noqa: F401  # pandas' parquet engine; an optional extra
        except ImportError as e:
            raise LrsearchError(
                'parquet output needs pyarrow: pip install "lrsearch[parquet]"'
            ) from e
        try:
            trials.to_parquet(output, index=False, engine="pyarrow")
        except OSError as e:
            raise LrsearchError(f"cannot write {str(output)!r}: {e.strerror or e}") from e
        return None
    if fmt == "table":
        text = trials_table(trials) + "\n"
    elif fmt == "csv":
        text = trials.to_csv(index=False)
    else:
        text = trials.to_json(orient="records", date_format="iso", indent=2) + "\n"
    if output is None:
        return text
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as e:
        raise LrsearchError(f"cannot write {str(output)!r}: {e.strerror or e}") from e
    return None

"""One look per outcome, the same in every plot and on the page."""

from __future__ import annotations

from lrsearch.schema import Outcome

COMPLETE = "#1f6fb4"
PRUNED = "#8c8c8c"
DIVERGED = "#d62728"
FAILED = "#222222"
BEST = "#ffb000"
BAND = "#2ca02c"
FROZEN_BAR = "#9ecae1"
TRAINED_BAR = "#08519c"
NO_VALUE = {  # outcomes without a value: drawn on a strip of their own
    Outcome.DIVERGED: (DIVERGED, "x", "diverged (NaN/inf)"),
    Outcome.FAILED: (FAILED, "X", "failed"),
    Outcome.INTERRUPTED: ("#9467bd", "s", "interrupted"),
    "running": ("#17becf", ">", "running"),
}

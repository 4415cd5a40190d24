"""A study's report: PNG plots and one self-contained HTML page a person reads without the numbers.

``write_report(storage, study, folder)`` writes five plots and ``index.html`` (the plots embedded
as data URIs, no other file or network needed):

- ``history.png``: the metric over trials with the best so far; pruned, diverged and failed trials
  each marked their own way;
- ``rates.png``: per group, the learning rate against the metric on a log axis, frozen trials in a
  strip of their own at the left, the best trials' band shaded;
- ``curves.png``: the intermediate values of every trial, pruned trials ending in a cross;
- ``importance.png``: how much each group's rate explains (fANOVA), or why it could not be said;
- ``frozen.png``: per group, the metric of the trials that froze it against those that trained it.

The numbers behind them come from :mod:`lrsearch.analysis`; this package only draws. matplotlib (an
optional extra, ``lrsearch[report]``) is imported when a report is made, with the Agg canvas: no
display, no global pyplot state.

Which module owns what, each importing only those above it:

- :mod:`~lrsearch.report.colors`: one look per outcome, shared by the plots and the page;
- :mod:`~lrsearch.report.data`: what a report reads from the study (``ReportData``, ``collect``);
- :mod:`~lrsearch.report.figures`: the matplotlib figures (``FIGURES``, ``make_figures``);
- :mod:`~lrsearch.report.page`: the HTML page (``CAPTIONS``, ``render_html``);
- :mod:`~lrsearch.report.writer`: the report's folder on disk (``write_report``).
"""

from __future__ import annotations

from lrsearch.report.data import ReportData, collect
from lrsearch.report.figures import DPI, FIGURES, make_figures
from lrsearch.report.page import CAPTIONS, render_html
from lrsearch.report.writer import write_report

__all__ = [
    "CAPTIONS",
    "DPI",
    "FIGURES",
    "ReportData",
    "collect",
    "make_figures",
    "render_html",
    "write_report",
]

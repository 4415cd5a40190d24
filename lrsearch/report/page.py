"""The report's HTML page: the headline, the takeaways, and each plot embedded as a PNG data URI."""

from __future__ import annotations

import base64
import html
import math

from lrsearch import __version__
from lrsearch.analysis import format_rate
from lrsearch.report.colors import COMPLETE, DIVERGED, FAILED, PRUNED
from lrsearch.report.data import ReportData
from lrsearch.report.figures import FIGURES
from lrsearch.schema import Outcome

# What each plot shows, for the page (and for alt text).
CAPTIONS = {
    "history": (
        "The metric over trials",
        "Each dot is a trial in the order it ran; the yellow line is the best value found so far. "
        "Hollow grey dots are trials the pruner stopped early (drawn at their value when stopped); "
        "trials without a value (diverged, failed) sit on the strip below.",
    ),
    "rates": (
        "Learning rate against the metric, per group",
        "One panel per group. Right: trials that trained the group, by their rate (log scale). "
        "Left strip: trials that froze it. The green band spans the rates of the best complete "
        "trials; crosses on the bottom edge are trials that diverged at that rate.",
    ),
    "curves": (
        "Learning curves",
        "The value at every evaluation of every trial. A line that stops at a cross was pruned "
        "there (or diverged, in red); the thick yellow line is the best trial.",
    ),
    "importance": (
        "Which groups matter",
        "How much of the difference between complete trials each group's rate explains "
        "(fANOVA, Optuna's get_param_importances); a long bar is a group worth tuning, a short "
        "one a group whose rate hardly matters.",
    ),
    "frozen": (
        "Frozen or trained",
        "Per group, the complete trials that froze it (light) against those that trained it "
        "(dark): the bar is their mean, the diamond their best, n how many there were.",
    ),
}

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #1d1d1f; background: #f6f7f9; }
main { max-width: 1280px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { margin: 0 0 4px; font-size: 28px; }
h2 { margin: 32px 0 6px; font-size: 20px; }
.sub { color: #555; margin: 0 0 16px; font-size: 15px; }
.card { background: white; border: 1px solid #dfe3e8; border-radius: 8px; padding: 16px 20px; }
.headline { display: flex; gap: 32px; flex-wrap: wrap; align-items: flex-start; }
.best { font-size: 26px; font-weight: 600; }
table { border-collapse: collapse; font-size: 15px; }
th, td { text-align: left; padding: 4px 14px 4px 0; border-bottom: 1px solid #eceff3; }
ul.takeaways { margin: 8px 0 0; padding-left: 20px; font-size: 16px; line-height: 1.6; }
.counts span { display: inline-block; margin-right: 12px; }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 4px; }
figure { margin: 0; }
figcaption { color: #444; margin: 0 0 10px; font-size: 14px; max-width: 980px; }
img { max-width: 100%; height: auto; display: block; }
footer { color: #888; font-size: 12px; margin-top: 32px; }
"""

_STATE_COLORS = {
    Outcome.COMPLETE: COMPLETE,
    Outcome.PRUNED: PRUNED,
    Outcome.DIVERGED: DIVERGED,
    Outcome.FAILED: FAILED,
    Outcome.INTERRUPTED: "#9467bd",
    "running": "#17becf",
    "waiting": "#bbbbbb",
}


def render_html(data: ReportData, images: dict[str, bytes]) -> str:
    """The report page: the headline, then each plot embedded as a PNG data URI.

    Args:
        data: From :func:`collect`.
        images: PNG bytes by figure name.
    """
    e = html.escape
    total = len(data.trials)
    shown_states = [
        s
        for s, n in data.counts.items()
        if n or s in (Outcome.COMPLETE, Outcome.PRUNED, Outcome.DIVERGED, Outcome.FAILED)
    ]
    counts = "".join(
        f'<span><i class="dot" style="background:{_STATE_COLORS[s]}"></i>'
        f"{data.counts[s]} {e(s)}</span>"
        for s in shown_states
    )
    best = data.best
    imp = data.importance.values
    if best is None:
        best_html = '<div class="best">No complete trial yet</div>'
        rates = ""
    else:
        best_html = (
            f'<div class="best">Best: {float(best["value"]):.4g}</div>'
            f'<div class="sub">trial {int(best["number"])}, {e(data.direction)}</div>'
        )
        if data.ranking:
            best_html += f'<div class="sub">{e(data.ranking)}</div>'

        rows = []
        for g in data.groups:
            lr = float(best[f"lr.{g}"])
            rng = data.ranges.get(g)
            searched = f"{format_rate(rng[0])} to {format_rate(rng[1])}" if rng else "-"
            share = f"{imp[g]:.0%}" if g in imp else "-"
            rows.append(
                f"<tr><td><b>{e(g)}</b></td><td>{e(format_rate(lr))}</td>"
                f"<td>{e(searched)}</td><td>{share}</td></tr>"
            )
        # Every other searched parameter with a share (weight decay, layer decay's knobs): the
        # shares of the table then add up to the whole.
        for name, share_value in imp.items():
            if name in data.groups:
                continue
            column = name.removesuffix(" (knob)")
            value = float(best[column]) if column in best else math.nan
            shown = "-" if math.isnan(value) else f"{value:.3g}"
            rows.append(
                f"<tr><td><b>{e(name)}</b></td><td>{e(shown)}</td><td>-</td>"
                f"<td>{share_value:.0%}</td></tr>"
            )
        rates = (
            "<table><tr><th>parameter</th><th>best trial's value</th><th>searched</th>"
            "<th>importance</th></tr>" + "".join(rows) + "</table>"
        )
    takeaways = "".join(f"<li>{e(s.takeaway)}</li>" for s in data.stats)
    sections = []
    for name in FIGURES:
        if name not in images:
            continue
        title, caption = CAPTIONS[name]
        if name == "importance":
            caption += f" ({data.importance.note}.)"
        uri = "data:image/png;base64," + base64.b64encode(images[name]).decode("ascii")
        sections.append(
            f'<h2 id="{name}">{e(title)}</h2><figure class="card">'
            f"<figcaption>{e(caption)}</figcaption>"
            f'<img src="{uri}" alt="{e(title)}: {e(caption)}"></figure>'
        )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lrsearch report: {e(data.study)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<h1>Study “{e(data.study)}”</h1>
<p class="sub">{e(data.direction)} the metric &middot; {total} trial(s) &middot;
groups: {e(", ".join(data.groups) or "none")}</p>
<div class="card headline">
<div>{best_html}<p class="counts">{counts}</p></div>
<div>{rates}</div>
</div>
<h2>What the study says</h2>
<div class="card"><ul class="takeaways">{takeaways}</ul></div>
{"".join(sections)}
<footer>lrsearch {e(__version__)}</footer>
</main>
</body>
</html>
"""

"""lrsearch.report and ``lrsearch report``: the files, a page that needs nothing else, and plots
that show the groups.

One study of every outcome (scripted trainer, no torch work) is made and reported once per module;
rendering is the slow part, so the tests share it.
"""

from __future__ import annotations

import base64
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.axes
import matplotlib.image
import matplotlib.text
import optuna
import pytest
from click.testing import CliRunner, Result
from conftest import RUN_PREFIX, toy_spec_data

from lrsearch.cli import main
from lrsearch.errors import LrsearchError, TrialFailure
from lrsearch.report import FIGURES, ReportData, collect, make_figures, write_report
from lrsearch.search import run_search
from lrsearch.space import Sample
from lrsearch.spec import StudySpec
from lrsearch.training import TrainResult

GROUPS = ["embed", "body", "head"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Enough complete trials for the importance, and one of every other outcome.
BEHAVIOURS = ["complete"] * 4 + ["prune", "diverge", "fail"] + ["complete"] * 3


class Scripted:
    """A ``train_fn``: complete trials score by the head's rate (best at 1e-2), the others end as
    scripted."""

    def __init__(self, behaviours: list[str]) -> None:
        self.behaviours = behaviours
        self.calls = 0

    def __call__(self, *args: Any, report: Callable[[int, float], None], **kw: Any) -> TrainResult:
        sample: Sample = args[2]
        kind = self.behaviours[self.calls]
        self.calls += 1
        if kind == "prune":
            report(0, 0.0)
            raise optuna.TrialPruned("pruned at step 0")  # as the trainer's report() raises it
        elif kind == "diverge":
            report(0, 0.5)
            raise TrialFailure("diverged: loss is nan at step 1", diverged=True)
        elif kind == "fail":
            raise TrialFailure("CUDA out of memory at [train] batch_size = 16")
        value = 1.0 - abs(math.log10(sample.lrs["head"]) + 2.0) / 4.0
        for step in range(3):
            report(step, value * (step + 1) / 3)
        return TrainResult(value, 3, 3, 0.0, "cpu", "fp32")


def make_study(url: str, name: str, behaviours: list[str]) -> None:
    data = toy_spec_data(
        name,
        study={"seed": 2},
        space={"freeze": ["embed", "body"]},
        pruner={"kind": "none"},
    )
    run_search(
        StudySpec.from_dict(data, source="test"),
        storage=url,
        n_trials=len(behaviours),
        device="cpu",
        train_fn=Scripted(behaviours),
    )


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def error_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lrsearch: error: ") and "Traceback" not in result.output
    return lines[0]


class Reported:
    """The module's study and its report, written once through the CLI."""

    def __init__(self, url: str, name: str, folder: Path, result: Result) -> None:
        self.url, self.name, self.folder, self.result = url, name, folder, result

    @property
    def html(self) -> str:
        return (self.folder / "index.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> Reported:
    root = tmp_path_factory.mktemp("report")
    url, name = f"sqlite:///{root / 'studies.db'}", f"{RUN_PREFIX}report"
    make_study(url, name, BEHAVIOURS)
    folder = root / "out" / "nested"  # missing folders are created
    result = invoke("report", "--study", name, "--storage", url, "-o", str(folder))
    return Reported(url, name, folder, result)


@pytest.fixture(scope="module")
def data(reported: Reported) -> ReportData:
    return collect(reported.url, reported.name)


@pytest.fixture(scope="module")
def figures(data: ReportData) -> dict[str, Any]:
    return make_figures(data)


def test_report_writes_the_page_and_every_plot(reported: Reported) -> None:
    assert reported.result.exit_code == 0, reported.result.output
    assert f"wrote {reported.folder / 'index.html'}" in reported.result.stderr
    names = sorted(p.name for p in reported.folder.iterdir())
    assert names == sorted(["index.html", *(f"{n}.png" for n in FIGURES)])
    for name in FIGURES:
        png = (reported.folder / f"{name}.png").read_bytes()
        assert png.startswith(PNG_SIGNATURE), name
        image = matplotlib.image.imread(reported.folder / f"{name}.png")
        height, width = image.shape[:2]
        assert width >= 600 and height >= 250, (name, image.shape)
        assert image.std() > 0.01, f"{name}.png is blank"


def test_the_page_needs_no_other_file_or_network(reported: Reported) -> None:
    html = reported.html
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", html, flags=re.I)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs), refs[:3]
    assert not re.search(r"https?://", html)
    assert "<script" not in html.lower() and "<link" not in html.lower()
    assert "url(" not in html  # no CSS fetches either
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(embedded) == len(FIGURES)
    for name, b64 in zip(FIGURES, embedded, strict=True):
        assert base64.b64decode(b64) == (reported.folder / f"{name}.png").read_bytes(), name


def test_the_page_names_every_group_and_says_what_to_take_away(
    reported: Reported, data: ReportData
) -> None:
    html = reported.html
    assert reported.name in html and "maximize" in html
    for group in GROUPS:
        assert f"<b>{group}</b>" in html  # the best trial's rates table
    takeaways = re.findall(r"<li>(.*?)</li>", html)
    assert [t.split(":")[0] for t in takeaways] == GROUPS
    assert [s.takeaway for s in data.stats] == [t.replace("&#x27;", "'") for t in takeaways]
    counts = {s: n for n, s in re.findall(r"</i>(\d+) (\w+)</span>", html)}
    assert counts == {"complete": "7", "pruned": "1", "diverged": "1", "failed": "1"}
    best = data.best
    assert best is not None and f"Best: {float(best['value']):.4g}" in html


def _texts(fig: Any) -> list[str]:
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_text()]


def test_every_plot_is_drawn(figures: dict[str, Any], data: ReportData) -> None:
    assert list(figures) == list(FIGURES)
    history = _texts(figures["history"])
    assert any(data.study in t and "best so far" in t for t in history)
    assert {"complete", "best so far", "diverged (NaN/inf)", "failed"} <= set(history)
    curves = figures["curves"].axes[0]
    drawn = [line for line in curves.get_lines() if len(line.get_xdata()) > 1]
    assert len(drawn) >= 7  # a line per complete trial at least


def test_rates_have_one_log_panel_per_group_titled_by_it(figures: dict[str, Any]) -> None:
    fig = figures["rates"]
    assert [sf.get_suptitle() for sf in fig.subfigs] == GROUPS
    axes = fig.findobj(matplotlib.axes.Axes)
    assert [ax.get_xscale() for ax in axes] == ["linear", "log"] * len(GROUPS)
    strips = [ax for ax in axes if ax.get_xscale() == "linear"]
    assert all([t.get_text() for t in ax.get_xticklabels()] == ["frozen"] for ax in strips)
    # The head is never freezable here: its strip says so instead of staying empty.
    assert "never\nfrozen" in _texts(strips[2])


def test_frozen_against_trained_and_importance_name_the_groups(
    figures: dict[str, Any], data: ReportData
) -> None:
    frozen = figures["frozen"].axes[0]
    assert [t.get_text() for t in frozen.get_xticklabels()] == GROUPS
    importance = figures["importance"].axes[0]
    labels = [t.get_text() for t in importance.get_yticklabels()]
    assert labels and set(labels) <= set(GROUPS)
    assert labels[-1] == "head"  # the largest share, at the top: only the head's rate matters
    assert data.importance.note in _texts(figures["importance"])


@pytest.mark.parametrize(
    ("behaviours", "headline", "note"),
    [
        (["fail", "fail"], "No complete trial yet", "too few complete trials (0)"),
        (["complete", "complete"], "Best: ", "too few complete trials (2)"),
    ],
)
def test_a_small_study_still_reports_and_says_why_plots_are_empty(
    tmp_path: Path, behaviours: list[str], headline: str, note: str
) -> None:
    url, name = f"sqlite:///{tmp_path / 's.db'}", f"{RUN_PREFIX}small"
    make_study(url, name, behaviours)
    page = write_report(url, name, tmp_path / "out")
    html = page.read_text(encoding="utf-8")
    assert headline in html and note in html
    for figure in FIGURES:
        assert (tmp_path / "out" / f"{figure}.png").read_bytes().startswith(PNG_SIGNATURE)
    figures = make_figures(collect(url, name))
    assert any(note in t for t in _texts(figures["importance"]))


def test_report_into_a_file_is_one_line(reported: Reported, tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("mine", encoding="utf-8")
    result = invoke(
        "report", "--study", reported.name, "--storage", reported.url, "-o", str(target)
    )
    assert result.exit_code == 1
    assert "it is a file" in error_line(result)
    assert target.read_text(encoding="utf-8") == "mine"


def test_report_on_an_unknown_study_is_one_line(reported: Reported, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke("report", "--study", "absent", "--storage", reported.url, "-o", str(out))
    assert result.exit_code == 1
    assert "no study named 'absent'" in error_line(result)
    assert not out.exists()


def test_report_without_matplotlib_names_the_extra(
    reported: Reported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    with pytest.raises(LrsearchError, match=re.escape('pip install "lrsearch[report]"')):
        write_report(reported.url, reported.name, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_importance_table_has_every_searched_parameter_and_adds_up(tmp_path: Path) -> None:
    url, name = f"sqlite:///{tmp_path / 's.db'}", f"{RUN_PREFIX}knobs"
    data = toy_spec_data(
        name,
        study={"seed": 2},
        space={"freeze": ["embed"], "weight_decay": [1e-5, 1e-1]},
        pruner={"kind": "none"},
    )
    run_search(
        StudySpec.from_dict(data, source="test"),
        storage=url,
        n_trials=12,
        device="cpu",
        train_fn=Scripted(["complete"] * 12),
    )
    reported = collect(url, name)
    assert "weight_decay" in reported.importance.values
    html = write_report(url, name, tmp_path / "out").read_text(encoding="utf-8")
    rows = re.findall(
        r"<tr><td><b>(.*?)</b></td><td>(.*?)</td><td>.*?</td><td>(\d+)%</td></tr>", html
    )
    names = [r[0] for r in rows]
    assert set(names) == set(reported.importance.values) and "weight_decay" in names
    # Each share is rounded to a whole percent: together within a rounding of 100.
    assert abs(sum(int(r[2]) for r in rows) - 100) <= len(rows) / 2
    best_wd = reported.best["weight_decay"] if reported.best is not None else None
    assert dict((r[0], r[1]) for r in rows)["weight_decay"] == f"{float(best_wd):.3g}"

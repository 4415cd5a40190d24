"""lrsearch.analysis and ``lrsearch trials``: trials as data, every format read back, per-group
statistics.

The study behind most tests is made through ``run_search`` with a scripted trainer (no torch work),
so each trial's outcome is forced: complete, pruned, diverged, failed and interrupted.
"""

from __future__ import annotations

import io
import json
import math
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
from click.testing import CliRunner, Result
from conftest import RUN_PREFIX, toy_spec_data
from optuna.trial import TrialState

import lrsearch
from lrsearch.analysis import (
    FORMATS,
    STATES,
    filter_states,
    format_rate,
    group_importance,
    group_stats,
    load_curves,
    load_trials,
    trial_record,
    trial_state,
    trials_frame,
    write_trials,
)
from lrsearch.cli import TRIAL_FORMATS, TRIAL_STATES, main
from lrsearch.errors import LrsearchError, StudyNotFoundError, TrialFailure
from lrsearch.search import run_search
from lrsearch.space import Sample
from lrsearch.spec import StudySpec
from lrsearch.storage import open_storage, trial_lrs
from lrsearch.training import TrainResult

SpecBuilder = Callable[..., StudySpec]
GROUPS = ["embed", "body", "head"]
MEDIAN = {"kind": "median", "n_startup_trials": 1, "n_warmup_steps": 0}
# The trainer's behaviour per trial -> (state, value, pruned_step, reason part, n_evaluations)
PLAN: list[tuple[str, str, float | None, int | None, str | None, int]] = [
    ("complete", "complete", 0.7, None, None, 3),  # rising: the median pruner keeps each one
    ("complete", "complete", 0.8, None, None, 3),
    ("prune", "pruned", 0.1, 0, None, 1),  # Optuna keeps the value it was stopped at
    ("diverge", "diverged", None, 1, "loss is nan", 2),  # the NaN goes one step past the last
    ("fail", "failed", None, None, "CUDA out of memory", 0),
    ("complete", "complete", 0.9, None, None, 3),
    ("interrupt", "interrupted", None, None, "interrupted", 0),
]
# After them, the interrupted configuration queued again (run does, as worker does): waiting.
ROW_STATES = [s for _, s, *_ in PLAN] + ["waiting"]


class Scripted:
    """A ``train_fn`` playing one behaviour per trial and recording the samples it got."""

    def __init__(self, behaviours: list[str]) -> None:
        self.behaviours = behaviours
        self.samples: list[Sample] = []
        self.values = [v for b, _, v, *_ in PLAN if b == "complete"]

    def __call__(self, *args: Any, report: Callable[[int, float], None], **kw: Any) -> TrainResult:
        sample: Sample = args[2]
        self.samples.append(sample)
        kind = self.behaviours[len(self.samples) - 1]
        if kind == "complete":
            value = self.values.pop(0)
            for step in range(3):
                report(step, value)
            return TrainResult(value, 3, 3, 0.0, "cpu", "fp32")
        if kind == "prune":
            report(0, 0.1)
        elif kind == "diverge":
            report(0, 0.95)
            raise TrialFailure("diverged: loss is nan at step 1", diverged=True)
        elif kind == "fail":
            raise TrialFailure("CUDA out of memory at [train] batch_size = 16")
        elif kind == "interrupt":
            raise KeyboardInterrupt
        return TrainResult(0.1, 1, 1, 0.0, "cpu", "fp32")


def make_study(url: str, name: str) -> Scripted:
    """The study of every outcome, with two freezable groups and a searched weight decay."""
    data = toy_spec_data(
        name,
        pruner=MEDIAN,
        study={"seed": 5},
        space={"freeze": ["embed", "body"], "weight_decay": [1e-4, 1e-1]},
    )
    script = Scripted([b for b, *_ in PLAN])
    summary = run_search(
        StudySpec.from_dict(data, source="test"),
        storage=url,
        n_trials=len(PLAN),
        device="cpu",
        train_fn=script,
    )
    assert summary.interrupted and len(summary.outcomes) == len(PLAN)
    return script


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def error_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lrsearch: error: ") and "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The study of every outcome on SQLite, made once for the tests that only read it."""
    url = f"sqlite:///{tmp_path_factory.mktemp('analysis') / 'studies.db'}"
    name = f"{RUN_PREFIX}planned"
    make_study(url, name)
    return url, name


def test_one_row_per_trial_with_every_column(storage_url: str, study_name: str) -> None:
    script = make_study(storage_url, study_name)
    df = lrsearch.load_trials(storage_url, study_name)
    assert list(df.columns) == [
        "number", "state", "value", "cost", "duration_s",
        "lr.embed", "lr.body", "lr.head", "frozen.embed", "frozen.body", "frozen.head",
        "weight_decay", "pruned_step", "reason", "host",
        "datetime_start", "datetime_complete", "n_evaluations",
    ]  # fmt: skip
    assert list(df["number"]) == list(range(len(ROW_STATES)))
    assert list(df["state"]) == ROW_STATES
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url))
    for row, trial, sample, (behaviour, state, value, step, reason, n_evals) in zip(
        df.iloc[: len(PLAN)].itertuples(index=False),
        study.trials[: len(PLAN)],
        script.samples,
        PLAN,
        strict=True,
    ):
        where = f"trial {row.number} ({behaviour})"
        got = row._asdict()
        assert got["state"] == state, where
        if value is None:
            assert math.isnan(got["value"]), where
        else:
            assert got["value"] == pytest.approx(value), where
        for g in GROUPS:
            lr = df.loc[row.number, f"lr.{g}"]
            assert lr == sample.lrs[g] == trial_lrs(trial)[g], where
            assert bool(df.loc[row.number, f"frozen.{g}"]) == (lr == 0.0), where
        assert df.loc[row.number, "weight_decay"] == pytest.approx(sample.weight_decay), where
        assert (None if pd.isna(got["pruned_step"]) else got["pruned_step"]) == step, where
        if reason is None:
            assert pd.isna(got["reason"]), where
        else:
            assert reason in got["reason"], where
        assert got["host"] == socket.gethostname(), where
        assert got["n_evaluations"] == n_evals, where
        assert got["datetime_start"] == pd.Timestamp(trial.datetime_start), where
        assert got["datetime_complete"] == pd.Timestamp(trial.datetime_complete), where
        assert got["duration_s"] == pytest.approx(trial.duration.total_seconds()), where
        assert got["duration_s"] >= 0
        # One objective: a complete trial's cost is its wall time; other trials have none.
        if state == "complete":
            assert got["cost"] == pytest.approx(got["duration_s"]), where
        else:
            assert math.isnan(got["cost"]), where
    # Both branches of every freeze choice appear, so the flags were really tested.
    assert df["frozen.head"].eq(False).all()
    assert df["frozen.embed"].any() or df["frozen.body"].any()


def test_columns_follow_the_study_group_order(sqlite_url: str, study_name: str) -> None:
    data = toy_spec_data(study_name, study={"n_trials": 2})
    data["groups"] = {"head": ["head"], "embed": ["embed"], "body": ["body"]}
    spec = StudySpec.from_dict(data, source="test")
    run_search(spec, storage=sqlite_url, device="cpu", train_fn=Scripted(["complete"] * 2))
    df = load_trials(open_storage(sqlite_url), study_name)  # a storage object works as a URL does
    assert [c for c in df.columns if c.startswith("lr.")] == ["lr.head", "lr.embed", "lr.body"]
    assert [c for c in df.columns if c.startswith("frozen.")] == [
        "frozen.head", "frozen.embed", "frozen.body",
    ]  # fmt: skip


def test_an_empty_study_has_every_column(sqlite_url: str, study_name: str) -> None:
    study = optuna.create_study(study_name=study_name, storage=open_storage(sqlite_url))
    df = trials_frame(study)
    assert df.empty
    assert {"number", "state", "value", "pruned_step", "n_evaluations"} <= set(df.columns)
    assert write_trials(df, fmt="table") == "no trials\n"


def test_curves_are_every_intermediate_value(planned: tuple[str, str]) -> None:
    url, name = planned
    curves = load_curves(url, name)
    assert list(curves.columns) == ["number", "step", "value", "state"]
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    expected = [
        (t.number, step, value)
        for t in study.trials
        for step, value in sorted(t.intermediate_values.items())
    ]
    got = list(zip(curves["number"], curves["step"], curves["value"], strict=True))
    assert len(got) == len(expected) == 3 + 3 + 1 + 2 + 3
    for (n, s, v), (en, es, ev) in zip(got, expected, strict=True):
        assert (n, s) == (en, es)
        assert math.isnan(v) if math.isnan(ev) else v == ev
    diverged = curves[curves["number"] == 3]
    assert list(diverged["state"]) == ["diverged", "diverged"]
    assert math.isnan(diverged["value"].iloc[-1])


def test_importing_the_worker_side_loads_neither_pandas_nor_matplotlib() -> None:
    code = (
        "import sys, lrsearch.search, lrsearch.analysis, lrsearch.report, lrsearch.cli; "
        "print('pandas' in sys.modules, 'matplotlib' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["False", "False"]


def test_the_cli_offers_what_the_library_accepts() -> None:
    assert TRIAL_STATES == STATES
    assert TRIAL_FORMATS == FORMATS


STATE_FRAME = pd.DataFrame({"number": range(5), "state": ["complete", "pruned", "diverged",
                                                          "failed", "complete"]})  # fmt: skip


@pytest.mark.parametrize(
    ("states", "numbers"),
    [
        ([], [0, 1, 2, 3, 4]),
        (["complete"], [0, 4]),
        (["pruned", "diverged"], [1, 2]),
        (["running"], []),
    ],
)
def test_filter_states(states: list[str], numbers: list[int]) -> None:
    assert list(filter_states(STATE_FRAME, states)["number"]) == numbers


def test_filter_states_rejects_an_unknown_state() -> None:
    with pytest.raises(LrsearchError, match=r"unknown state\(s\) \['done'\]"):
        filter_states(STATE_FRAME, ["done"])


@pytest.mark.parametrize(
    ("lr", "text"),
    [(0.0, "frozen"), (3e-3, "3e-3"), (5.67e-4, "5.7e-4"), (0.1, "1e-1"), (2.0, "2e0")],
)
def test_format_rate(lr: float, text: str) -> None:
    assert format_rate(lr) == text


def _frame(rows: list[tuple[str, float | None, float]]) -> pd.DataFrame:
    """A trials frame of (state, value, lr.g) rows, enough for group_stats."""
    return pd.DataFrame(
        {
            "number": range(len(rows)),
            "state": [s for s, _, _ in rows],
            "value": [math.nan if v is None else v for _, v, _ in rows],
            "lr.g": [lr for _, _, lr in rows],
        }
    )


@pytest.mark.parametrize(
    ("rows", "direction", "searched", "expected"),
    [
        ([], "maximize", None, "g: no complete trial yet"),
        (
            [("complete", 0.9, 0.0), ("complete", 0.8, 0.0), ("complete", 0.5, 1e-3)],
            "maximize",
            None,
            "g: frozen in all 2 best trials; training it never beat freezing it "
            "(best 0.5 trained vs 0.9 frozen)",
        ),
        (
            [("complete", 0.9, 0.0), ("pruned", 0.2, 1e-3), ("failed", None, 1e-2)],
            "maximize",
            None,
            "g: frozen in the best trial; none of the 2 trial(s) that trained it completed",
        ),
        (
            [("complete", 0.9, 0.0), ("complete", 0.85, 3e-3), ("complete", 0.1, 1e-1)],
            "maximize",
            None,
            "g: frozen in 1 of the 2 best trials and trained at 3e-3 in the other: it matters "
            "little",
        ),
        (
            [("complete", 0.1, 3e-3), ("complete", 0.2, 1e-2), ("complete", 0.9, 0.0)],
            "minimize",  # lower is better: 0.1 and 0.2 are the best
            (1e-5, 1.0),
            "g: trained in all 2 best trials, between 3e-3 and 1e-2; the trials that froze it "
            "did worse",
        ),
        (
            [("complete", 0.9, 0.08), ("complete", 0.8, 0.05)],
            "maximize",
            (1e-4, 1e-1),
            "g: best between 5e-2 and 8e-2, at the top of its searched range [1e-4, 1e-1]: try "
            "a wider range",
        ),
        (
            [("complete", 0.9, 1.2e-4)],
            "maximize",
            (1e-4, 1e-1),
            "g: best at 1.2e-4, at the bottom of its searched range [1e-4, 1e-1]: try a wider "
            "range",
        ),
    ],
)
def test_group_takeaways(
    rows: list[tuple[str, float | None, float]],
    direction: str,
    searched: tuple[float, float] | None,
    expected: str,
) -> None:
    ranges = {"g": searched} if searched else None
    (stats,) = group_stats(_frame(rows), ["g"], direction=direction, ranges=ranges, top=2)
    assert stats.takeaway == expected


def test_group_stats_counts_and_means() -> None:
    rows = [("complete", 0.9, 0.0), ("complete", 0.7, 0.0), ("complete", 0.6, 1e-3)]
    (s,) = group_stats(_frame([*rows, ("pruned", 0.1, 1e-2)]), ["g"], direction="maximize")
    assert (s.n_frozen, s.n_trained, s.tried_frozen, s.tried_trained) == (2, 1, 2, 2)
    assert s.mean_frozen == pytest.approx(0.8) and s.mean_trained == pytest.approx(0.6)
    assert (s.best_frozen, s.best_trained, s.best_lr) == (0.9, 0.6, 0.0)
    assert (s.top, s.top_frozen, s.top_low, s.top_high) == (3, 2, 1e-3, 1e-3)


def _head_matters(*args: Any, report: Callable[[int, float], None], **kw: Any) -> TrainResult:
    """A trainer whose metric depends on the head's rate only (best at 1e-2)."""
    sample: Sample = args[2]
    value = 1.0 - abs(math.log10(sample.lrs["head"]) + 2.0) / 3.0
    report(0, value)
    return TrainResult(value, 1, 1, 0.0, "cpu", "fp32")


def test_importance_finds_the_group_that_matters(
    sqlite_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    spec = toy_spec(study_name, space={"freeze": ["embed", "body"]}, study={"seed": 1})
    run_search(spec, storage=sqlite_url, n_trials=10, device="cpu", train_fn=_head_matters)
    study = optuna.load_study(study_name=study_name, storage=open_storage(sqlite_url))
    df = trials_frame(study)
    imp = group_importance(study, df, GROUPS)
    assert max(imp.values, key=imp.values.__getitem__) == "head"
    assert imp.values["head"] > 0.5
    assert set(imp.values) <= set(GROUPS) and sum(imp.values.values()) == pytest.approx(1.0)
    assert "fANOVA over 10 complete trials" in imp.note
    few = group_importance(study, df.head(3), GROUPS)
    assert few.values == {} and "too few complete trials (3)" in few.note


def test_a_prefix_space_has_a_freeze_depth_column_and_no_double_importance(
    sqlite_url: str, study_name: str, toy_spec: SpecBuilder
) -> None:
    space = {"freeze": ["embed", "body"], "freeze_mode": "prefix"}
    spec = toy_spec(study_name, space=space, study={"seed": 1})
    run_search(spec, storage=sqlite_url, n_trials=10, device="cpu", train_fn=_head_matters)
    study = optuna.load_study(study_name=study_name, storage=open_storage(sqlite_url))
    df = trials_frame(study)
    frozen = df["frozen.embed"].astype(int) + df["frozen.body"].astype(int)
    assert list(df["freeze_depth"]) == list(frozen)
    assert not (df["frozen.body"] & ~df["frozen.embed"]).any()  # a prefix, never a gap
    assert df["freeze_depth"].nunique() > 1
    imp = group_importance(study, df, GROUPS)
    # freeze_depth is what the groups' own columns say: counted there, not twice.
    assert set(imp.values) <= set(GROUPS) and max(imp.values, key=imp.values.__getitem__) == "head"


# ---- lrsearch trials ----------------------------------------------------------------------------


def _read_back(fmt: str, path: Path) -> pd.DataFrame:
    if fmt == "csv":
        return pd.read_csv(path)
    if fmt == "json":
        return pd.DataFrame(json.loads(path.read_text(encoding="utf-8")))
    return pd.read_parquet(path)


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_each_format_is_written_and_read_back(
    planned: tuple[str, str], tmp_path: Path, fmt: str
) -> None:
    url, name = planned
    out = tmp_path / f"trials.{fmt}"
    result = invoke("trials", "--study", name, "--storage", url, "--format", fmt, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and f"wrote {len(ROW_STATES)} trial(s) to {out}" in result.stderr
    df = load_trials(url, name)
    back = _read_back(fmt, out)
    if fmt == "parquet":  # binary and typed: it must come back exactly
        pd.testing.assert_frame_equal(back, df)
        return
    assert list(back.columns) == list(df.columns)
    for col in ["number", "n_evaluations", "state"]:
        assert list(back[col]) == list(df[col]), col
    for col in ["value", "duration_s", "lr.embed", "lr.body", "lr.head", "weight_decay"]:
        # JSON and CSV carry floats as decimal text: equal to many digits, NaN where NaN.
        pd.testing.assert_series_equal(
            back[col].astype("float64"), df[col].astype("float64"), rtol=1e-9, obj=col
        )
    for g in GROUPS:
        # NA for the queued trial, which has no rates yet.
        assert [None if pd.isna(v) else bool(v) for v in back[f"frozen.{g}"]] == [
            None if pd.isna(v) else bool(v) for v in df[f"frozen.{g}"]
        ]
    steps = [None if pd.isna(v) else int(v) for v in back["pruned_step"]]
    assert steps == [step for _, _, _, step, _, _ in PLAN] + [None]
    reasons = [None if pd.isna(v) else v for v in back["reason"]]
    assert reasons == [None if pd.isna(v) else v for v in df["reason"]]
    started = pd.to_datetime(back["datetime_start"])
    assert (started - df["datetime_start"]).abs().max() < pd.Timedelta(milliseconds=1)


def test_csv_and_json_go_to_stdout_too(planned: tuple[str, str]) -> None:
    url, name = planned
    csv = invoke("trials", "--study", name, "--storage", url, "--format", "csv")
    assert csv.exit_code == 0, csv.output
    assert list(pd.read_csv(io.StringIO(csv.stdout))["state"]) == ROW_STATES
    as_json = invoke("trials", "--study", name, "--storage", url, "--format", "json")
    assert [r["state"] for r in json.loads(as_json.stdout)] == ROW_STATES


def test_table_shows_every_trial_with_rates_and_reasons(planned: tuple[str, str]) -> None:
    url, name = planned
    result = invoke("trials", "--study", name, "--storage", url)
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.rstrip("\n").splitlines()
    assert header.split() == [
        "trial", "state", "value", "seconds", *GROUPS, "weight_decay", "pruned_step", "reason",
    ]  # fmt: skip
    assert len(rows) == len(ROW_STATES)
    df = load_trials(url, name)
    for i, (line, state) in enumerate(zip(rows, ROW_STATES, strict=True)):
        cells = line.split()
        assert cells[:2] == [str(i), state]
        assert cells[4:7] == [format_rate(df.loc[i, f"lr.{g}"]) for g in GROUPS]
    assert "CUDA out of memory" in rows[4] and "loss is nan" in rows[3]
    assert any("frozen" in r for r in rows)


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        (["pruned"], ["pruned"]),
        (["diverged", "failed"], ["diverged", "failed"]),
        (["complete"], ["complete"] * 3),
        (["interrupted"], ["interrupted"]),
    ],
)
def test_state_filter(planned: tuple[str, str], states: list[str], expected: list[str]) -> None:
    url, name = planned
    args = [a for s in states for a in ("--state", s)]
    result = invoke("trials", "--study", name, "--storage", url, *args, "--format", "json")
    assert result.exit_code == 0, result.output
    assert [r["state"] for r in json.loads(result.stdout)] == expected


def test_an_unknown_state_is_a_usage_error(planned: tuple[str, str]) -> None:
    url, name = planned
    result = invoke("trials", "--study", name, "--storage", url, "--state", "done")
    assert result.exit_code == 2 and "'done' is not one of" in result.stderr


def test_unknown_study_is_one_line(planned: tuple[str, str]) -> None:
    url, _ = planned
    result = invoke("trials", "--study", "absent", "--storage", url)
    assert result.exit_code == 1
    assert "no study named 'absent'" in error_line(result)
    with pytest.raises(StudyNotFoundError):
        load_trials(url, "absent")


def test_parquet_needs_a_file(planned: tuple[str, str]) -> None:
    url, name = planned
    result = invoke("trials", "--study", name, "--storage", url, "--format", "parquet")
    assert result.exit_code == 1
    assert "name it with -o FILE" in error_line(result)
    assert result.stdout == ""


def test_parquet_without_pyarrow_names_the_extra(
    planned: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, name = planned
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now raises ImportError
    out = tmp_path / "t.parquet"
    result = invoke(
        "trials", "--study", name, "--storage", url, "--format", "parquet", "-o", str(out)
    )
    assert result.exit_code == 1
    assert 'pip install "lrsearch[parquet]"' in error_line(result)
    assert not out.exists()


def test_writing_to_a_missing_folder_is_one_line(planned: tuple[str, str], tmp_path: Path) -> None:
    url, name = planned
    out = tmp_path / "no" / "such" / "t.csv"
    result = invoke("trials", "--study", name, "--storage", url, "--format", "csv", "-o", str(out))
    assert result.exit_code == 1
    assert "cannot write" in error_line(result)


@pytest.mark.parametrize(
    ("state", "attrs", "expected"),
    [
        (TrialState.COMPLETE, {}, "complete"),
        (TrialState.FAIL, {}, "failed"),  # a plain Optuna failure: the listing's word, not "fail"
        (TrialState.FAIL, {"lrsearch.outcome": "interrupted"}, "interrupted"),
        (TrialState.PRUNED, {"lrsearch.outcome": "diverged"}, "diverged"),
    ],
)
def test_a_trial_record_names_its_state_as_the_trial_listing_does(
    state: TrialState, attrs: dict[str, Any], expected: str
) -> None:
    trial = optuna.trial.create_trial(
        state=state,
        value=0.5 if state == TrialState.COMPLETE else None,
        user_attrs=attrs,
    )
    assert trial_record(trial)["state"] == expected == trial_state(trial)

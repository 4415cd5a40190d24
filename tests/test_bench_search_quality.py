"""benchmarks/bench_search_quality.py, run in-process on the digits triple at a tiny budget."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_search_quality.py"
STRATEGIES = ("per_group", "single_lr", "layer_decay")
COST_AWARE = "per_group_cost"
NOISE_AWARE = "per_group_cost_noise_aware"
ROLES = (
    "per_group",
    "per_group_cheapest",
    "per_group_cost_cheapest",
    NOISE_AWARE,
    "single_lr",
    "layer_decay",
)


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_search_quality", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


def _numbers(value: Any) -> list[float]:
    """Every number anywhere in ``value`` (a JSON document)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


@pytest.fixture(scope="module")
def report(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "quality.json"
    threads = torch.get_num_threads()
    # One thread: on a CPU shared with other torch jobs more threads than free cores stall.
    argv = ["--tasks", "digits", "--trials", "4", "--seeds", "2", "--threads", "1"]
    code = bench.main([*argv, "--out", str(out)])
    assert torch.get_num_threads() == threads  # restored
    assert code == 0
    assert out.with_suffix(".png").stat().st_size > 0
    text = out.read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text  # standard JSON
    data: dict[str, Any] = json.loads(text)
    return data


def test_report_structure_and_config(report: dict[str, Any]) -> None:
    assert report["config"]["tasks"] == ["digits"]
    assert report["config"]["trials"] == 4 and report["config"]["seeds"] == 2
    assert report["config"]["threads"] == 1 and report["machine"]["torch_threads"] == 1
    machine = report["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch"] and machine["device"]
    assert report["skipped"] == {}
    assert all(math.isfinite(n) for n in _numbers(report))
    assert report["total_wall_s"] > 0


def test_every_strategy_searched_at_the_same_budget(report: dict[str, Any]) -> None:
    task = report["tasks"]["digits"]
    assert task["kwargs"] == {"n_train": 200, "n_val": 300}  # the quickstart's own sizes
    assert task["spec_differences"] == []  # the three study files differ only in [space]
    kinds = {"per_group": "per_group", "single_lr": "single", "layer_decay": "layer_decay"}
    for strategy in STRATEGIES:
        search = task["strategies"][strategy]
        assert search["space"] == kinds[strategy]
        trials = search["trials"]
        assert [t["number"] for t in trials] == [0, 1, 2, 3]
        assert sum(search["counts"].values()) == 4
        elapsed = [t["elapsed_s"] for t in trials]
        assert elapsed == sorted(elapsed) and elapsed[-1] <= search["search_wall_s"]
        for t in trials:
            assert t["state"] in ("complete", "pruned", "diverged", "failed")
            assert t["duration_s"] > 0 and t["train_s"] > 0
            if t["state"] == "complete":
                assert 0 <= t["value"] <= 1
            assert set(t["lrs"]) == {"stem", "body", "head"}
        if strategy == "single_lr":
            assert all(len(set(t["lrs"].values())) == 1 for t in trials)
        assert search["cost"] is None


def test_the_cost_aware_search_is_per_group_with_a_second_objective(
    report: dict[str, Any],
) -> None:
    task = report["tasks"]["digits"]
    search = task["strategies"][COST_AWARE]
    assert search["space"] == "per_group" and search["cost"] == "seconds"
    assert search["direction"] == task["strategies"]["per_group"]["direction"]
    trials = search["trials"]
    # Its [winner] (top 1 of a 4-trial budget, 2 reseeds) is paid from its budget: 2 searched.
    assert [t["number"] for t in trials] == [0, 1]
    assert "pruned" not in search["counts"]  # a two-objective study prunes nothing
    # Its winner is the cheapest trial near its own best, by the seconds it trained.
    done = [t for t in trials if t["state"] == "complete"]
    best = max(t["value"] for t in done)
    near = [t for t in done if best - t["value"] <= 0.005 + 1e-12]
    chosen = task["results"]["per_group_cost_cheapest"]
    assert chosen["strategy"] == COST_AWARE
    assert chosen["trial"] == min(near, key=lambda t: (t["train_s"], t["number"]))["number"]


def test_the_cost_aware_study_is_confirmed_and_names_a_noise_aware_winner(
    report: dict[str, Any],
) -> None:
    task = report["tasks"]["digits"]
    confirm = task["strategies"][COST_AWARE]["confirm"]
    assert [t["trial"] for t in confirm["trials"]] == [task["strategies"][COST_AWARE]["best_trial"]]
    (top,) = confirm["trials"]
    assert len(top["values"]) == 3  # the search's run and two reseeds
    assert top["mean"] == pytest.approx(sum(top["values"]) / 3)
    assert len(confirm["seeds"]) == 2 and min(confirm["seeds"]) >= 10_000
    # Retraining on the test split never reuses a seed the confirmation trained with.
    assert not set(confirm["seeds"]) & set(task["retrain_seeds"])
    assert confirm["pick"] == top["trial"]  # one candidate: it is the pick
    chosen = task["results"][NOISE_AWARE]
    assert chosen["strategy"] == COST_AWARE and chosen["trial"] == confirm["pick"]
    assert [r["seed"] for r in chosen["runs"]] == task["retrain_seeds"]
    # The other studies confirm nothing.
    assert all(task["strategies"][s]["confirm"] is None for s in STRATEGIES)


def test_winners_retrained_with_the_same_seeds_on_the_test_split(
    report: dict[str, Any],
) -> None:
    task = report["tasks"]["digits"]
    seeds = task["retrain_seeds"]
    assert len(seeds) == 2 and len(set(seeds)) == 2
    assert not set(seeds) & set(range(4))  # no seed a search trial trained with
    results = task["results"]
    assert set(results) == set(ROLES)
    for role in ROLES:
        r = results[role]
        search = task["strategies"][r["strategy"]]
        complete = [t for t in search["trials"] if t["state"] == "complete"]
        assert r["trial"] in {t["number"] for t in complete}
        assert [run["seed"] for run in r["runs"]] == seeds
        assert r["test"]["n"] == 2 and 0 <= r["test"]["mean"] <= 1 and r["test"]["sd"] >= 0
        assert r["train_s"]["mean"] > 0
    best = results["per_group"]["val"]
    assert best == max(t["value"] for t in task["strategies"]["per_group"]["trials"] if t["value"])
    assert best - results["per_group_cheapest"]["val"] <= 0.005 + 1e-9


def test_targets_are_booleans(report: dict[str, Any]) -> None:
    targets = report["targets"]
    assert set(targets) == {"a", "b", "d", "cost_single_values"}
    for t in targets.values():
        assert isinstance(t["passed"], bool)
        assert t["rule"] and set(t["per_task"]) == {"digits"}
    for key in ("a", "b"):
        c = targets[key]["per_task"]["digits"]
        assert c["clearly_better"] is (c["difference"] > c["allowed"])
        assert c["not_worse"] is (c["difference"] >= -c["allowed"])
        # Issue 15's rule: better by more than the noise on every task.
        assert targets[key]["passed"] is (c["not_worse"] and c["clearly_better"])
        assert targets[key]["passed_last_round_rule"] is (c["not_worse"] and c["difference"] > 0)
    results = report["tasks"]["digits"]["results"]
    d = targets["d"]["per_task"]["digits"]
    assert d["judged"] is True
    assert d["noise_aware_train_s"] == results[NOISE_AWARE]["train_s"]["median"]
    assert d["speedup"] == pytest.approx(d["single_lr_train_s"] / d["noise_aware_train_s"])
    assert d["fast"] is (d["speedup"] >= 2.0) and d["no_slower"] is (d["speedup"] >= 0.95)
    assert targets["d"]["passed"] is (d["fast"] and d["no_slower"])
    assert targets["d"]["judged"] is True
    speed = targets["cost_single_values"]["per_task"]["digits"]
    assert speed["speedup"] == pytest.approx(
        speed["single_lr_train_s"] / speed["cost_aware_cheapest_train_s"]
    )
    results = report["tasks"]["digits"]["results"]
    assert (
        speed["cost_aware_cheapest_train_s"]
        == results["per_group_cost_cheapest"]["train_s"]["median"]
    )
    assert speed["one_objective_speedup"] == pytest.approx(
        speed["single_lr_train_s"] / results["per_group_cheapest"]["train_s"]["median"]
    )
    assert speed["passed"] is (speed["speedup"] >= 2.0)


def test_a_run_of_some_searches_is_not_judged_until_merged(
    bench: ModuleType,
    report: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Two runs of one task, each with half the searches (--only), one core each.
    halves = []
    for only in ("per_group,per_group_cost", "single_lr,layer_decay"):
        out = tmp_path / f"{only.split(',')[0]}.json"
        argv = ["--tasks", "digits", "--trials", "4", "--seeds", "2", "--threads", "1"]
        assert bench.main([*argv, "--only", only, "--out", str(out)]) == 0
        half = json.loads(out.read_text(encoding="utf-8"))
        assert half["tasks"]["digits"]["searched"] == only.split(",")
        assert set(half["targets"]["not_judged"]) == {"digits"}
        assert half["targets"]["a"]["per_task"] == {} and half["targets"]["a"]["passed"] is False
        printed = capsys.readouterr().out
        assert "target (a): not judged (no task has all its searches here)" in printed
        assert "target (a) FAIL" not in printed
        halves.append(out)
    first, second = (json.loads(h.read_text(encoding="utf-8")) for h in halves)
    # The same retraining seeds in both, and as in one run of all four searches.
    seeds = report["tasks"]["digits"]["retrain_seeds"]
    assert first["tasks"]["digits"]["retrain_seeds"] == seeds
    assert second["tasks"]["digits"]["retrain_seeds"] == seeds

    # Each half checks every strategy's file, so a difference found is found by both: once here.
    line = "layer_decay: [train] differs from per_group's"
    for path, half in zip(halves, (first, second), strict=True):
        half["tasks"]["digits"]["spec_differences"] = [line]
        path.write_text(json.dumps(half), encoding="utf-8")
    merged_path = tmp_path / "merged.json"
    assert bench.main(["--merge", *map(str, halves), "--out", str(merged_path)]) == 0
    merged = json.loads(merged_path.read_text(encoding="utf-8"))
    task = merged["tasks"]["digits"]
    assert task["spec_differences"] == [line]
    assert set(task["strategies"]) == {*STRATEGIES, COST_AWARE} and set(task["results"]) == set(
        ROLES
    )
    assert "not_judged" not in merged["targets"]
    for key in ("a", "b", "d"):
        assert set(merged["targets"][key]["per_task"]) == {"digits"}
    # Seeded and deterministic: the halves searched what the single run searched.
    for strategy in (*STRATEGIES, COST_AWARE):
        values = [t["value"] for t in task["strategies"][strategy]["trials"]]
        assert values == [
            t["value"] for t in report["tasks"]["digits"]["strategies"][strategy]["trials"]
        ]


def test_a_task_whose_package_is_missing_is_skipped(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = (SCRIPT.parent.parent / "studies" / "quickstart.toml").read_text(encoding="utf-8")
    study = study.replace("lrsearch.tasks.digits:digits_transfer", "no_such_package.tasks:nothing")
    files = {}
    for strategy in STRATEGIES:
        path = tmp_path / f"{strategy}.toml"
        path.write_text(study, encoding="utf-8")
        files[strategy] = str(path)
    monkeypatch.setitem(bench.STUDY_FILES, "missing", files)
    monkeypatch.setitem(bench.SIZES, "missing", bench.SIZES["digits"])
    out = tmp_path / "missing.json"
    # A commit made while a long run goes on must not be recorded as the code it measured.
    commits = iter(["at-start", "later", "later"])
    monkeypatch.setattr(bench._common, "source", lambda *a, **k: {"commit": next(commits)})

    assert bench.main(["--tasks", "missing", "--trials", "1", "--out", str(out)]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["source"] == {"commit": "at-start"}
    assert "no_such_package" in data["skipped"]["missing"]
    assert "results" not in data["tasks"]["missing"]
    assert all(t["passed"] is False for t in data["targets"].values())
    assert out.with_suffix(".png").exists()


def test_merge_judges_the_targets_over_every_file(
    bench: ModuleType, report: dict[str, Any], tmp_path: Path
) -> None:
    first, second, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "merged.json"
    first.write_text(json.dumps(report), encoding="utf-8")
    # A second run of another task: the same record under another name, one of its (a)
    # comparisons made a loss, so the merged verdict must come from both files.
    other = json.loads(json.dumps(report))
    other["note"] = "core 1"
    record = other["tasks"].pop("digits")
    record["results"]["per_group"]["test"]["mean"] = -1.0
    other["tasks"]["other"] = record
    second.write_text(json.dumps(other), encoding="utf-8")

    assert bench.main(["--merge", str(first), str(second), "--out", str(out)]) == 0
    merged = json.loads(out.read_text(encoding="utf-8"))
    assert set(merged["tasks"]) == {"digits", "other"}
    assert [(r["file"], r["tasks"], r["note"]) for r in merged["merged_from"]] == [
        ("a.json", ["digits"], report["note"]),
        ("b.json", ["other"], "core 1"),
    ]
    assert merged["merged_from"][0]["source"] == report["source"]
    a = merged["targets"]["a"]
    assert set(a["per_task"]) == {"digits", "other"}
    assert a["per_task"]["other"]["not_worse"] is False and a["passed"] is False
    cost = "cost_single_values"
    assert (
        merged["targets"][cost]["per_task"]["digits"]
        == report["targets"][cost]["per_task"]["digits"]
    )
    assert out.with_suffix(".png").stat().st_size > 0

    # A merged file joins a third run (one more search added later) and keeps every run's record.
    third, again = tmp_path / "c.json", tmp_path / "again.json"
    extra = json.loads(json.dumps(report))
    extra["note"] = "later"
    extra["tasks"]["third"] = extra["tasks"].pop("digits")
    third.write_text(json.dumps(extra), encoding="utf-8")
    assert bench.main(["--merge", str(out), str(third), "--out", str(again)]) == 0
    joined = json.loads(again.read_text(encoding="utf-8"))
    assert [(r["file"], r["note"]) for r in joined["merged_from"]] == [
        ("a.json", report["note"]),
        ("b.json", "core 1"),
        ("c.json", "later"),
    ]
    assert set(joined["tasks"]) == {"digits", "other", "third"}


def test_merge_refuses_a_task_twice_and_a_foreign_file(
    bench: ModuleType, report: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, foreign, out = tmp_path / "a.json", tmp_path / "x.json", tmp_path / "merged.json"
    first.write_text(json.dumps(report), encoding="utf-8")
    foreign.write_text('{"benchmark": "something else"}', encoding="utf-8")
    assert bench.main(["--merge", str(first), str(first), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "task digits in" in err and "both searched layer_decay, per_group" in err
    # Other searches of the task, but at other sizes: their results do not compare.
    other = json.loads(json.dumps(report))
    record = other["tasks"]["digits"]
    record["strategies"] = {"per_group_gp": record["strategies"]["per_group"]}
    record["kwargs"] = {"n_train": 100}
    resized = tmp_path / "resized.json"
    resized.write_text(json.dumps(other), encoding="utf-8")
    assert bench.main(["--merge", str(first), str(resized), "--out", str(out)]) == 2
    assert "the runs differ in kwargs" in capsys.readouterr().err
    assert bench.main(["--merge", str(first), str(foreign), "--out", str(out)]) == 2
    assert "is not a bench_search_quality.py result" in capsys.readouterr().err
    assert bench.main(["--merge", str(tmp_path / "none.json"), "--out", str(out)]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert not out.exists()


# --- issue 15: more per_group strategies, equal wall time, realistic sizes ------------------------


def test_full_size_is_realistic_and_the_cpu_modes_are_unchanged(bench: ModuleType) -> None:
    args = bench.parse_args(["--size", "full", "--tasks", "minilm,mobilenet"])
    assert bench.size_mode(args) == "gpu_full"
    assert bench.SIZES["minilm"]["gpu_full"] == {
        "kwargs": {"n_train": 8768, "n_val": 1000, "n_test": 1000, "seq_len": 128},
        "trials": 60,
    }
    vision = bench.SIZES["mobilenet"]["gpu_full"]
    assert vision["kwargs"]["n_train"] == 10000 and vision["kwargs"]["image_size"] == 64
    assert vision["trials"] == 60
    assert bench.size_mode(bench.parse_args([])) == "full"  # the CPU full mode, as before
    assert bench.size_mode(bench.parse_args(["--quick"])) == "quick"
    assert bench.SIZES["minilm"]["full"]["kwargs"]["seq_len"] == 64


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--quick", "--size", "full"], "--quick and --size full"),
        (["--budget-seconds", "0"], "--budget-seconds must be > 0"),
        (["--strategies", "gp,cmaes"], "unknown strategies ['cmaes']"),
        (["--only", "per_group,per_group_gp"], "--only: unknown search(es) ['per_group_gp']"),
    ],
)
def test_bad_arguments_are_refused(
    bench: ModuleType, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        bench.parse_args(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_each_extra_strategy_changes_one_option_of_per_group(bench: ModuleType) -> None:
    specs = bench.load_specs("digits", mode="quick", trials=9, seed=0, extras=tuple(bench.EXTRAS))
    base = specs["per_group"].to_dict()
    changed = {
        "per_group_gp": {("sampler", "kind"): "gp"},
        "per_group_tpe_independent": {("sampler", "multivariate"): False},
        "per_group_start": {("space", "start"): "single", ("space", "start_trials"): 3},
        "per_group_gp_start": {
            ("sampler", "kind"): "gp",
            ("space", "start"): "single",
            ("space", "start_trials"): 3,
        },
    }
    for name, expected in changed.items():
        d = specs[name].to_dict()
        found = {
            (section, key): d[section].get(key)
            for section in d
            for key in {*d[section], *base[section]}
            if d[section].get(key) != base[section].get(key)
        }
        assert found == expected, name


def test_budget_seconds_bounds_every_search_by_time(bench: ModuleType) -> None:
    specs = bench.load_specs("digits", mode="quick", trials=9, seed=0, unbounded=True)
    assert {s.study.n_trials for s in specs.values()} == {bench.UNBOUNDED}


@pytest.mark.slow
def test_extras_and_equal_wall_time_run_end_to_end(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "time.json"
    argv = ["--tasks", "digits", "--seeds", "2", "--threads", "1", "--trials", "3"]
    argv += ["--strategies", "gp,start", "--budget-seconds", "1.5", "--out", str(out)]
    assert bench.main(argv) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["config"]["budget_seconds"] == 1.5
    task = data["tasks"]["digits"]
    assert task["budget_seconds"] == 1.5 and task["n_trials"] is None
    for name in ("per_group_gp", "per_group_start"):
        search = task["strategies"][name]
        assert search["budget_seconds"] == 1.5 and search["n_trials"] == len(search["trials"])
        # Time, not the trial budget, stopped it (the search wall time also holds the task's build).
        assert 0 < len(search["trials"]) < bench.UNBOUNDED and search["search_wall_s"] >= 1.5
        assert task["results"][name]["runs"] and task["results"][name]["test"]["n"] == 2
        assert set(data["extras"]["digits"][name]) == {"vs_single_lr", "vs_per_group"}
    assert task["strategies"]["per_group_gp"]["sampler"] == "gp"
    start = task["strategies"]["per_group_start"]
    assert start["start"] == "single"
    # Time ends the searches before any [winner] budget is met: (d) is not judged, not failed.
    assert task["strategies"]["per_group_cost"]["confirm"] is None
    assert data["targets"]["d"]["judged"] is False
    assert data["targets"]["d"]["per_task"]["digits"]["judged"] is False
    first = min(start["trials"], key=lambda t: t["number"])
    assert len(set(first["lrs"].values())) == 1  # the one-rate sweep's first trial

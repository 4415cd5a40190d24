"""benchmarks/bench_throughput.py, run in-process on the digits task at tiny sizes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_throughput.py"
MODES = ("naive", "plain", "freeze_aware", "cache", "batched_k2", "batched_k4")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look modules up by name
    spec.loader.exec_module(module)
    return module


def test_digits_modes_agree_and_the_json_says_so(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    argv = [
        "--tasks",
        "digits",
        "--size",
        "tiny",
        "--trials",
        "4",
        "--ks",
        "2,4",
        "--sweep-trials",
        "2",
        "--out",
        str(out),
    ]
    returned = bench.main(argv)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(returned))

    assert {"torch", "device", "torch_threads", "cpu_count"} <= set(saved["machine"])
    assert saved["machine"]["device"] == "cpu" and saved["machine"]["torch_threads"] == 1
    digits = saved["tasks"]["digits"]
    assert digits["n_trials"] == 4 and len(digits["samples"]) == 4
    assert {"task_kwargs", "train", "frozen", "cache_target", "cache_target_met"} <= set(digits)
    modes = digits["modes"]
    assert tuple(modes) == MODES
    plain = modes["plain"]["values"]
    for name in MODES:
        mode = modes[name]
        for key in ("seconds_per_trial", "cpu_seconds_per_trial", "trials_per_hour", "ratio"):
            assert mode[key] > 0, (name, key)
        # Digits has no dropout: every mode trains what plain trains.
        assert mode["values"] == pytest.approx(plain, abs=1e-6), name
        assert mode["agrees_with_plain"] and mode["expected_to_agree"], name
    assert modes["plain"]["ratio"] == 1.0
    assert modes["freeze_aware"]["frozen_prefix_stages"] == 2
    cache = modes["cache"]
    assert cache["prefix_cached"] and cache["miss_equals_hit"]
    assert cache["cache"]["misses"] == 1 and cache["cache"]["hits"] == 4  # 3 samples + 1 repeat
    assert cache["first_trial_seconds"] > 0
    assert out.with_suffix(".png").stat().st_size > 0
    for name in MODES:
        mode = modes[name]
        assert mode["ratio_vs_naive"] == pytest.approx(
            modes["naive"]["seconds_per_trial"] / mode["seconds_per_trial"], abs=1e-3
        )
    assert modes["freeze_aware"]["frozen_prefix_stages"] == 2
    assert modes["naive"]["frozen_prefix_stages"] == 0  # nothing frozen: everything trains

    # The sweep: every depth that leaves a prefix (timings are not compared: they are noise here).
    sweep = digits["depth_sweep"]
    assert [row["frozen"] for row in sweep] == [
        ["stem"],
        ["stem", "body0"],
        ["stem", "body0", "body1"],
    ]
    assert [row["prefix_stages"] for row in sweep] == [1, 2, 3]
    shares = [row["prefix_forward_share"] for row in sweep]
    assert all(0 < s < 1 for s in shares)
    for row in sweep:
        assert row["values_agree"] and row["values_expected_to_agree"]  # digits has no dropout
        assert row["ratio"] == pytest.approx(
            row["plain_seconds_per_trial"] / row["cache_seconds_per_trial"], abs=1e-3
        )
        # The cost model, from the share: skipping any prefix saves something, never all.
        assert 1 < row["cost_model_ratio"] < 100


def test_naive_trains_every_group_but_moves_no_frozen_weight(bench: ModuleType) -> None:
    from lrsearch.space import Sample

    sample = Sample(lrs={"stem": 0.0, "body0": 0.0, "head": 3e-3}, weight_decay=0.01)
    out = bench.naive(sample)
    assert out.frozen == ()  # a tuner without freezing trains every group
    assert out.lrs == {"stem": bench.NAIVE_LR, "body0": bench.NAIVE_LR, "head": 3e-3}
    assert out.weight_decay == 0.01
    # An AdamW step of that size leaves a float32 weight where it was.
    w = torch.tensor([0.02, -1.5, 3e-4])
    assert torch.equal(w - bench.NAIVE_LR * torch.ones(3), w)


@pytest.mark.slow  # torch.compile builds its kernels first: tens of seconds on this CPU
def test_the_compiled_mode_trains_what_plain_trains(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "compiled.json"
    argv = ["--tasks", "digits", "--size", "tiny", "--trials", "2", "--ks", "", "--modes"]
    saved = bench.main([*argv, "plain,compiled", "--sweep-trials", "0", "--out", str(out)])
    modes = saved["tasks"]["digits"]["modes"]
    assert tuple(modes) == ("plain", "compiled")
    compiled = modes["compiled"]
    assert len(compiled["values"]) == 2 and len(compiled["seconds"]) == 2  # the compile apart
    assert compiled["first_trial_seconds"] > 0
    assert compiled["expected_to_agree"] and compiled["agrees_with_plain"], compiled


def test_an_unknown_mode_is_refused(bench: ModuleType) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--tasks", "digits", "--modes", "plain,turbo"])

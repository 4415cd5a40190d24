"""benchmarks/bench_throughput.py, run in-process on the digits task at tiny sizes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_throughput.py"
MODES = ("plain", "freeze_aware", "cache", "batched_k2", "batched_k4")


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

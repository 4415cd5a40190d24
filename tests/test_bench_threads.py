"""benchmarks/bench_threads.py: its ratio rule, and one tiny run as the script is run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_threads.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_threads", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_ratio_is_of_the_medians_and_judged_on_wall_time(bench: ModuleType) -> None:
    runs = [
        {"setting": "default", "wall_s": 12.0, "search_s": 6.0},
        {"setting": "one_thread", "wall_s": 10.0, "search_s": 5.0},
        {"setting": "default", "wall_s": 16.0, "search_s": 8.0},
        {"setting": "one_thread", "wall_s": 10.0, "search_s": 5.0},
    ]
    summary = bench.summarize(runs)
    assert summary["default"]["wall_s_median"] == 14.0
    assert summary["ratio_wall_s"] == 1.4 and summary["ratio_search_s"] == 1.4
    assert summary["met"] is False and summary["target"] == 1.3


@pytest.mark.slow
def test_a_tiny_run_writes_every_run_and_the_summary(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "threads.json"
    assert bench.main(["--repeats", "1", "--n-trials", "2", "--no-busy", "--out", str(out)]) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert [r["setting"] for r in report["runs"]] == ["default", "one_thread"]
    assert all(r["trials"] == 2 and r["wall_s"] > 0 for r in report["runs"])
    assert report["config"]["busy_process"] is False
    assert report["summary"]["ratio_wall_s"] > 0

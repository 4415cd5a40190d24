"""benchmarks/bench_gpu_share.py: its study files, its figures from a study, its argument checks.

The whole benchmark starts three CLI processes that each load MiniLM (minutes on this CPU); it is
run by hand and by benchmarks/gpu_check.sh, and its parts are tested here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import optuna
import pytest

import lrsearch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_gpu_share.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gpu_share", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu_share"] = module
    spec.loader.exec_module(module)
    return module


def test_batched_mode_sets_batch_trials_and_nothing_else(bench: ModuleType, tmp_path: Path) -> None:
    base = bench.study_toml(bench.SIZES["quick"], "gpu-share")
    files = {}
    for k in (1, 8):
        files[k] = tmp_path / f"k{k}.toml"
        files[k].write_text(bench.spec_text(base, k), encoding="utf-8")
    one, eight = (lrsearch.load_spec(files[k]) for k in (1, 8))
    assert one.train.batch_trials == 1
    assert eight.train.batch_trials == 8
    assert eight.train.__dict__ | {"batch_trials": 1} == one.train.__dict__
    assert eight.space == one.space and eight.task == one.task


def test_study_figures_read_the_storage(bench: ModuleType, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="gpu-share", storage=url, direction="maximize")
    for value in (0.5, 0.75):
        study.add_trial(optuna.trial.create_trial(value=value, params={}, distributions={}))
    figures = bench.study_figures(url, "gpu-share")
    assert figures["complete"] == 2
    assert figures["best_value"] == 0.75
    assert figures["states"] == ["COMPLETE"]


def test_unknown_mode_is_refused(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--modes", "run,fastest"])
    assert exit_.value.code == 2
    assert "unknown ['fastest']" in capsys.readouterr().err

"""Exporting a trial's optimizer config from a real (tiny) study, and reading it back."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from torch import nn

from lrsearch.config import SCHEMA, build_optimizer, load_config
from lrsearch.errors import ExportError, StudyNotFoundError, TrialFailure
from lrsearch.export import export_config, to_python
from lrsearch.search import run_search
from lrsearch.spec import StudySpec
from lrsearch.storage import open_storage, trial_lrs
from lrsearch.tasks import TensorClassificationTask, load_task
from lrsearch.training import TrainResult, train_trial

# pytest imports this file as a top-level module (tests/ is on sys.path), so a study can name the
# factory below; __name__ keeps that true however the file is imported.
ENTRY = f"{__name__}:toy_task"
STUDY = "toy-export"
FAILED_TRIAL, DIVERGED_TRIAL, N_TRIALS = 2, 3, 6

# The same model as toy_model(), for a fresh interpreter that must not import this file.
MODEL_SOURCE = (
    "nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), "
    "nn.Linear(8, 3))"
)


def toy_model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)
    )


def toy_task(n_train: int = 48) -> TensorClassificationTask:
    """The study's task: three classes from two thresholds on 4-d inputs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + 32, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return TensorClassificationTask(toy_model, x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def _train_or_fail(*args: Any, seed: int, **kwargs: Any) -> TrainResult:
    # The study's seed is 0, so a trial's seed is its number: one failed, one diverged trial.
    if seed == FAILED_TRIAL:
        raise TrialFailure("CUDA out of memory at [train] batch_size = 16 (simulated)")
    if seed == DIVERGED_TRIAL:
        raise TrialFailure("diverged: loss is nan at step 1 (simulated)", diverged=True)
    return train_trial(*args, seed=seed, **kwargs)


SPEC = {
    "study": {"name": STUDY, "n_trials": N_TRIALS, "seed": 0},
    "task": {"entry": ENTRY},
    "groups": {"body": ["0", "1"], "mid": ["3"], "head": ["5"]},
    "space": {
        "lr": [1e-3, 1e-1],
        "freeze": ["mid"],
        "fixed": {"body": 0.0},  # every trial has a frozen group (with a BatchNorm in it)
        "weight_decay": 0.01,
    },
    "train": {"optimizer": "sgd", "epochs": 1, "batch_size": 16, "precision": "fp32"},
    "pruner": {"kind": "none"},
    "sampler": {"kind": "random"},
}


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> optuna.storages.BaseStorage:
    url = f"sqlite:///{tmp_path_factory.mktemp('export') / 'study.db'}"
    spec = StudySpec.from_dict(copy.deepcopy(SPEC))
    summary = run_search(spec, storage=url, device="cpu", train_fn=_train_or_fail)
    assert summary.count("complete") == N_TRIALS - 2
    return open_storage(url)


@pytest.fixture(scope="module")
def study(storage: optuna.storages.BaseStorage) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=storage)


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def test_the_task_entry_is_importable() -> None:
    task = load_task(ENTRY)
    assert importlib.import_module(__name__).toy_task is toy_task
    assert len(task.x_train) == 48 and task.build_model()[5].out_features == 3


def test_export_config_of_the_best_trial(study: optuna.Study, storage: Any) -> None:
    config = export_config(storage, STUDY)
    best = study.best_trial
    assert json.loads(json.dumps(config)) == config  # JSON-ready as it is
    assert config["schema"] == SCHEMA == "lrsearch/optimizer-config/v1"
    assert (config["study"], config["trial"], config["value"]) == (STUDY, best.number, best.value)
    assert config["direction"] == "maximize"
    assert config["optimizer"] == {"name": "SGD", "kwargs": {"weight_decay": 0.01, "momentum": 0.9}}
    stored = trial_lrs(best)
    assert [(g["name"], g["match"], g["lr"], g["frozen"]) for g in config["groups"]] == [
        ("body", ["0", "1"], 0.0, True),
        ("mid", ["3"], stored["mid"], stored["mid"] == 0),
        ("head", ["5"], stored["head"], False),
    ]
    assert config["train"]["batch_size"] == 16 and config["train"]["freeze_batchnorm"] is True


def _check_optimizer(
    model: nn.Module, opt: torch.optim.Optimizer, stored: dict[str, float]
) -> None:
    """The optimizer trains exactly the trial's trained groups at its rates; the rest is frozen."""
    prefixes = {"body": ("0.", "1."), "mid": ("3.",), "head": ("5.",)}
    assert {g["name"]: g["lr"] for g in opt.param_groups} == {
        g: lr for g, lr in stored.items() if lr > 0
    }
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        group = next(g for g, pre in prefixes.items() if name.startswith(pre))
        frozen = stored[group] == 0
        assert p.requires_grad is not frozen, name
        assert (id(p) in in_opt) is not frozen, name
    assert opt.defaults["weight_decay"] == 0.01 and opt.defaults["momentum"] == 0.9


@pytest.mark.parametrize("via", ["path", "dict"])
def test_build_optimizer_reproduces_every_complete_trial(
    study: optuna.Study, storage: Any, via: str, tmp_path: Path
) -> None:
    trials = _complete(study)
    assert len(trials) == N_TRIALS - 2
    assert any(t.number != study.best_trial.number for t in trials)  # non-best ones too
    for trial in trials:
        config = export_config(storage, STUDY, trial.number)
        assert config["trial"] == trial.number and config["value"] == trial.value
        path = tmp_path / f"trial{trial.number}.json"
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        model = toy_model()
        opt = build_optimizer(model, path if via == "path" else config)
        _check_optimizer(model, opt, trial_lrs(trial))


@pytest.mark.parametrize(
    ("number", "message"),
    [
        (FAILED_TRIAL, "is FAIL, not COMPLETE"),
        (DIVERGED_TRIAL, "is PRUNED, not COMPLETE"),
        (N_TRIALS, f"has no trial {N_TRIALS}"),
        (-1, "has no trial -1"),
    ],
)
def test_only_complete_trials_export(storage: Any, number: int, message: str) -> None:
    with pytest.raises(ExportError, match=message):
        export_config(storage, STUDY, number)


def test_an_unknown_study_is_named(storage: Any) -> None:
    with pytest.raises(StudyNotFoundError, match=f"no study named 'nope'.*{STUDY}"):
        export_config(storage, "nope")


_FRESH = """
import json, sys
import torch
from torch import nn
import exported_optimizer
assert "lrsearch" not in sys.modules, "the snippet must need torch alone"
model = {model}
opt = exported_optimizer.build_optimizer(model)
names = {{id(p): n for n, p in model.named_parameters()}}
print(json.dumps({{
    "params": [[n, list(p.shape)] for n, p in model.named_parameters()],
    "groups": [[g["name"], g["lr"], [names[id(p)] for p in g["params"]]] for g in opt.param_groups],
    "frozen": [n for n, p in model.named_parameters() if not p.requires_grad],
    "type": type(opt).__name__,
    "defaults": {{k: opt.defaults[k] for k in ("weight_decay", "momentum")}},
}}))
"""


def test_python_snippet_builds_the_same_optimizer_in_a_fresh_interpreter(
    study: optuna.Study, storage: Any, tmp_path: Path
) -> None:
    # Export a trial with a frozen group (every trial has one) that is not always the best.
    number = _complete(study)[0].number
    config = export_config(storage, STUDY, number)
    (tmp_path / "exported_optimizer.py").write_text(to_python(config), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", _FRESH.format(model=MODEL_SOURCE)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    fresh = json.loads(done.stdout)

    model = toy_model()
    # The child built the same model as toy_model().
    assert fresh["params"] == [[n, list(p.shape)] for n, p in model.named_parameters()]
    opt = build_optimizer(model, config)
    names = {id(p): n for n, p in model.named_parameters()}
    ours = [[g["name"], g["lr"], [names[id(p)] for p in g["params"]]] for g in opt.param_groups]
    assert fresh["groups"] == ours
    assert fresh["frozen"] == [n for n, p in model.named_parameters() if not p.requires_grad]
    assert fresh["frozen"] == ["0.weight", "0.bias", "1.weight", "1.bias"] + (
        ["3.weight", "3.bias"] if config["groups"][1]["frozen"] else []
    )
    assert fresh["type"] == type(opt).__name__ == "SGD"
    assert fresh["defaults"] == {"weight_decay": 0.01, "momentum": 0.9}
    assert "BatchNorm layers of frozen groups" in to_python(config)


def _base_config() -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "study": "hand-written",
        "optimizer": {"name": "AdamW", "kwargs": {"weight_decay": 0.0}},
        "groups": [
            {"name": "body", "match": ["0", "1"], "lr": 0.0},
            {"name": "mid", "match": ["3.*"], "lr": 1e-3},
            {"name": "head", "match": ["5"], "lr": 1e-2},
        ],
    }


def test_to_python_is_valid_for_any_study_name_and_without_frozen_flags(tmp_path: Path) -> None:
    # A hand-written config may omit "frozen"; a study name may hold quotes and backslashes.
    config = {**_base_config(), "study": 'a"""b\\N{x}\n', "train": {"freeze_batchnorm": True}}
    source = to_python(config)
    path = tmp_path / "exported_any_name.py"
    path.write_text(source, encoding="utf-8")
    # Imported as a user would import it.
    module_spec = importlib.util.spec_from_file_location("exported_any_name", path)
    assert module_spec is not None and module_spec.loader is not None
    snippet = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(snippet)
    model = toy_model()
    opt = snippet.build_optimizer(model)
    assert [(g["name"], g["lr"]) for g in opt.param_groups] == [("mid", 1e-3), ("head", 1e-2)]
    assert "BatchNorm layers of frozen groups" in source


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("extra", "match no group: extra.weight, extra.bias"),
        ("missing", "group 'head'.*matches no trainable parameter"),
    ],
)
def test_a_model_that_does_not_match_is_named(change: str, message: str) -> None:
    model = toy_model()
    if change == "extra":
        model.add_module("extra", nn.Linear(2, 2))
    else:
        model = nn.Sequential(*list(model)[:5])
    with pytest.raises(ExportError, match=message):
        build_optimizer(model, _base_config())
    assert all(p.requires_grad for p in model.parameters())  # left as it came


GROUP_MATCH = [("body", "0"), ("body2", "1"), ("mid", "3"), ("head", "5")]


def _group(**fields: Any) -> dict[str, Any]:
    return {"name": "head", "match": ["5"], "lr": 0.01, **fields}


@pytest.mark.parametrize(
    ("label", "source", "message"),
    [
        ("wrong schema", {"schema": "lrsearch/optimizer-config/v0"}, "schema must be"),
        ("no schema", {"schema": None}, "schema must be"),
        ("missing groups", {"groups": None}, "'groups' must be a non-empty list"),
        ("empty groups", {"groups": []}, "'groups' must be a non-empty list"),
        ("negative lr", {"groups": [_group(lr=-0.1)]}, r"groups\[0\] must have"),
        ("nan lr", {"groups": [_group(lr=float("nan"))]}, r"groups\[0\] must have"),
        ("huge int lr", {"groups": [_group(lr=10**400)]}, r"groups\[0\] must have"),
        ("bool lr", {"groups": [_group(lr=True)]}, r"groups\[0\] must have"),
        ("string lr", {"groups": [_group(lr="1e-3")]}, r"groups\[0\] must have"),
        ("no match", {"groups": [_group(match=[])]}, r"groups\[0\] must have"),
        ("match a string", {"groups": [_group(match="5")]}, r"groups\[0\] must have"),
        ("twice", {"groups": [_group(), _group()]}, "'head' is used twice"),
        ("unknown optimizer", {"optimizer": {"name": "lion"}}, "optimizer.name must be one of"),
        ("no optimizer", {"optimizer": None}, "optimizer.name must be one of"),
        ("bad kwargs type", {"optimizer": {"name": "sgd", "kwargs": [1]}}, "must be an object"),
        ("bad kwargs", {"optimizer": {"name": "sgd", "kwargs": {"bogus": 1}}}, "rejected its"),
        ("train not object", {"train": 3}, "train must be an object"),
        (
            "all frozen",
            {"groups": [_group(name=n, match=[m], lr=0) for n, m in GROUP_MATCH]},
            "every group is frozen",
        ),
        ("not JSON", b"{'schema': oops", "not JSON"),
        ("binary", b"\xff\xfe\x00garbage", "not JSON"),
        ("a JSON list", b"[1, 2]", "schema must be 'lrsearch/optimizer-config/v1', got 'list'"),
        ("missing file", None, "file not found"),
        ("a directory", "dir", "cannot read the file"),
    ],
)
def test_invalid_configs_are_export_errors(
    label: str, source: Any, message: str, tmp_path: Path
) -> None:
    config: Any
    if isinstance(source, dict):
        config = {k: v for k, v in {**_base_config(), **source}.items() if v is not None}
    elif isinstance(source, bytes):
        config = tmp_path / "config.json"
        config.write_bytes(source)
    else:
        config = tmp_path if source == "dir" else tmp_path / "missing.json"
    model = toy_model()
    with pytest.raises(ExportError, match=message):
        build_optimizer(model, config)
    assert all(p.requires_grad for p in model.parameters()), label  # nothing half-frozen


def test_load_config_accepts_what_export_writes(storage: Any, tmp_path: Path) -> None:
    config = export_config(storage, STUDY)
    path = tmp_path / "best.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    assert load_config(path) == config == load_config(config)

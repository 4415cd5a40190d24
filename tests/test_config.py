"""``lrsearch.config``: what a user's training script imports, torch and nothing of the search."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lrsearch
from lrsearch import config

# Run in a fresh interpreter: the test process itself has long since imported Optuna.
FRESH = """
import json, sys

import torch
from torch import nn

import lrsearch
from lrsearch.config import build_optimizer, load_config

model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
optimizer = build_optimizer(model, load_config(sys.argv[1]))
assert lrsearch.build_optimizer is build_optimizer  # the package's name, the same function
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"optuna", "sqlalchemy"})
print(json.dumps({
    "heavy": heavy,
    "optimizer": type(optimizer).__name__,
    "groups": [(g["name"], g["lr"], len(g["params"])) for g in optimizer.param_groups],
    "frozen": [n for n, p in model.named_parameters() if not p.requires_grad],
}))
"""


def _config() -> dict[str, object]:
    return {
        "schema": config.SCHEMA,
        "optimizer": {"name": "AdamW", "kwargs": {"weight_decay": 0.01}},
        "train": {"freeze_batchnorm": True},
        "groups": [
            {"name": "body", "match": ["0"], "lr": 0.0, "frozen": True},
            {"name": "head", "match": ["2"], "lr": 3e-3, "frozen": False},
        ],
    }


def test_a_training_script_imports_neither_optuna_nor_sqlalchemy(tmp_path: Path) -> None:
    path = tmp_path / "best.json"
    path.write_text(json.dumps(_config()), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-c", FRESH, str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["heavy"] == []
    assert seen["optimizer"] == "AdamW"
    assert seen["groups"] == [["head", 3e-3, 2]]
    assert seen["frozen"] == ["0.weight", "0.bias"]


def test_the_package_names_are_the_config_module_s() -> None:
    assert lrsearch.build_optimizer is config.build_optimizer
    assert lrsearch.load_config is config.load_config

"""``export --format python`` carries the trial's schedule, steps and BatchNorm rule, runnable.

The snippet is exec'd on its own (torch only) and its ``LambdaLR`` stepped as a training loop
would; every group's rate at every step must equal the rate lrsearch's trainer used at that step
of the trial, read from the trainer's optimizer by a global optimizer step hook.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from conftest import toy_spec_data
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from toy_tasks import _model_fn

from lrsearch.cli import main
from lrsearch.export import to_python
from lrsearch.search import run_search
from lrsearch.spec import StudySpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_TRAIN = 64  # toy_tasks.tiny's default


@pytest.fixture
def trainer_rates() -> Iterator[list[dict[str, float]]]:
    """Each optimizer step's rates per group name, of every optimizer in this process."""
    seen: list[dict[str, float]] = []

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        seen.append({g["name"]: g["lr"] for g in optimizer.param_groups})

    handle = register_optimizer_step_pre_hook(hook)
    yield seen
    handle.remove()


def _snippet_rates(source: str, steps_per_epoch: int) -> tuple[dict[str, Any], list[dict]]:
    namespace: dict[str, Any] = {"__name__": "exported"}
    exec(compile(source, "exported_optimizer.py", "exec"), namespace)
    model = _model_fn(8)
    optimizer = namespace["build_optimizer"](model)
    scheduler = namespace["build_scheduler"](optimizer, steps_per_epoch)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
    rates = []
    for _ in range(namespace["total_steps"](steps_per_epoch)):
        rates.append({g["name"]: g["lr"] for g in optimizer.param_groups})
        optimizer.step()  # no gradients: changes no weight
        scheduler.step()
    return namespace, rates


@pytest.mark.parametrize(
    "train",
    [
        {"schedule": "warmup_cosine", "warmup_ratio": 0.25, "epochs": 2},
        {"schedule": "warmup_linear", "warmup_ratio": 0.1, "epochs": 3, "max_steps": 10},
        {"schedule": "constant", "warmup_ratio": 0.5, "epochs": 1},
    ],
)
def test_the_snippet_schedules_every_step_as_the_trainer_did(
    trainer_rates: list[dict[str, float]],
    sqlite_url: str,
    study_name: str,
    train: dict[str, Any],
) -> None:
    data = toy_spec_data(
        study_name,
        study={"n_trials": 1},
        space={"freeze": None, "fixed": {"embed": 0.0}},
        train={"batch_size": 16, "eval_every": 0, **train},
    )
    summary = run_search(StudySpec.from_dict(data), storage=sqlite_url, device="cpu")
    assert [o.outcome for o in summary.outcomes] == ["complete"]
    result = CliRunner().invoke(
        main, ["export", "--study", study_name, "--storage", sqlite_url, "--format", "python"]
    )
    assert result.exit_code == 0, result.output

    trained = list(trainer_rates)  # before the snippet's own steps join them
    namespace, rates = _snippet_rates(result.stdout, math.ceil(N_TRAIN / 16))

    assert namespace["TRAIN"]["schedule"] == train["schedule"]
    assert namespace["TRAIN"]["warmup_ratio"] == train["warmup_ratio"]
    assert namespace["TRAIN"]["epochs"] == train["epochs"]
    assert len(rates) == len(trained) == min(4 * train["epochs"], train.get("max_steps", 99))
    for step, (ours, theirs) in enumerate(zip(rates, trained, strict=True)):
        assert ours.keys() == theirs.keys() == {"body", "head"}
        for group in ours:
            assert ours[group] == pytest.approx(theirs[group], rel=1e-12), (step, group)
    if train["schedule"] != "constant":  # the rates really move
        assert len({r["head"] for r in rates}) > 2


def test_the_snippet_keeps_frozen_batchnorms_in_eval_mode_as_the_search_did() -> None:
    config = {
        "schema": "lrsearch/optimizer-config/v1",
        "optimizer": {"name": "SGD", "kwargs": {}},
        "train": {"freeze_batchnorm": True, "schedule": "constant", "epochs": 1},
        "groups": [
            {"name": "stem", "match": ["0", "1"], "lr": 0.0},
            {"name": "head", "match": ["3"], "lr": 0.1},
        ],
    }
    namespace: dict[str, Any] = {}
    exec(compile(to_python(config), "exported_optimizer.py", "exec"), namespace)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    namespace["build_optimizer"](model)
    assert namespace["frozen_batchnorms"](model) == [model[1]]
    # A config without max_steps or warmup (written before they were exported) still schedules.
    assert namespace["total_steps"](7) == 7
    namespace["TRAIN"]["freeze_batchnorm"] = False
    assert namespace["frozen_batchnorms"](model) == []

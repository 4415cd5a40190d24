"""The README's way of using an exported config, run as written.

The helpers and the plain PyTorch loop are taken literally from the README's python blocks marked
``<!-- lrsearch-example: NAME -->`` and executed on a quickstart study's export and on a model with
a frozen BatchNorm; the Hugging Face and Lightning examples are compiled only (neither library is a
dependency).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import RUN_PREFIX
from torch import nn

from lrsearch.cli import main
from lrsearch.errors import ExportError
from lrsearch.search import run_search
from lrsearch.spec import StudySpec, load_spec
from lrsearch.storage import open_storage
from lrsearch.tasks import TensorClassificationTask, load_task
from lrsearch.training import schedule_factor

ROOT = Path(__file__).resolve().parent.parent
# Where the examples live: the docs page on using the result, and the README.
SOURCES = [ROOT / "docs" / "using-the-result.md", ROOT / "README.md"]
# The quickstart's trial 0, enqueued: the per-group config the task's docstring measures.
PER_GROUP = {"freeze.stem": True, "freeze.body": False, "lr.body": 1e-4, "lr.head": 1e-2}


def example(name: str) -> str:
    """The python block after ``<!-- lrsearch-example: NAME -->`` in the docs."""
    pattern = rf"<!-- lrsearch-example: {re.escape(name)} -->\s*```python\n(.*?)```"
    for path in SOURCES:
        if path.is_file():
            found = re.search(pattern, path.read_text(encoding="utf-8"), flags=re.S)
            if found:
                return found.group(1)
    raise AssertionError(f"the docs have no python block marked <!-- lrsearch-example: {name} -->")


def run_examples(namespace: dict[str, Any], *names: str) -> dict[str, Any]:
    for name in names:
        exec(compile(example(name), f"README:{name}", "exec"), namespace)
    return namespace


def export(url: str, name: str, trial: int, out: Path) -> dict[str, Any]:
    """``lrsearch export`` as the README runs it; the written config."""
    args = ["export", "--study", name, "--storage", url, "--trial", str(trial), "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    config: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return config


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A quickstart study of two trials, the first enqueued with ``stem`` frozen."""
    url = f"sqlite:///{tmp_path_factory.mktemp('usage') / 'studies.db'}"
    name = f"{RUN_PREFIX}usage-quickstart"
    spec = load_spec(ROOT / "studies" / "quickstart.toml")
    run_search(spec, storage=url, study_name=name, n_trials=0, device="cpu")
    optuna.load_study(study_name=name, storage=open_storage(url)).enqueue_trial(PER_GROUP)
    summary = run_search(spec, storage=url, study_name=name, n_trials=2, device="cpu")
    assert summary.outcomes[0].outcome == "complete"
    return url, name


def accuracy(model: nn.Module, task: TensorClassificationTask) -> float:
    model.eval()
    with torch.no_grad():
        return task.evaluate(model, task.val_batches(256))


@pytest.mark.parametrize(
    ("schedule", "warmup_ratio"),
    [("constant", 0.0), ("warmup_cosine", 0.2), ("warmup_linear", 0.3)],
)
def test_the_plain_loop_trains_the_exported_config(
    quickstart: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    schedule: str,
    warmup_ratio: float,
) -> None:
    url, name = quickstart
    monkeypatch.chdir(tmp_path)
    config = export(url, name, 0, tmp_path / "best.json")
    config["train"].update(schedule=schedule, warmup_ratio=warmup_ratio)
    (tmp_path / "best.json").write_text(json.dumps(config), encoding="utf-8")
    spec = load_spec(ROOT / "studies" / "quickstart.toml")
    task = load_task(spec.task.entry, spec.task.kwargs)
    assert isinstance(task, TensorClassificationTask)
    model = task.build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    untrained = accuracy(model, task)
    batches = list(task.train_batches(32, torch.Generator().manual_seed(0)))

    ns = run_examples(
        {"model": model, "train_loader": batches, "loss_fn": F.cross_entropy},
        "helpers",
        "plain-loop",
    )

    total = config["train"]["epochs"] * len(batches)
    assert ns["step"] == ns["total_steps"] == total == 21
    optimizer = ns["optimizer"]
    last = ns["scheduler"].lr_lambdas[0](total)  # each group's own rate times one factor
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == pytest.approx(
        {"body": 1e-4 * last, "head": 1e-2 * last}
    )
    # The README's schedule is the one the search trained with, step by step.
    ours = schedule_factor(schedule, warmup_ratio, total)
    assert [ns["lr_factor"](config["train"], total)(k) for k in range(total + 1)] == [
        ours(k) for k in range(total + 1)
    ]
    after = model.state_dict()
    for key, value in after.items():
        frozen = key.startswith("stem.")
        assert torch.equal(value, before[key]) is frozen, key
    assert all(not p.requires_grad for p in model.stem.parameters())
    assert accuracy(model, task) > untrained + 0.3  # it learned (a fresh head starts near 0.2)


def test_a_model_that_does_not_match_is_an_export_error(
    quickstart: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, name = quickstart
    monkeypatch.chdir(tmp_path)
    export(url, name, 0, tmp_path / "best.json")
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 5))

    with pytest.raises(ExportError) as caught:
        run_examples(
            {"model": model, "train_loader": [], "loss_fn": F.cross_entropy},
            "helpers",
            "plain-loop",
        )

    message = str(caught.value)
    assert "the model does not match the exported groups" in message
    assert "0.weight" in message and "'stem'" in message  # the parameters and the groups
    assert all(p.requires_grad for p in model.parameters())  # left as it was


# --- a frozen BatchNorm ---------------------------------------------------------------------------

ENTRY = f"{__name__}:bn_task"


def bn_model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def bn_task() -> TensorClassificationTask:
    """Three classes from two thresholds; the BatchNorm has "pretrained" statistics."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=g) * 3 + 1  # far from the BatchNorm's statistics
    y = (x[:, 0] > 1).long() + (x[:, 1] > 2).long()

    def build() -> nn.Module:
        model = bn_model()
        norm = model[1]
        assert isinstance(norm, nn.BatchNorm1d)
        norm.running_mean.fill_(0.5)
        norm.running_var.fill_(2.0)
        return model

    return TensorClassificationTask(build, x[:64], y[:64], x[64:], y[64:])


BN_SPEC = {
    "study": {"name": "bn", "n_trials": 1, "seed": 0},
    "task": {"entry": ENTRY},
    "groups": {"stem": ["0", "1"], "head": ["3"]},
    "space": {"lr": [1e-2, 1e-1], "fixed": {"stem": 0.0}},
    "train": {"epochs": 2, "batch_size": 16},
    "pruner": {"kind": "none"},
    "sampler": {"kind": "random"},
}


@pytest.fixture(scope="module")
def bn_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    url = f"sqlite:///{tmp_path_factory.mktemp('bn') / 'studies.db'}"
    name = f"{RUN_PREFIX}usage-bn"
    run_search(StudySpec.from_dict(copy.deepcopy(BN_SPEC)), storage=url, study_name=name)
    return url, name


@pytest.mark.parametrize("freeze_batchnorm", [True, False])
def test_the_plain_loop_keeps_a_frozen_batchnorm_in_eval_mode(
    bn_study: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    freeze_batchnorm: bool,
) -> None:
    url, name = bn_study
    monkeypatch.chdir(tmp_path)
    config = export(url, name, 0, tmp_path / "best.json")
    assert config["train"]["freeze_batchnorm"] is True  # the default, as searched
    config["train"]["freeze_batchnorm"] = freeze_batchnorm
    (tmp_path / "best.json").write_text(json.dumps(config), encoding="utf-8")
    task = bn_task()
    model = task.build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = list(task.train_batches(16, torch.Generator().manual_seed(0)))

    run_examples(
        {"model": model, "train_loader": batches, "loss_fn": F.cross_entropy},
        "helpers",
        "plain-loop",
    )

    after = model.state_dict()
    for key in ("0.weight", "0.bias", "1.weight", "1.bias"):
        assert torch.equal(after[key], before[key]), key  # frozen parameters never move
    assert not torch.equal(after["3.weight"], before["3.weight"])
    stats_kept = all(
        torch.equal(after[f"1.{k}"], before[f"1.{k}"])
        for k in ("running_mean", "running_var", "num_batches_tracked")
    )
    assert stats_kept is freeze_batchnorm


@pytest.mark.parametrize("hooked", [True, False])
def test_keep_in_eval_survives_model_train(
    bn_study: tuple[str, str], tmp_path: Path, hooked: bool
) -> None:
    # What the HF and Lightning examples rely on: their trainers call model.train() themselves.
    url, name = bn_study
    config = export(url, name, 0, tmp_path / "best.json")
    model = bn_task().build_model()
    ns = run_examples({}, "helpers")
    import lrsearch

    lrsearch.build_optimizer(model, config)
    norms = ns["frozen_batchnorms"](model, config["train"])
    assert norms == [model[1]]
    if hooked:
        ns["keep_in_eval"](norms)
    mean = model[1].running_mean.clone()
    model.train()
    model(torch.randn(16, 4) * 3 + 1)
    assert torch.equal(model[1].running_mean, mean) is hooked


@pytest.mark.parametrize("name", ["huggingface", "lightning"])
def test_the_framework_examples_compile(name: str) -> None:
    source = example(name)
    compile(source, f"README:{name}", "exec")
    assert "lrsearch.build_optimizer(" in source and "lr_factor(" in source
    assert "keep_in_eval(frozen_batchnorms(" in source

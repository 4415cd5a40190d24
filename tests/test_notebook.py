"""lrsearch.search: the notebook API, on tensors, datasets and loaders, and what it stores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import lrsearch
from lrsearch.cli import main
from lrsearch.errors import SpecError, StudyMismatchError, TaskError
from lrsearch.notebook import ENTRY, BestConfig
from lrsearch.storage import load_study, open_storage, stored_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GROUPS = {"body": ["0.*"], "head": "2"}
TRAINING = {"epochs": 1, "batch_size": 16, "eval_every": 2}


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    return torch.eye(3)[y].repeat(1, 2) * 2 + torch.randn(n, 6, generator=g), y


def make_model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


TRAIN, VAL = _data(96, 0), _data(48, 1)


def test_search_on_tensors_returns_the_best_trial_and_stores_the_study(
    sqlite_url: str, study_name: str
) -> None:
    best = lrsearch.search(
        make_model,
        TRAIN,
        VAL,
        groups=GROUPS,
        n_trials=4,
        storage=sqlite_url,
        study=study_name,
        space={"freeze": ("body",), "weight_decay": (1e-4, 1e-1)},  # tuples read as lists
        training=TRAINING,
        pruner={"kind": "none"},
        threads=1,
    )
    assert isinstance(best, BestConfig)
    assert set(best.lrs) == {"body", "head"} and best.lrs["head"] > 0
    assert best.weight_decay is not None and 1e-4 <= best.weight_decay <= 1e-1
    assert best.frozen == [g for g, lr in best.lrs.items() if lr == 0]
    study = load_study(open_storage(sqlite_url), study_name)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(study.trials) == 4 and best.value == max(t.value for t in complete)
    spec = stored_spec(study)
    assert spec.task.entry == ENTRY and spec.task.kwargs["model_fn"].endswith("make_model")
    model = make_model()
    optimizer = best.build_optimizer(model)
    trained = [g["name"] for g in optimizer.param_groups]
    assert trained == [g for g, lr in best.lrs.items() if lr > 0]
    assert "def build_optimizer(model)" in best.to_python()

    # The same objects resume the study: a larger budget runs only the rest.
    again = lrsearch.search(
        make_model,
        TRAIN,
        VAL,
        groups=GROUPS,
        n_trials=6,
        storage=sqlite_url,
        study=study_name,
        space={"freeze": ["body"], "weight_decay": [1e-4, 1e-1]},
        training=TRAINING,
        pruner={"kind": "none"},
        threads=1,
    )
    assert again.summary.resumed and len(again.summary.outcomes) == 2
    # Other data under the same name is another search: refused, naming what differs.
    with pytest.raises(StudyMismatchError, match=r"task\.kwargs"):
        lrsearch.search(
            make_model,
            _data(50, 2),
            VAL,
            groups=GROUPS,
            n_trials=6,
            storage=sqlite_url,
            study=study_name,
            space={"freeze": ["body"], "weight_decay": [1e-4, 1e-1]},
            training=TRAINING,
            pruner={"kind": "none"},
            threads=1,
        )


def test_datasets_loaders_and_a_custom_loss_and_metric(sqlite_url: str, study_name: str) -> None:
    seen: list[int] = []

    def metric(outputs: torch.Tensor, targets: torch.Tensor) -> float:
        seen.append(len(targets))  # the whole validation set at once
        return float(nn.functional.cross_entropy(outputs, targets))

    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs, targets, label_smoothing=0.1)

    loader = DataLoader(TensorDataset(*TRAIN), batch_size=5, shuffle=True)  # its size is not used
    best = lrsearch.search(
        make_model,
        loader,
        TensorDataset(*VAL),
        groups=GROUPS,
        n_trials=2,
        storage=sqlite_url,
        study=study_name,
        training=TRAINING,
        loss=loss,
        metric=metric,
        direction="minimize",
        threads=1,
    )
    assert seen and set(seen) == {len(VAL[1])}
    study = load_study(open_storage(sqlite_url), study_name)
    assert study.direction.name == "MINIMIZE"
    assert best.value == min(t.value for t in study.trials if t.value is not None)
    # 96 examples at batch 16: 6 steps, evaluated every 2 (the loader's batch of 5 is not used).
    assert [len(t.intermediate_values) for t in study.trials] == [3, 3]


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"train": (TRAIN[0],)}, TaskError, "train must be (X, y) with two tensors"),
        ({"val": (VAL[0], VAL[1][:3])}, TaskError, "same number"),
        ({"train": [1, 2, 3]}, TaskError, "train must be (X, y)"),
        ({"metric": lambda o, y: 0.0}, TaskError, "needs direction="),
        ({"model_fn": "make_model"}, TaskError, "model_fn must be a function"),
        ({"space": {"lr": [1e-1, 1e-3]}}, SpecError, "[space] lr"),
        ({"training": {"epochs": 0, "bogus": 1}}, SpecError, "2 problems"),
    ],
)
def test_bad_arguments_are_named_before_anything_is_stored(
    sqlite_url: str, study_name: str, change: dict[str, object], error: type, message: str
) -> None:
    args: dict[str, object] = {"model_fn": make_model, "train": TRAIN, "val": VAL}
    args.update(change)
    with pytest.raises(error) as raised:
        lrsearch.search(**args, groups=GROUPS, storage=sqlite_url, study=study_name)  # type: ignore[arg-type]
    assert message in str(raised.value)
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()


def test_an_iterable_dataset_is_refused(sqlite_url: str) -> None:
    class Stream(IterableDataset):  # type: ignore[type-arg]
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield from zip(*TRAIN, strict=True)

    with pytest.raises(TaskError, match="map-style Dataset"):
        lrsearch.search(make_model, Stream(), VAL, groups=GROUPS, storage=sqlite_url)


def test_worker_and_verify_on_a_notebook_study_say_why_they_cannot(
    sqlite_url: str, study_name: str
) -> None:
    lrsearch.search(
        make_model,
        TRAIN,
        VAL,
        groups=GROUPS,
        n_trials=1,
        storage=sqlite_url,
        study=study_name,
        training=TRAINING,
        threads=1,
    )
    for args in (["worker", "--n-trials", "2"], ["verify", "--seeds", "1"]):
        result = CliRunner().invoke(main, [*args, "--study", study_name, "--storage", sqlite_url])
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "lrsearch.search()" in lines[0], result.stderr
        assert "cannot import" in lines[0]
    # The readers need no task.
    best = CliRunner().invoke(main, ["best", "--study", study_name, "--storage", sqlite_url])
    assert best.exit_code == 0, best.output


def test_lrsearch_search_is_callable_after_the_module_is_imported() -> None:
    import lrsearch.search as module

    assert lrsearch.search is module and callable(lrsearch.search)
    assert module.run_search is not None

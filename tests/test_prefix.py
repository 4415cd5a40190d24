"""The frozen prefix: freeze-aware execution, the feature cache, its keys and limit, spec keys."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lrsearch import training
from lrsearch.errors import SpecError, TaskError, TrialFailure
from lrsearch.groups import LayerGroups, resolve_groups
from lrsearch.space import Sample
from lrsearch.spec import StudySpec, TrainSection
from lrsearch.tasks import Batch, StagedTask, TensorClassificationTask
from lrsearch.tasks.digits import digits_transfer
from lrsearch.training import TrainResult, prefix, train_trial

SMALL = {"n_train": 64, "n_val": 64, "hidden": 32, "pretrain_epochs": 3}
STAGES = ("stem", "body.0", "body.1", "head")


@dataclass
class Recording(TensorClassificationTask):
    """Records every training loss, and whether autograd was on in each stage's forward."""

    losses: list[float] = field(default_factory=list)
    grad_in: dict[str, list[bool]] = field(default_factory=dict)

    def build_model(self) -> nn.Module:
        model = self.model_fn()
        for path in self.stage_paths:

            def hook(_m: nn.Module, _i: Any, _o: Any, path: str = path) -> None:
                self.grad_in.setdefault(path, []).append(torch.is_grad_enabled())

            model.get_submodule(path).register_forward_hook(hook)
        return model

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        out = super().loss(model, batch)
        self.losses.append(float(out.detach()))
        return out


def digits(**changes: Any) -> Recording:
    """A small digits task (``changes`` go to ``digits_transfer``), as a ``Recording`` task."""
    task = digits_transfer(**{**SMALL, **changes})
    return Recording(**{f.name: getattr(task, f.name) for f in fields(TensorClassificationTask)})


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    training.clear_cache()
    yield
    training.clear_cache()


def groups_of(task: TensorClassificationTask) -> LayerGroups:
    return resolve_groups(task.build_model(), {s: [s] for s in STAGES})


def rates(frozen: int, lr: float = 3e-3) -> Sample:
    """The first ``frozen`` stages frozen, the rest trained (the head at 10x)."""
    lrs = {s: 0.0 if i < frozen else lr for i, s in enumerate(STAGES)}
    if frozen < len(STAGES):
        lrs["head"] = 10 * lr
    return Sample(lrs)


def cfg(**kwargs: Any) -> TrainSection:
    base = TrainSection(optimizer="adamw", epochs=2, batch_size=16, eval_batch_size=40)
    return replace(base, **{"precision": "fp32", "eval_every": 3, **kwargs})


def run(task: TensorClassificationTask, sample: Sample, seed: int = 0, **kw: Any) -> TrainResult:
    reported: list[float] = []
    result = train_trial(
        task,
        groups_of(task),
        sample,
        cfg(**kw),
        device="cpu",
        seed=seed,
        report=lambda s, v: reported.append(v),
    )
    return replace(result, seconds=0.0)


# --- which stages are the frozen prefix -------------------------------------------------------


@pytest.mark.parametrize(
    ("trained", "expected"),
    [
        (["head"], ("stem", "body.0", "body.1")),
        (["body.1", "head"], ("stem", "body.0")),
        (["stem", "head"], ()),
        (["body.0"], ("stem",)),  # a frozen stage after the first trained one is no prefix
        ([], ()),  # nothing trains: no trial runs
    ],
)
def test_frozen_prefix_is_the_run_of_frozen_stages(trained: list[str], expected: tuple) -> None:
    task = digits()
    model = task.build_model()
    for name, p in model.named_parameters():
        p.requires_grad_(any(name.startswith(t + ".") for t in trained))
    assert prefix.frozen_prefix(task, model) == expected


def test_a_trained_parameter_outside_every_stage_leaves_no_prefix() -> None:
    task = replace(digits(), stage_paths=("stem", "body.0", "head"))  # body.1 in no stage
    model = task.build_model()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("body.1"))
    assert prefix.frozen_prefix(task, model) == ()


def test_a_stage_that_is_not_a_module_is_a_task_error() -> None:
    task = replace(digits_transfer(**SMALL), stage_paths=("stem", "trunk", "head"))
    with pytest.raises(TaskError, match="'trunk' is not a module of DigitsNet"):
        prefix.frozen_prefix(task, task.build_model())


# --- the same training, with and without ------------------------------------------------------


@pytest.mark.parametrize("frozen", [0, 1, 3])  # nothing, the stem, stem + body
def test_freeze_aware_and_cached_train_as_plain(frozen: int) -> None:
    plain = replace(digits(), stage_paths=())
    aware, cached = digits(), digits()
    results = [
        run(plain, rates(frozen)),
        run(aware, rates(frozen)),
        run(cached, rates(frozen), prefix_cache=True),
    ]
    assert [r.frozen_prefix for r in results] == [0, frozen, frozen]
    assert [r.prefix_cached for r in results] == [False, False, frozen > 0]
    assert results[0].value == pytest.approx(results[1].value, abs=1e-6)
    assert results[0].value == pytest.approx(results[2].value, abs=1e-6)
    assert len(plain.losses) == len(aware.losses) == len(cached.losses) > 0
    assert aware.losses == pytest.approx(plain.losses, rel=1e-5, abs=1e-6)
    assert cached.losses == pytest.approx(plain.losses, rel=1e-5, abs=1e-6)


def test_the_frozen_prefix_runs_without_autograd_and_the_rest_with_it() -> None:
    task = digits()
    run(task, rates(2))
    assert set(task.grad_in["stem"]) == set(task.grad_in["body.0"]) == {False}
    assert True in task.grad_in["body.1"] and True in task.grad_in["head"]


def test_a_cached_trial_runs_no_prefix_after_the_first() -> None:
    first, second = digits(), digits()
    run(first, rates(2), prefix_cache=True)
    run(second, rates(2), seed=1, prefix_cache=True)
    assert first.grad_in["stem"]  # it filled the cache
    assert "stem" not in second.grad_in and "body.0" not in second.grad_in


def test_auto_times_both_ways_then_keeps_the_faster_and_never_changes_a_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    trainer = training.Trainer()
    task = digits()
    groups = groups_of(task)
    auto, on = cfg(prefix_cache="auto"), cfg(prefix_cache=True)
    with caplog.at_level(logging.INFO, logger="lrsearch"):
        results = [
            trainer.train_one(task, groups, rates(2), auto, device="cpu", seed=s) for s in range(5)
        ]
    # Warm-up uncached, timed cached, timed uncached, then the choice made from the two.
    assert [r.prefix_cached for r in results[:3]] == [False, True, False]
    key = trainer.cache.key(task, ("stem", "body.0"), "fp32", torch.device("cpu"))
    choice = trainer.auto.decided(key)
    assert choice is not None
    assert [r.prefix_cached for r in results[3:]] == [choice, choice]
    said = [r.getMessage() for r in caplog.records if "prefix cache (auto)" in r.getMessage()]
    assert len(said) == 1 and ("on:" if choice else "off:") in said[0]
    # The prefix ran in eval mode in every trial: the same values as the cache always on.
    always = training.Trainer()
    expected = [
        always.train_one(task, groups, rates(2), on, device="cpu", seed=s).value for s in range(5)
    ]
    assert [r.value for r in results] == pytest.approx(expected, abs=1e-6)


def test_auto_takes_the_faster_way_as_timed() -> None:
    choice = prefix.AutoChoice()
    key = ("task", "stem", "fp32", "cpu")
    assert [choice.use(key)] == [False]  # the warm-up trial, not timed
    assert choice.record(key, False, 9.0) is None
    assert choice.use(key) is True
    assert choice.record(key, True, 0.5) is None
    assert choice.use(key) is False
    assert choice.record(key, False, 0.25) == "off: 0.5000 s a step cached, 0.2500 s recomputed"
    assert [choice.use(key) for _ in range(3)] == [False, False, False]
    other = ("task", "stem|body.0", "fp32", "cpu")
    choice.use(other)
    assert choice.use(other) is True
    # A cached trial pruned before it ends is not timed: the next one is cached again.
    assert choice.use(other) is True
    choice.record(other, True, 0.1)
    assert choice.use(other) is False
    assert choice.record(other, False, 0.3) == "on: 0.1000 s a step cached, 0.3000 s recomputed"
    assert choice.use(other) is True


# --- keys -------------------------------------------------------------------------------------


def test_the_cache_is_hit_by_the_same_prefix_and_missed_by_anything_else() -> None:
    task = digits()
    run(task, rates(2), prefix_cache=True)
    assert training.cache_info().misses == 1
    # Other trained rates, another seed (so another data order), another task object: a hit.
    run(digits(), rates(2, lr=1e-2), seed=5, prefix_cache=True)
    assert (training.cache_info().hits, training.cache_info().misses) == (1, 1)
    run(task, rates(1), prefix_cache=True)  # another prefix
    run(digits(noise=0.3), rates(2), prefix_cache=True)  # other data
    run(digits(n_train=60), rates(2), prefix_cache=True)  # other examples
    run(digits(pretrain_epochs=4), rates(2), prefix_cache=True)  # other weights, same data
    run(task, rates(2), prefix_cache=True)
    info = training.cache_info()
    assert (info.hits, info.misses, info.entries) == (2, 5, 5)


def test_a_task_without_a_fingerprint_is_keyed_by_the_object() -> None:
    @dataclass
    class Anonymous(Recording):
        def fingerprint(self) -> str | None:
            return None

    base = digits()
    one = Anonymous(**{f.name: getattr(base, f.name) for f in fields(TensorClassificationTask)})
    two = replace(one)
    run(one, rates(2), prefix_cache=True)
    run(one, rates(2), seed=1, prefix_cache=True)
    run(two, rates(2), prefix_cache=True)  # same data, but nothing says so
    assert (training.cache_info().hits, training.cache_info().misses) == (1, 2)
    del one
    gc.collect()
    assert training.cache_info().entries == 1  # the dead task's entry went with it


# --- size, rules, disk ------------------------------------------------------------------------


def _wide(width: int, seed: int = 0) -> TensorClassificationTask:
    """A toy task whose prefix outputs are ``width`` floats an example (88 examples)."""

    def model() -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 3))

    return _toy(model, stage_paths=("0", "1", "2"))


def _train_top(task: TensorClassificationTask, seed: int = 0, **kw: Any) -> TrainResult:
    groups = resolve_groups(task.build_model(), {"low": ["0"], "top": ["2"]})
    sample = Sample({"low": 0.0, "top": 0.05})
    return train_trial(task, groups, sample, cfg(**kw), device="cpu", seed=seed)


def test_outputs_over_the_limit_are_not_cached_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="lrsearch")
    task = _wide(4096)  # 88 x 4096 floats: 1.4 MiB
    cached = [_train_top(task, seed=s, prefix_cache=True, cache_mb=1) for s in (0, 1)]
    plain = _train_top(replace(task, stage_paths=()), seed=1)
    assert [r.prefix_cached for r in cached] == [False, False]
    assert cached[1].value == pytest.approx(plain.value, abs=1e-6)
    assert training.cache_info().entries == 0
    said = [r.getMessage() for r in caplog.records if "cache_mb = 1" in r.getMessage()]
    assert len(said) == 1 and "not cached" in said[0]
    assert _train_top(task, prefix_cache=True, cache_mb=2).prefix_cached  # a larger limit: tried


def test_the_least_recently_used_entry_makes_room() -> None:
    one, two = _wide(2048, seed=0), _wide(2048, seed=1)  # 0.7 MiB each, other weights
    for task in (one, two, one):
        assert _train_top(task, prefix_cache=True, cache_mb=1).prefix_cached
        assert training.cache_info().entries == 1
    assert training.cache_info().nbytes <= 2**20
    assert (training.cache_info().hits, training.cache_info().misses) == (0, 3)


def test_augmented_batches_are_not_cached_but_still_run_freeze_aware() -> None:
    task = replace(digits(), deterministic_batches=False)
    result = run(task, rates(2), prefix_cache=True)
    assert (result.frozen_prefix, result.prefix_cached) == (2, False)
    assert training.cache_info().entries == 0


def _dropout_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 3))


def _toy(model_fn: Any = _dropout_model, **kw: Any) -> TensorClassificationTask:
    g = torch.Generator().manual_seed(0)
    x, xv = torch.randn(48, 4, generator=g), torch.randn(40, 4, generator=g)
    y, yv = (x[:, 0] > 0).long() + (x[:, 1] > 0).long(), (xv[:, 0] > 0).long()
    return TensorClassificationTask(model_fn, x, y, xv, yv, **kw)


def test_with_the_option_on_the_prefix_runs_in_eval_mode_hit_or_not() -> None:
    task = _toy(stage_paths=("0", "1", "2", "3"))
    groups = resolve_groups(task.build_model(), {"low": ["0"], "top": ["3"]})
    sample = Sample({"low": 0.0, "top": 0.05})
    modes: list[bool] = []
    # cache_mb = 0 (the spec's minimum is 1) makes any prefix too big: the over-limit path.
    roomy, none = cfg(prefix_cache=True, cache_mb=64), cfg(prefix_cache=True, cache_mb=0)

    def record(m: nn.Module, _i: Any, _o: Any) -> None:
        if isinstance(m, nn.Dropout):
            modes.append(m.training)

    handle = nn.modules.module.register_module_forward_hook(record)
    try:
        off = train_trial(task, groups, sample, replace(roomy, prefix_cache=False), seed=3)
        assert True in modes  # without the option the frozen dropout trains as in plain PyTorch
        modes.clear()
        miss = train_trial(task, groups, sample, none, seed=3)
        hit = train_trial(task, groups, sample, roomy, seed=3)
        hit2 = train_trial(task, groups, sample, roomy, seed=3)
    finally:
        handle.remove()
    assert modes and not any(modes)
    assert (miss.prefix_cached, hit.prefix_cached, hit2.prefix_cached) == (False, True, True)
    assert hit.value == hit2.value
    assert miss.value == pytest.approx(hit.value, abs=1e-6)
    assert off.frozen_prefix == 3


def test_a_prefix_batchnorm_that_follows_the_data_blocks_the_cache() -> None:
    def bn_model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))

    task = _toy(bn_model, stage_paths=("0", "1", "2", "3"))
    groups = resolve_groups(task.build_model(), {"low": ["0", "1"], "top": ["3"]})
    sample = Sample({"low": 0.0, "top": 0.05})
    follows = train_trial(
        task, groups, sample, cfg(prefix_cache=True, freeze_batchnorm=False), device="cpu"
    )
    kept = train_trial(task, groups, sample, cfg(prefix_cache=True), device="cpu")
    assert (follows.frozen_prefix, follows.prefix_cached) == (3, False)
    assert (kept.frozen_prefix, kept.prefix_cached) == (3, True)


def test_the_disk_cache_outlives_the_memory_one(tmp_path: Path) -> None:
    first = run(digits(), rates(2), prefix_cache=True, cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("prefix-*.pt"))) == 1
    training.clear_cache()
    again = run(digits(), rates(2), prefix_cache=True, cache_dir=str(tmp_path))
    assert (training.cache_info().hits, training.cache_info().misses) == (1, 0)
    assert again.value == first.value
    (next(tmp_path.glob("prefix-*.pt"))).write_bytes(b"not a torch file")
    training.clear_cache()
    assert run(digits(), rates(2), prefix_cache=True, cache_dir=str(tmp_path)).value == first.value


def test_indices_that_disagree_with_the_batches_are_a_task_error() -> None:
    @dataclass
    class Dropping(Recording):
        def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
            yield from list(super().train_batches(batch_size, generator))[:-1]

    base = digits()
    task = Dropping(**{f.name: getattr(base, f.name) for f in fields(TensorClassificationTask)})
    with pytest.raises(TaskError, match="disagree"):
        run(task, rates(2), prefix_cache=True)


# --- tasks without the capability ---------------------------------------------------------------


class Bare:
    """A task with only the ``Task`` protocol's members."""

    metric = "accuracy"
    direction = "maximize"

    def __init__(self) -> None:
        self.inner = _toy()

    def build_model(self) -> nn.Module:
        return self.inner.build_model()

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        return self.inner.train_batches(batch_size, generator)

    def val_batches(self, batch_size: int) -> Iterator[Batch]:
        return self.inner.val_batches(batch_size)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.inner.loss(model, batch)

    def evaluate(self, model: nn.Module, batches: Any) -> float:
        return self.inner.evaluate(model, batches)


@pytest.mark.parametrize("task_fn", [Bare, _toy], ids=["bare", "no-stages"])
def test_a_task_without_stages_trains_as_before(task_fn: Any) -> None:
    task = task_fn()
    assert not isinstance(task, StagedTask) or not task.stages(task.build_model())
    groups = resolve_groups(task.build_model(), {"low": ["0"], "top": ["3"]})
    sample = Sample({"low": 0.0, "top": 0.05})
    on = train_trial(task, groups, sample, cfg(prefix_cache=True), seed=2)
    off = train_trial(task, groups, sample, cfg(), seed=2)
    assert (on.frozen_prefix, on.prefix_cached) == (0, False)
    assert on.value == off.value
    assert training.cache_info().misses == 0


# --- [train] keys -------------------------------------------------------------------------------


def _spec(train: dict[str, Any]) -> StudySpec:
    return StudySpec.from_dict(
        {
            "study": {"name": "s"},
            "task": {"entry": "lrsearch.tasks.digits:digits_transfer"},
            "groups": {"auto_depth": 1},
            "space": {"lr": [1e-5, 1e-1]},
            "train": train,
        }
    )


def test_train_keys_of_the_prefix_cache() -> None:
    spec = _spec({"prefix_cache": True, "cache_mb": 64, "cache_dir": "/tmp/c"})
    assert (spec.train.prefix_cache, spec.train.cache_mb, spec.train.cache_dir) == (
        True,
        64,
        "/tmp/c",
    )
    assert _spec({"prefix_cache": "auto"}).train.prefix_cache == "auto"
    default = _spec({}).train
    assert (default.prefix_cache, default.cache_mb, default.cache_dir) == (False, 512, None)
    assert StudySpec.from_dict(spec.to_dict()) == spec
    assert StudySpec.from_dict(_spec({}).to_dict()) == _spec({})


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"prefix_cache": "yes"}, r"\[train\] prefix_cache: must be true, false or \"auto\""),
        ({"prefix_cache": 1}, r"\[train\] prefix_cache: must be"),
        ({"prefix_cache": True, "cache_mb": 0}, r"\[train\] cache_mb: must be >= 1"),
        ({"prefix_cache": True, "cache_mb": 1.5}, r"\[train\] cache_mb: must be"),
        ({"prefix_cache": True, "cache_dir": " "}, r"\[train\] cache_dir: must be a directory"),
        ({"cache_dir": "/tmp/c"}, r"\[train\] cache_dir: has no effect unless prefix_cache"),
    ],
)
def test_bad_train_keys_of_the_prefix_cache(train: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        _spec(train)


def test_an_out_of_memory_trial_empties_the_cache_it_would_need_the_memory_of() -> None:
    run(digits(), rates(2), prefix_cache=True)
    assert training.cache_info().entries == 1

    class Starving(Recording):
        def loss(self, model: Any, batch: Batch) -> Any:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    task = digits()
    starving = Starving(**{f.name: getattr(task, f.name) for f in fields(TensorClassificationTask)})
    with pytest.raises(TrialFailure, match="the prefix cache was emptied") as info:
        run(starving, rates(2), prefix_cache=True)
    assert "9.00 GiB" in info.value.reason
    assert training.cache_info().entries == 0

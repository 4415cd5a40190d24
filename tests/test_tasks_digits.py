"""The quickstart task ``lrsearch.tasks.digits:digits_transfer``: data, model copies, training."""

from __future__ import annotations

import math
import socket
from typing import Any

import pytest
import torch
from torch import nn

from lrsearch.errors import TaskError
from lrsearch.tasks import Task, TensorClassificationTask, digits, load_task
from lrsearch.tasks.digits import DOWNSTREAM_CLASSES, DigitsNet, digits_transfer

# A cheap pretraining for tests that need a second argument set but not a good backbone.
CHEAP: dict[str, Any] = {"hidden": 16, "pretrain_epochs": 1}


@pytest.fixture(scope="module")
def task() -> TensorClassificationTask:
    return digits_transfer()


def _train(
    task: TensorClassificationTask, model: nn.Module, lrs: dict[str, float], epochs: int
) -> None:
    """Train ``model`` with AdamW, one rate per top-level module; rate 0 freezes it."""
    groups = []
    for name, module in model.named_children():
        for p in module.parameters():
            p.requires_grad_(lrs[name] > 0)
        if lrs[name] > 0:
            groups.append({"params": list(module.parameters()), "lr": lrs[name]})
    optimizer = torch.optim.AdamW(groups)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for batch in task.train_batches(32, generator):
            loss = task.loss(model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def _accuracy(task: TensorClassificationTask, model: nn.Module) -> float:
    model.eval()
    with torch.no_grad():
        return task.evaluate(model, task.val_batches(256))


def _train_loss(task: TensorClassificationTask, model: nn.Module) -> float:
    with torch.no_grad():
        return float(task.loss(model, (task.x_train, task.y_train)))


def test_builds_offline_from_the_bundled_data(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("digits_transfer tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    digits._digits.cache_clear()  # read the data again, under the block
    t = digits_transfer(seed=3, **CHEAP)

    assert isinstance(t, Task)
    assert (t.metric, t.direction) == ("accuracy", "maximize")
    assert t.x_train.shape == (200, 64) and t.x_train.dtype == torch.float32
    assert t.x_val.shape == (300, 64)
    assert t.y_train.dtype == torch.long
    assert set(t.y_train.tolist()) == set(t.y_val.tolist()) == set(range(5))
    assert t.info["classes"] == [5, 6, 7, 8, 9]
    assert (t.info["n_pretrain"], t.info["n_available"]) == (596, 599)  # a third / two thirds
    assert 0 < t.info["pretrain_accuracy"] <= 1


def test_load_task_entry_from_a_study_file() -> None:
    t = load_task("lrsearch.tasks.digits:digits_transfer", {"n_train": 50, **CHEAP})
    assert len(t.x_train) == 50  # type: ignore[attr-defined]


def test_build_model_gives_independent_copies_of_the_same_weights(
    task: TensorClassificationTask,
) -> None:
    misses = digits._pretrained.cache_info().misses
    rng = torch.get_rng_state()
    a, b = task.build_model(), task.build_model()

    assert digits._pretrained.cache_info().misses == misses  # no pretraining again
    assert torch.equal(torch.get_rng_state(), rng)  # the trainer's seeding is left alone
    assert isinstance(a, DigitsNet)
    assert [name for name, _ in a.named_children()] == ["stem", "body", "head"]
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
        assert state_a[key].data_ptr() != state_b[key].data_ptr(), key

    pretrained, _ = digits._pretrained(256, 0.25, 30, 0)
    for key, value in state_a.items():
        if not key.startswith("head."):
            assert torch.equal(value, pretrained[key]), key

    with torch.no_grad():
        for p in a.parameters():
            p.add_(1.0)
    for key, value in b.state_dict().items():
        assert torch.equal(value, state_b[key]), key  # b did not move with a
    fresh = task.build_model().state_dict()
    assert all(torch.equal(fresh[k], state_b[k]) for k in fresh)  # nor did the cache


def test_head_is_fresh_not_pretrained(task: TensorClassificationTask) -> None:
    model = task.build_model()
    pretrained, _ = digits._pretrained(256, 0.25, 30, 0)
    assert isinstance(model, DigitsNet)
    assert model.head.weight.shape == (5, 256)
    assert pretrained["head.weight"].shape == (10, 256)
    # Not the pretrained rows of digits 5-9, nor any other slice of the pretrained head.
    for start in range(6):
        rows = pretrained["head.weight"][start : start + 5]
        assert not torch.allclose(model.head.weight, rows)
    # The pretrained head knows digits; the fresh one is near chance before training.
    assert _accuracy(task, model) < 0.4


def test_split_sizes_and_disjointness() -> None:
    x, y = digits._digits()
    upstream = set(digits._upstream_indices(0).tolist())
    for n_train, n_val in [(200, 300), (37, 11), (1, 598)]:
        train_idx, val_idx = digits._downstream_split(0, n_train, n_val)
        train, val = train_idx.tolist(), val_idx.tolist()
        assert (len(train), len(val)) == (n_train, n_val)
        assert len(set(train)) == n_train and len(set(val)) == n_val
        assert not set(train) & set(val)
        assert not (set(train) | set(val)) & upstream
        assert set(y[train_idx].tolist()) <= set(DOWNSTREAM_CLASSES)
        counts = torch.bincount(y[train_idx] - 5, minlength=5)
        assert int(counts.max() - counts.min()) <= 1  # balanced over the five digits

    # The task's tensors are those images (only jittered when noise is 0), labelled 0..4.
    t = digits_transfer(n_train=37, n_val=11, noise=0.0, **CHEAP)
    train_idx, val_idx = digits._downstream_split(0, 37, 11)
    assert torch.equal(t.y_train, y[train_idx] - 5)
    assert torch.equal(t.y_val, y[val_idx] - 5)
    for rows, idx in [(t.x_train, train_idx), (t.x_val, val_idx)]:
        padded = nn.functional.pad(x[idx].view(-1, 8, 8), (1, 1, 1, 1))
        for row, image in zip(rows, padded, strict=True):
            shifts = [
                image[dy : dy + 8, dx : dx + 8].reshape(64) for dy in range(3) for dx in range(3)
            ]
            assert any(torch.equal(row, s) for s in shifts)


def test_downstream_images_are_noised_once_and_for_all() -> None:
    a = digits_transfer(n_train=20, n_val=20, **CHEAP)
    again = digits_transfer(n_train=20, n_val=20, **CHEAP)
    assert torch.equal(a.x_train, again.x_train) and torch.equal(a.x_val, again.x_val)
    # The same seed draws the same shifts, so what differs from the noiseless images is the noise.
    clean = digits_transfer(n_train=20, n_val=20, noise=0.0, **CHEAP)
    assert abs(float((a.x_train - clean.x_train).std()) - 0.25) < 0.02


def test_pretraining_is_deterministic_and_works_under_no_grad() -> None:
    with torch.no_grad():
        first, acc_first = digits._pretrained.__wrapped__(16, 0.25, 2, 5)
        second, acc_second = digits._pretrained.__wrapped__(16, 0.25, 2, 5)
    assert acc_first == acc_second
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    other, _ = digits._pretrained.__wrapped__(16, 0.25, 2, 6)
    assert not torch.equal(first["stem.0.weight"], other["stem.0.weight"])


def test_short_training_lowers_the_loss(task: TensorClassificationTask) -> None:
    model = task.build_model()
    before = _train_loss(task, model)
    _train(task, model, {"stem": 1e-4, "body": 1e-4, "head": 1e-2}, epochs=1)  # 7 steps
    after = _train_loss(task, model)
    assert math.isfinite(after)
    assert after < 0.8 * before


def test_pretrained_backbone_with_trained_head_beats_chance(
    task: TensorClassificationTask,
) -> None:
    pretrained = task.build_model()
    _train(task, pretrained, {"stem": 0.0, "body": 0.0, "head": 1e-2}, epochs=3)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        random = DigitsNet(256, 5)
    _train(task, random, {"stem": 0.0, "body": 0.0, "head": 1e-2}, epochs=3)

    chance = task.info["chance_accuracy"]
    pretrained_acc, random_acc = _accuracy(task, pretrained), _accuracy(task, random)
    assert pretrained_acc > 0.7 > 3 * chance  # measured 0.86
    assert pretrained_acc > random_acc + 0.3  # the pretraining is what helps (random: 0.3)


@pytest.mark.parametrize(
    ("kwargs", "name", "shown"),
    [
        ({"n_train": 0}, "n_train", "n_train=0"),
        ({"n_train": -5}, "n_train", "n_train=-5"),
        ({"n_train": 599}, "n_train", "[1, 598]"),
        ({"n_train": 2.5}, "n_train", "2.5"),
        ({"n_train": True}, "n_train", "True"),
        ({"n_val": 0}, "n_val", "n_val=0"),
        ({"n_train": 300, "n_val": 400}, "n_val", "[1, 299]"),
        ({"hidden": 0}, "hidden", "hidden=0"),
        ({"hidden": 5000}, "hidden", "[1, 1024]"),
        ({"pretrain_epochs": 0}, "pretrain_epochs", "pretrain_epochs=0"),
        ({"noise": -0.1}, "noise", "noise=-0.1"),
        ({"noise": float("nan")}, "noise", "noise=nan"),
        ({"noise": "high"}, "noise", "'high'"),
        ({"seed": -1}, "seed", "seed=-1"),
    ],
)
def test_bad_arguments_raise_task_error(kwargs: dict[str, Any], name: str, shown: str) -> None:
    with pytest.raises(TaskError) as info:
        digits_transfer(**kwargs)
    message = str(info.value)
    assert name in message and shown in message
    assert "[" in message and "]" in message  # the allowed range


def test_bad_kwargs_from_a_study_file_raise_task_error() -> None:
    with pytest.raises(TaskError, match=r"n_train=1000 .*\[1, 598\]"):
        load_task("lrsearch.tasks.digits:digits_transfer", {"n_train": 1000})
    with pytest.raises(TaskError, match="n_trian"):
        load_task("lrsearch.tasks.digits:digits_transfer", {"n_trian": 10})


# --- eval_split: a held-out test split for judging a search's winner out of sample ---------------


def test_eval_split_val_is_the_default_and_unchanged() -> None:
    default = digits_transfer(n_train=40, n_val=30, **CHEAP)
    val = digits_transfer(n_train=40, n_val=30, eval_split="val", n_test=25, **CHEAP)
    for name in ("x_train", "y_train", "x_val", "y_val"):
        assert torch.equal(getattr(default, name), getattr(val, name)), name
    assert default.info["eval_split"] == "val" and default.info["n_test"] is None


def test_eval_split_test_is_disjoint_and_keeps_the_training_data() -> None:
    x, y = digits._digits()
    val = digits_transfer(n_train=200, n_val=300, **CHEAP)
    test = digits_transfer(n_train=200, n_val=300, eval_split="test", **CHEAP)

    # Only what val_batches yields changes: the training images and the model are the same.
    assert torch.equal(val.x_train, test.x_train) and torch.equal(val.y_train, test.y_train)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            val.build_model().state_dict().values(),
            test.build_model().state_dict().values(),
            strict=True,
        )
    )
    assert test.info["n_test"] == 99  # every downstream image left over
    assert test.x_val.shape == (99, 64) and len(test.y_val) == 99
    batches = list(test.val_batches(40))
    assert torch.equal(torch.cat([b[1] for b in batches]), test.y_val)

    train_idx, val_idx = digits._downstream_split(0, 200, 300)
    test_idx = digits._downstream_test(0, 200, 300, 99)
    train, held, tested = set(train_idx.tolist()), set(val_idx.tolist()), set(test_idx.tolist())
    assert len(tested) == 99
    assert not tested & train and not tested & held
    assert not tested & set(digits._upstream_indices(0).tolist())
    assert torch.equal(test.y_val, y[test_idx] - 5)
    assert set(test.y_val.tolist()) == set(range(5))
    # The same images (up to their one-off corruption) as the test indices name.
    clean = digits_transfer(n_train=200, n_val=300, noise=0.0, eval_split="test", **CHEAP)
    for row, image in zip(clean.x_val, x[test_idx].view(-1, 8, 8), strict=True):
        padded = nn.functional.pad(image, (1, 1, 1, 1))
        shifts = [
            padded[dy : dy + 8, dx : dx + 8].reshape(64) for dy in range(3) for dx in range(3)
        ]
        assert any(torch.equal(row, s) for s in shifts)


def test_eval_split_test_size_and_determinism() -> None:
    a = digits_transfer(n_train=50, n_val=50, n_test=30, eval_split="test", **CHEAP)
    b = digits_transfer(n_train=50, n_val=50, n_test=30, eval_split="test", **CHEAP)
    assert len(a.x_val) == 30 and a.info["n_test"] == 30
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_val, b.y_val)
    # Through a study file's [task] kwargs too.
    t = load_task(
        "lrsearch.tasks.digits:digits_transfer",
        {"n_train": 50, "n_val": 50, "eval_split": "test", **CHEAP},
    )
    assert t.info["n_test"] == 599 - 100  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"eval_split": "train"}, "'train'"),
        ({"eval_split": "test", "n_test": 0}, "n_test=0"),
        ({"eval_split": "test", "n_test": 100}, "[1, 99]"),
        ({"n_test": 2.5}, "2.5"),
        ({"n_train": 300, "n_val": 299, "eval_split": "test"}, "leave none"),
    ],
)
def test_bad_eval_split_arguments_raise_task_error(kwargs: dict[str, Any], shown: str) -> None:
    with pytest.raises(TaskError) as info:
        digits_transfer(**kwargs)
    assert shown in str(info.value)

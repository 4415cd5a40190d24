"""The built-in vision task ``lrsearch.tasks.vision:fashion_mnist_mobilenet`` and its study files.

Tests that need the ImageNet weights or Fashion-MNIST are skipped, naming the install command,
where they are missing; the rest (argument checks, install hints, idx parsing, key checks, the study
files' groups) run everywhere.
"""

from __future__ import annotations

import gzip
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrsearch.errors import TaskError
from lrsearch.groups import resolve_groups
from lrsearch.space import Sample, SearchSpace
from lrsearch.spec import TrainSection, load_spec
from lrsearch.tasks import Task, load_task, vision
from lrsearch.tasks._mobilenet import MobileNetV2
from lrsearch.tasks.vision import (
    DATA_ENV,
    DATA_FILES,
    DATA_INSTALL,
    STAGES,
    WEIGHTS_INSTALL,
    ImageClassificationTask,
    fashion_mnist_mobilenet,
)
from lrsearch.training import train_trial

STUDIES = Path(__file__).resolve().parent.parent / "studies"
STUDY_FILES = ("mobilenet_per_group.toml", "mobilenet_single_lr.toml", "mobilenet_layer_decay.toml")
TINY: dict[str, Any] = {"n_train": 64, "n_val": 32, "n_test": 32, "image_size": 32}


def _missing_assets() -> str:
    try:
        vision._locate()
    except TaskError as e:
        return str(e)
    return ""


_MISSING = _missing_assets()
needs_assets = pytest.mark.skipif(
    bool(_MISSING),
    reason=f"needs the MobileNetV2 weights and Fashion-MNIST: {_MISSING}",
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def task() -> ImageClassificationTask:
    return fashion_mnist_mobilenet(**TINY)


def _weights_file() -> str:
    return str(vision._locate()[0])


# --- built offline, weights with strict keys ------------------------------------------------------


@needs_assets
def test_builds_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("fashion_mnist_mobilenet tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    t = fashion_mnist_mobilenet(**{**TINY, "seed": 7})  # an argument set no other test caches

    assert isinstance(t, Task)
    assert (t.metric, t.direction) == ("accuracy", "maximize")
    assert t.x_train.shape == (64, 3, 32, 32) and t.x_train.dtype == torch.float32
    assert t.x_val.shape == (32, 3, 32, 32)
    assert t.y_train.dtype == torch.long
    # Balanced over the ten classes to within one image.
    assert set(torch.bincount(t.y_train, minlength=10).tolist()) <= {6, 7}
    assert t.info["n_classes"] == 10 and t.info["eval_split"] == "val"
    # Three equal channels before normalisation, normalised with the ImageNet statistics.
    mean = torch.tensor(vision.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(vision.IMAGENET_STD).view(3, 1, 1)
    raw = t.x_train[0] * std + mean
    assert torch.allclose(raw[0], raw[1], atol=1e-5) and torch.allclose(raw[0], raw[2], atol=1e-5)
    assert float(raw.min()) >= 0 and float(raw.max()) <= 1 + 1e-5
    model = t.build_model()
    with torch.no_grad():
        assert model.eval()(t.x_val[:4]).shape == (4, 10)


@needs_assets
def test_load_task_entry_from_a_study_file() -> None:
    t = load_task("lrsearch.tasks.vision:fashion_mnist_mobilenet", TINY)
    assert len(t.x_train) == 64  # type: ignore[attr-defined]


@needs_assets
def test_weights_load_with_strict_keys(task: ImageClassificationTask) -> None:
    state = torch.load(_weights_file(), map_location="cpu", weights_only=True)
    model = task.build_model()
    ours = model.state_dict()

    assert list(ours) == list(state)  # same keys, same order
    for key, value in state.items():
        if key.startswith("classifier."):
            continue
        assert torch.equal(ours[key], value), key
    assert ours["classifier.1.weight"].shape == (10, 1280)
    # The fresh head follows the task's seed: the same for every trial, another for another seed.
    again = task.build_model().state_dict()["classifier.1.weight"]
    assert torch.equal(again, ours["classifier.1.weight"])
    other = fashion_mnist_mobilenet(**{**TINY, "seed": 1}).build_model()
    assert not torch.equal(other.state_dict()["classifier.1.weight"], again)
    assert model.training and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("drop", "missing keys features.18.1.bias"),
        ("add", "unexpected keys features.19.weight"),
        ("reshape", "shape mismatches classifier.1.weight (10, 1280) != (1000, 1280)"),
    ],
)
def test_a_state_that_does_not_match_is_a_task_error_naming_the_keys(
    change: str, named: str
) -> None:
    with torch.device("cpu"):
        expected = {k: tuple(v.shape) for k, v in MobileNetV2(1000).state_dict().items()}
    state = {k: torch.zeros(s) for k, s in expected.items()}
    if change == "drop":
        del state["features.18.1.bias"]
    elif change == "add":
        state["features.19.weight"] = torch.zeros(1)
    else:
        state["classifier.1.weight"] = torch.zeros(10, 1280)
    with pytest.raises(TaskError, match="strict key match") as info:
        vision.check_state(state, expected)
    assert named in str(info.value)
    vision.check_state({k: torch.zeros(s) for k, s in expected.items()}, expected)  # no error


# --- the study files ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STUDY_FILES)
def test_study_file_groups_cover_every_parameter_once(name: str) -> None:
    spec = load_spec(STUDIES / name)
    model = MobileNetV2(n_classes=10)  # the task's parameter names, without weights or data
    groups = resolve_groups(model, spec.groups.patterns)

    owned = [p for _, members in groups.params for p in members]
    assert sorted(owned) == sorted(n for n, _ in model.named_parameters())
    assert len(owned) == len(set(owned))
    assert {g: list(p) for g, p in spec.groups.patterns} == STAGES
    SearchSpace(spec.space, groups.names)  # every group the space names exists
    assert spec.task.entry == "lrsearch.tasks.vision:fashion_mnist_mobilenet"


def test_study_files_differ_only_in_their_space_and_name() -> None:
    specs = [load_spec(STUDIES / name).to_dict() for name in STUDY_FILES]
    assert [s["space"]["kind"] for s in specs] == ["per_group", "single", "layer_decay"]
    assert specs[1]["space"]["freeze"] == [] and specs[2]["space"]["head"] == ["head"]
    for spec in specs[1:]:
        for section in ("task", "groups", "train", "pruner", "sampler"):
            assert spec[section] == specs[0][section], section
        assert {k: v for k, v in spec["study"].items() if k != "name"} == {
            k: v for k, v in specs[0]["study"].items() if k != "name"
        }


# --- training -------------------------------------------------------------------------------------


@needs_assets
def test_one_training_step_lowers_the_loss_on_a_fixed_batch(task: ImageClassificationTask) -> None:
    model = task.build_model().train()
    x, y = task.x_train[:32], task.y_train[:32]

    def loss() -> torch.Tensor:
        torch.manual_seed(0)  # the same dropout mask both times
        return F.cross_entropy(model(x), y)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = loss()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = loss()
    assert float(after) < float(before.detach())


@needs_assets
@pytest.mark.parametrize("freeze_batchnorm", [True, False])
def test_frozen_groups_keep_their_imagenet_batchnorm_statistics(
    task: ImageClassificationTask, freeze_batchnorm: bool
) -> None:
    """What the module docstring says the trainer does with BatchNorm, checked."""
    models: list[nn.Module] = []
    build = task.model_fn

    def keep() -> nn.Module:
        models.append(build())
        return models[-1]

    traced = ImageClassificationTask(keep, task.x_train, task.y_train, task.x_val, task.y_val)
    groups = resolve_groups(MobileNetV2(10), STAGES)
    lrs = {g: 0.0 for g in groups.names} | {"stage5": 1e-3, "head": 1e-2}
    cfg = TrainSection(
        batch_size=16, max_steps=2, eval_batch_size=32, freeze_batchnorm=freeze_batchnorm
    )
    train_trial(traced, groups, Sample(lrs), cfg, device="cpu")

    state = torch.load(_weights_file(), map_location="cpu", weights_only=True)
    after = models[0].state_dict()
    frozen_norm, trained_norm = (
        "features.4.conv.1.1.running_mean",
        "features.15.conv.1.1.running_mean",
    )
    # freeze_batchnorm = false: frozen stages re-estimate their statistics (weights stay fixed).
    assert torch.equal(after[frozen_norm], state[frozen_norm]) is freeze_batchnorm
    assert not torch.equal(after[trained_norm], state[trained_norm])
    frozen_weight = frozen_norm.replace("running_mean", "weight")
    assert torch.equal(after[frozen_weight], state[frozen_weight])


def test_an_epoch_never_ends_in_a_batch_of_one_image() -> None:
    x, y = torch.zeros(65, 3, 32, 32), torch.arange(65) % 10
    t = ImageClassificationTask(lambda: nn.Identity(), x, y, x[:2], y[:2])
    sizes = [len(b[1]) for b in t.train_batches(32, torch.Generator().manual_seed(0))]
    assert sizes == [32, 32]
    sizes = [len(b[1]) for b in t.train_batches(30, torch.Generator().manual_seed(0))]
    assert sizes == [30, 30, 5]


# --- splits ---------------------------------------------------------------------------------------


@needs_assets
def test_splits_are_disjoint_deterministic_and_follow_the_seed() -> None:
    folder = str(vision._locate()[1])
    train_y = vision._file_split(folder, "train")[1]
    test_y = vision._file_split(folder, "test")[1]
    train, val, test = vision.split_indices(train_y, test_y, 2000, 1000, 1000, seed=0)

    assert (len(train), len(val), len(test)) == (2000, 1000, 1000)
    assert not set(train.tolist()) & set(val.tolist())
    assert torch.bincount(train_y[train]).tolist() == [200] * 10
    assert torch.bincount(test_y[test]).tolist() == [100] * 10
    again = vision.split_indices(train_y, test_y, 2000, 1000, 1000, seed=0)
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), again, strict=True))
    other = vision.split_indices(train_y, test_y, 2000, 1000, 1000, seed=1)
    assert not torch.equal(other[0], train)
    assert torch.equal(other[2], test)  # the test images do not follow the seed


@needs_assets
def test_eval_split_test_evaluates_on_other_images_with_the_same_training_images(
    task: ImageClassificationTask,
) -> None:
    test = fashion_mnist_mobilenet(**TINY, eval_split="test")
    assert torch.equal(test.x_train, task.x_train) and torch.equal(test.y_train, task.y_train)
    assert test.x_val.shape == (32, 3, 32, 32) and test.info["eval_split"] == "test"
    assert not torch.equal(test.x_val, task.x_val)
    val_batches = torch.cat([x for x, _ in test.val_batches(10)])
    assert torch.equal(val_batches, test.x_val)


@pytest.mark.parametrize(
    ("labels", "prefix"),
    [
        ([0, 0, 0, 1, 1, 1, 2, 2, 2], [0, 1, 2]),
        ([2, 1, 0, 2, 1, 0], [0, 1, 2]),
        ([0, 0, 0, 0, 1], [0, 1]),
    ],
)
def test_balanced_order_deals_the_classes_round_robin(labels: list[int], prefix: list[int]) -> None:
    y = torch.tensor(labels)
    order = vision.balanced_order(y, seed=3)
    assert sorted(order.tolist()) == list(range(len(labels)))
    assert y[order[: len(prefix)]].tolist() == prefix


# --- arguments and install hints ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_train": 0}, "n_train=0 is out of range; it must be in [1, 59999]"),
        ({"n_train": 60_000}, "n_train=60000 is out of range"),
        ({"n_train": "64"}, "n_train must be an integer"),
        ({"n_val": 0}, "n_val=0 is out of range"),
        ({"n_train": 59_000, "n_val": 1001}, "n_val=1001 is out of range; it must be in [1, 1000]"),
        ({"n_test": 0}, "n_test=0 is out of range; it must be in [1, 10000]"),
        ({"n_test": 10_001}, "n_test=10001 is out of range"),
        ({"image_size": 31}, "image_size=31 is out of range; it must be in [32, 224]"),
        ({"image_size": 225}, "image_size=225 is out of range"),
        ({"image_size": 32.0}, "image_size must be an integer"),
        ({"seed": -1}, "seed=-1 is out of range"),
        ({"seed": True}, "seed must be an integer"),
        ({"eval_split": "train"}, "eval_split must be 'val' or 'test', got 'train'"),
    ],
)
def test_bad_arguments_name_the_argument_and_its_range(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(TaskError) as info:
        fashion_mnist_mobilenet(**kwargs)
    assert message in str(info.value)
    assert str(info.value).startswith("fashion_mnist_mobilenet: ")


@pytest.mark.parametrize(
    ("weights", "data", "hints", "not_hints"),
    [
        (False, True, [WEIGHTS_INSTALL], [DATA_INSTALL]),
        (True, False, [DATA_INSTALL, DATA_ENV, "train-images-idx3-ubyte.gz"], [WEIGHTS_INSTALL]),
        (False, False, [WEIGHTS_INSTALL, DATA_INSTALL], []),
    ],
)
def test_missing_weights_or_data_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    weights: bool,
    data: bool,
    hints: list[str],
    not_hints: list[str],
) -> None:
    package = tmp_path / "pkg"
    (package / "weights").mkdir(parents=True)
    (package / "weights" / vision.WEIGHTS_FILE).touch()
    folder = tmp_path / "data"
    folder.mkdir()
    if data:
        for name in (f for pair in DATA_FILES.values() for f in pair):
            (folder / name).touch()
    monkeypatch.setattr(vision, "_weights_package_dir", lambda: package if weights else None)
    monkeypatch.setenv(DATA_ENV, str(folder))

    with pytest.raises(TaskError) as info:
        fashion_mnist_mobilenet(**TINY)
    for hint in hints:
        assert hint in str(info.value)
    for hint in not_hints:
        assert hint not in str(info.value)


def test_found_weights_and_data_locate_without_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / vision.WEIGHTS_FILE).touch()
    for name in (f for pair in DATA_FILES.values() for f in pair):
        (tmp_path / name).touch()
    monkeypatch.setattr(vision, "_weights_package_dir", lambda: tmp_path)
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert vision._locate() == (tmp_path / "weights" / vision.WEIGHTS_FILE, tmp_path)


@needs_assets
def test_the_data_folder_can_be_set_by_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source = vision._locate()[1]
    for name in (f for pair in DATA_FILES.values() for f in pair):
        (tmp_path / name).symlink_to(source / name)
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    t = fashion_mnist_mobilenet(**TINY)
    assert t.info["data_dir"] == str(tmp_path)


def _idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> Path:
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(f">I{len(dims)}I", magic, *dims) + payload)
    return path


@pytest.mark.parametrize(
    ("magic", "dims", "payload", "error"),
    [
        (0x0803, (2, 2, 3), bytes(range(12)), None),
        (0x0801, (2, 2, 3), bytes(range(12)), "not an idx file of 3-d unsigned bytes"),
        (0x0803, (2, 2, 3), bytes(range(11)), "truncated"),
    ],
)
def test_read_idx(
    tmp_path: Path, magic: int, dims: tuple[int, ...], payload: bytes, error: str | None
) -> None:
    path = _idx(tmp_path / "x.gz", magic, dims, payload)
    if error is None:
        assert vision.read_idx(path, 3).tolist() == torch.arange(12).view(2, 2, 3).tolist()
    else:
        with pytest.raises(TaskError, match=error):
            vision.read_idx(path, 3)


def test_a_file_that_is_not_gzip_is_a_task_error(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(b"not gzip")
    with pytest.raises(TaskError, match="cannot read"):
        vision.read_idx(path, 1)


# --- the StagedTask capability: frozen prefix and its cache ------------------------------------


def test_train_indices_drop_the_batch_of_one_image_as_train_batches_do() -> None:
    x, y = torch.zeros(65, 3, 32, 32), torch.arange(65) % 10
    t = ImageClassificationTask(lambda: nn.Identity(), x, y, x[:2], y[:2])
    for size in (32, 30, 64):
        idx = list(t.train_indices(size, torch.Generator().manual_seed(1)))
        batches = list(t.train_batches(size, torch.Generator().manual_seed(1)))
        assert [len(i) for i in idx] == [len(b[1]) for b in batches]
        for i, (_, labels) in zip(idx, batches, strict=True):
            assert torch.equal(y[i], labels)


@needs_assets
def test_prefix_and_rest_compute_the_model(task: ImageClassificationTask) -> None:
    from lrsearch.tasks import StagedTask

    model = task.build_model().eval()
    assert isinstance(task, StagedTask)
    assert list(task.stages(model)) == [*(f"features.{i}" for i in range(19)), "classifier"]
    x = task.x_val[:4]
    with torch.no_grad():
        expected = model(x)
        for upto in (1, 7, 19):  # 19: every feature stage; the prefix pools
            out, _ = task.run_prefix(model, (x, None), upto)
            assert out.shape[0] == 4 and (upto != 19 or out.shape == (4, 1280))
            torch.testing.assert_close(task.rest(model, upto)(out), expected)


@needs_assets
def test_the_prefix_cache_trains_as_plain_and_is_hit_by_the_second_trial(
    task: ImageClassificationTask,
) -> None:
    """The frozen prefix (stem..stage4) has no dropout: cached, uncached and plain agree."""
    from lrsearch import training

    groups = resolve_groups(MobileNetV2(10), STAGES)
    frozen = ("stem", "stage2", "stage3", "stage4")
    lrs = {g: 0.0 if g in frozen else 1e-3 for g in groups.names} | {"head": 1e-2}
    plain = ImageClassificationTask(
        task.model_fn, task.x_train, task.y_train, task.x_val, task.y_val
    )

    def run(t: ImageClassificationTask, cache: bool) -> Any:
        cfg = TrainSection(batch_size=16, max_steps=3, eval_batch_size=32, prefix_cache=cache)
        return train_trial(t, groups, Sample(lrs), cfg, device="cpu", seed=0)

    training.clear_cache()
    try:
        base = run(plain, False)  # no stages: the whole model, as a task without the capability
        aware = run(task, False)
        miss = run(task, True)
        assert (training.cache_info().misses, training.cache_info().hits) == (1, 0)
        hit = run(task, True)
        assert training.cache_info().hits == 1
    finally:
        training.clear_cache()
    assert base.frozen_prefix == 0 and aware.frozen_prefix == miss.frozen_prefix == 14
    assert not aware.prefix_cached and miss.prefix_cached and hit.prefix_cached
    for result in (aware, miss, hit):
        assert result.value == pytest.approx(base.value, abs=1e-6)

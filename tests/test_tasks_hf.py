"""The no-code text task ``lrsearch.tasks.hf:text_classification``, on a tiny BERT made here.

The model folder (a randomly initialised 2-layer BERT of hidden size 32, and a WordPiece tokenizer
over a 25-word vocabulary) and the CSV of texts are written by the tests: nothing is fetched.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from lrsearch.cli import main
from lrsearch.errors import TaskError
from lrsearch.groups import resolve_groups
from lrsearch.tasks import StagedTask, load_task

transformers = pytest.importorskip("transformers", reason='needs pip install "lrsearch[hf]"')

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENTRY = "lrsearch.tasks.hf:text_classification"
GOOD = ["good", "great", "fun", "superb", "lovely"]
BAD = ["bad", "awful", "dull", "boring", "poor"]
FILLER = ["the", "a", "movie", "film", "is", "was", "very", "quite", "and", "plot"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_tiny_bert(folder: Path, *, architecture: str = "BertModel") -> Path:
    """A randomly initialised tiny BERT and its tokenizer, saved as save_pretrained saves them."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {w: i for i, w in enumerate([*SPECIALS, *GOOD, *BAD, *FILLER])}
    transformers.BertTokenizer(vocab=vocab).save_pretrained(folder)
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        cls = getattr(transformers, architecture)
        kwargs = {"num_labels": 2} if "Sequence" in architecture else {}
        if kwargs:
            config.num_labels = 2
        cls(config).save_pretrained(folder)
    return folder


def review_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` short reviews: a good word means label "pos", a bad one "neg"."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        words = GOOD if i % 2 == 0 else BAD
        pick = [FILLER[int(j)] for j in torch.randint(len(FILLER), (3,), generator=g)]
        pick.insert(int(torch.randint(4, (1,), generator=g)), words[i // 2 % len(words)])
        rows.append({"text": " ".join(pick), "label": "pos" if i % 2 == 0 else "neg"})
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("hf") / "tiny-bert")


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "reviews.csv", review_rows(120))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any network connection fails the test."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the hf task tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    yield


def test_builds_offline_with_string_labels_and_made_splits(
    bert_dir: Path, csv_file: Path, offline: None
) -> None:
    task = load_task(ENTRY, {"model": str(bert_dir), "data": str(csv_file), "seq_len": 16})
    assert task.info["labels"] == ["neg", "pos"]  # type: ignore[attr-defined]
    assert (task.info["n_train"], task.info["n_val"], task.info["n_test"]) == (96, 12, 12)  # type: ignore[attr-defined]
    model = task.build_model()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names[0].startswith("encoder.embeddings.")
    assert not any("pooler" in n for n in names)
    batch = next(iter(task.val_batches(8)))
    assert model.eval()(batch["input_ids"], batch["attention_mask"]).shape == (8, 2)


def test_layer_by_layer_forward_is_the_encoders_own(bert_dir: Path, csv_file: Path) -> None:
    task = load_task(ENTRY, {"model": str(bert_dir), "data": str(csv_file), "seq_len": 16})
    assert isinstance(task, StagedTask)
    model: Any = task.build_model().eval()
    assert task.stages(model) == [
        "encoder.embeddings",
        "encoder.encoder.layer.0",
        "encoder.encoder.layer.1",
        "head",
    ]
    batch = next(iter(task.val_batches(6)))
    own = model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
    pooled = (own * batch["attention_mask"][..., None]).sum(1) / batch["attention_mask"].sum(
        1, keepdim=True
    )
    with torch.no_grad():
        assert torch.allclose(
            model(batch["input_ids"], batch["attention_mask"]), model.head(pooled), atol=1e-5
        )


def test_depth_and_name_groups_cover_the_model(bert_dir: Path, csv_file: Path) -> None:
    task = load_task(ENTRY, {"model": str(bert_dir), "data": str(csv_file), "seq_len": 16})
    model = task.build_model()
    assert resolve_groups(model, auto_depth=2).names == (
        "encoder.embeddings",
        "encoder.encoder",
        "head",
    )
    assert "encoder.encoder.layer.1" in resolve_groups(model, auto_depth=4).names
    named = resolve_groups(
        model,
        {
            "embeddings": ["encoder.embeddings"],
            "layer_0": ["encoder.encoder.layer.0"],
            "layer_1": ["encoder.encoder.layer.1"],
            "head": ["head"],
        },
    )
    assert named.names == ("embeddings", "layer_0", "layer_1", "head")


def test_given_splits_by_column_and_by_file(bert_dir: Path, tmp_path: Path) -> None:
    rows = review_rows(40)
    for i, row in enumerate(rows):
        row["split"] = "validation" if i < 10 else "train"
    by_column = load_task(
        ENTRY,
        {
            "model": str(bert_dir),
            "data": str(write_csv(tmp_path / "all.csv", rows)),
            "split_column": "split",
            "seq_len": 16,
        },
    )
    assert (by_column.info["n_train"], by_column.info["n_val"]) == (30, 10)  # type: ignore[attr-defined]
    jsonl = tmp_path / "val.jsonl"
    jsonl.write_text("\n".join(json.dumps({"t": r["text"], "y": r["label"]}) for r in rows[:7]))
    train = tmp_path / "train.csv"
    write_csv(train, [{"t": r["text"], "y": r["label"]} for r in rows[7:]])
    by_file = load_task(
        ENTRY,
        {
            "model": str(bert_dir),
            "data": str(train),
            "val_data": str(jsonl),
            "text_column": "t",
            "label_column": "y",
            "labels": ["pos", "neg"],
            "seq_len": 16,
        },
    )
    assert by_file.info["labels"] == ["pos", "neg"]  # type: ignore[attr-defined]
    assert (by_file.info["n_train"], by_file.info["n_val"]) == (33, 7)  # type: ignore[attr-defined]
    assert int(next(iter(by_file.val_batches(100)))["labels"].sum()) == 3  # 3 "neg" of 7 -> id 1


def test_sequence_classification_folder_is_used_as_such(tmp_path: Path, csv_file: Path) -> None:
    folder = write_tiny_bert(tmp_path / "seq", architecture="BertForSequenceClassification")
    task = load_task(ENTRY, {"model": str(folder), "data": str(csv_file), "seq_len": 16})
    assert task.info["head_kind"] == "sequence_classification"  # type: ignore[attr-defined]
    model = task.build_model()
    assert "model.classifier.weight" in dict(model.named_parameters())
    batch = next(iter(task.train_batches(4, torch.Generator().manual_seed(0))))
    task.loss(model, batch).backward()


def test_other_encoders_run_whole(tmp_path: Path, csv_file: Path) -> None:
    folder = tmp_path / "distil"
    folder.mkdir()
    vocab = {w: i for i, w in enumerate([*SPECIALS, *GOOD, *BAD, *FILLER])}
    transformers.BertTokenizer(vocab=vocab).save_pretrained(folder)
    config = transformers.DistilBertConfig(
        vocab_size=len(vocab), dim=32, n_layers=2, n_heads=2, hidden_dim=64
    )
    transformers.DistilBertModel(config).save_pretrained(folder)
    task: Any = load_task(ENTRY, {"model": str(folder), "data": str(csv_file), "seq_len": 16})
    assert task.info["staged"] is False
    model = task.build_model()
    assert task.stages(model) == []
    assert "encoder.transformer.layer.1" in resolve_groups(model, auto_depth=4).names
    batch = next(iter(task.train_batches(8, torch.Generator().manual_seed(0))))
    task.loss(model, batch).backward()
    assert model.head.weight.grad is not None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "bert-base-uncased"}, "does not exist"),
        ({"model": "."}, "not a Hugging Face model folder"),
        ({"data": "nowhere.csv"}, "does not exist"),
        ({"text_column": "review"}, "has no column 'review'"),
        ({"labels": ["pos", "negative"]}, "unknown label(s) 'neg'"),
        ({"val_fraction": 0.001}, "validation split is empty"),
        ({"val_fraction": 0.0}, "the val split is empty"),
        ({"seq_len": 1000}, "seq_len=1000 is out of range"),
        ({"head": "cls"}, "head must be one of"),
    ],
)
def test_bad_kwargs_get_one_clear_error(
    bert_dir: Path, csv_file: Path, change: dict[str, Any], message: str
) -> None:
    kwargs = {"model": str(bert_dir), "data": str(csv_file), "seq_len": 16, **change}
    with pytest.raises(TaskError) as info:
        load_task(ENTRY, kwargs)
    assert message in str(info.value)
    assert str(info.value).startswith("text_classification: ")


def test_a_study_file_runs_through_the_cli(bert_dir: Path, csv_file: Path, tmp_path: Path) -> None:
    study = tmp_path / "hf.toml"
    study.write_text(
        f"""
[study]
name = "hf-tiny"
n_trials = 3
seed = 0

[task]
entry = "{ENTRY}"
kwargs = {{ model = {json.dumps(str(bert_dir))}, data = {json.dumps(str(csv_file))}, seq_len = 16 }}

[groups]
embeddings = ["encoder.embeddings"]
layers = ["encoder.encoder.layer.*"]
head = ["head"]

[space]
lr = [1e-4, 1e-2]
lr_ranges = {{ head = [1e-3, 1e-1] }}
freeze = ["embeddings"]

[train]
epochs = 2
batch_size = 16
prefix_cache = true
""",
        encoding="utf-8",
    )
    db = f"sqlite:///{tmp_path / 'hf.db'}"
    result = CliRunner().invoke(main, ["run", str(study), "--storage", db, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    best = CliRunner().invoke(
        main, ["best", "--study", "hf-tiny", "--storage", db, "--format", "json"]
    )
    assert best.exit_code == 0, best.output
    record = json.loads(best.output)
    assert set(record["lrs"]) == {"embeddings", "layers", "head"}
    assert 0.0 <= record["value"] <= 1.0


def test_without_transformers_the_error_says_what_to_install(
    bert_dir: Path, csv_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def no_transformers(name: str, *args: Any) -> Any:
        return None if name == "transformers" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", no_transformers)
    with pytest.raises(TaskError) as info:
        load_task(ENTRY, {"model": str(bert_dir), "data": str(csv_file)})
    assert 'pip install "lrsearch[hf]"' in str(info.value)

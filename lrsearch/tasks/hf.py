"""A no-code task: any local Hugging Face text model on a table of texts and labels.

``entry = "lrsearch.tasks.hf:text_classification"`` with ``kwargs = { model = "path/to/folder",
data = "reviews.csv" }`` searches per-group rates for a model folder (``config.json``, the weights,
the tokenizer files) on a CSV/TSV/JSONL/Parquet file of text and label columns. Nothing is ever
fetched: the folder must be local, and transformers reads it with ``local_files_only``. Needs
``pip install "lrsearch[hf]"`` (transformers).

- **Model.** ``head = "mean_pool"``: the encoder (``AutoModel``) under a fresh, seeded linear
  ``head`` over the mean of its token states (padding masked out); a pooler the encoder may have is
  left out (BERT's is not even built): mean pooling never calls it, so it would sit in a group
  without a gradient. ``head = "sequence_classification"``: ``AutoModelForSequenceClassification``
  with ``num_labels`` classes (its classifier fresh where the folder's does not fit), under
  ``model.``. ``"auto"`` (the default) takes the latter when the folder's config names a
  ``...ForSequenceClassification`` architecture.
- **Parameter names.** With mean pooling on a BERT-style encoder (``embeddings`` and
  ``encoder.layer``, checked to give the encoder's own outputs), exactly those of the built-in
  MiniLM task: ``encoder.embeddings.*``, ``encoder.encoder.layer.<i>.*``, ``head.*``; so
  ``[groups] auto_depth = 2`` gives embeddings / layers / head, ``auto_depth = 4`` one group per
  layer (and per embedding table), and ``lrsearch init`` suggests named groups. Such a model has
  the ``StagedTask`` capability (its stages: the embeddings, each layer, the head), so a frozen
  prefix runs without autograd and ``[train] prefix_cache = true`` applies. Other encoders run as
  a whole (no stages): ``encoder.<the model's own names>``, ``head.*``.
- **Labels.** Any values (strings or integers). Without ``labels`` the classes are every value
  seen, sorted (integers by value, so labels ``0..K-1`` keep their ids); with it, that order, and a
  value outside it is an error. ``info["labels"]`` lists the classes in id order.
- **Splits.** Made: rows shuffled by ``seed``, ``test_fraction`` of them for test, ``val_fraction``
  for validation, the rest for training. Given: ``split_column`` (values ``train``, ``val`` or
  ``validation``, ``test``), or ``val_data`` / ``test_data`` files (then ``data`` is all training
  rows). The search evaluates on ``val``; ``eval_split = "test"`` scores on test instead.
- **Tokens.** Tokenised once per process and argument set with the folder's own tokenizer, to
  ``seq_len`` tokens, then each batch cut to its longest text (as the MiniLM task does).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrsearch.errors import TaskError
from lrsearch.tasks._data import (
    EVAL_SPLITS,
    MAX_SEED,
    SPLITS,
    LabelMap,
    check_choice,
    check_fraction,
    check_int,
    check_nonempty,
    encode_texts,
    existing_path,
    plain,
    read_table,
    split_column_rows,
    split_rows,
)
from lrsearch.tasks.text import MiniLMClassifier, TextClassificationTask, _mean_pool, _run_layers

INSTALL_HINT = 'pip install "lrsearch[hf]"'
HEADS = ("auto", "mean_pool", "sequence_classification")
_NAME = "text_classification"
_HEAD_STREAM = 1  # the fresh head's seed is derived from the split's, never equal to it
_MIN_SEQ_LEN = 2


class PooledEncoder(nn.Module):
    """Any encoder under a linear ``head`` over its mean-pooled token states (no stages)."""

    def __init__(self, encoder: nn.Module, hidden: int, n_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        logits: torch.Tensor = self.head(_mean_pool(states, attention_mask))
        return logits


class SequenceClassifier(nn.Module):
    """An ``AutoModelForSequenceClassification`` called as the text task calls its models."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(input_ids=input_ids, attention_mask=attention_mask)[0]
        return logits


def text_classification(
    *,
    model: str,
    data: str,
    text_column: str = "text",
    label_column: str = "label",
    labels: list[Any] | None = None,
    val_data: str | None = None,
    test_data: str | None = None,
    split_column: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seq_len: int = 128,
    head: str = "auto",
    seed: int = 0,
    eval_split: str = "val",
) -> TextClassificationTask:
    """A local Hugging Face model folder fine-tuned to classify the texts of a table.

    Args:
        model: A local folder holding ``config.json``, the weights and the tokenizer files.
        data: A CSV/TSV/JSONL/Parquet file with ``text_column`` and ``label_column``; every split
            unless ``split_column`` or ``val_data`` / ``test_data`` say otherwise.
        text_column, label_column: The columns of the text and of its label.
        labels: The class names in id order (default: every label seen, sorted).
        val_data, test_data: Separate files for those splits (then ``data`` is training only).
        split_column: A column naming each row's split (``train``, ``val``, ``test``).
        val_fraction, test_fraction: Shares of ``data`` for the made splits, in [0, 1).
        seq_len: Tokens per text (longer ones are truncated), up to the model's positions.
        head: ``"auto"``, ``"mean_pool"`` or ``"sequence_classification"`` (module docstring).
        seed: Shuffles the made splits and seeds the fresh head.
        eval_split: ``"val"`` (the search), or ``"test"`` to score a winner on held-out rows.

    Returns:
        A task scored by accuracy; ``info`` holds the classes, split sizes and the model.

    Raises:
        TaskError: A bad argument, path, column or label, an empty split, or transformers
            missing; one message naming the problem and the fix.
    """
    check_int(_NAME, "seed", seed, 0, MAX_SEED)
    check_choice(_NAME, "head", head, HEADS)
    check_choice(_NAME, "eval_split", eval_split, EVAL_SPLITS)
    for name, column in (("text_column", text_column), ("label_column", label_column)):
        if not isinstance(column, str) or not column:
            raise TaskError(f"{_NAME}: {name} must be a column name, got {column!r}")
    folder = _model_folder(model)
    config = _config(str(folder))
    max_len = int(getattr(config, "max_position_embeddings", 0) or 0) or 4096
    check_int(_NAME, "seq_len", seq_len, _MIN_SEQ_LEN, max_len, why="the model's positions")
    texts, values = _read_splits(
        data,
        text_column=text_column,
        label_column=label_column,
        val_data=val_data,
        test_data=test_data,
        split_column=split_column,
        val_fraction=check_fraction(_NAME, "val_fraction", val_fraction),
        test_fraction=check_fraction(_NAME, "test_fraction", test_fraction),
        seed=seed,
    )
    check_nonempty(_NAME, {s: len(t) for s, t in texts.items()}, eval_split=eval_split)
    label_map = LabelMap.build(_NAME, [v for s in SPLITS for v in values[s]], labels)
    ids = {s: label_map.ids(_NAME, values[s], f"the {s} split") for s in SPLITS}
    if head == "auto":
        archs = getattr(config, "architectures", None) or []
        head = (
            "sequence_classification"
            if any(str(a).endswith("ForSequenceClassification") for a in archs)
            else "mean_pool"
        )
    tokenizer = _tokenizer(str(folder))
    train = encode_texts(tokenizer, texts["train"], ids["train"], seq_len, by_length=False)
    evaluated = encode_texts(tokenizer, texts[eval_split], ids[eval_split], seq_len, by_length=True)
    n_classes = len(label_map.classes)
    probe = _base_model(str(folder), head, n_classes, seed)
    info: dict[str, Any] = {
        "labels": list(label_map.classes),
        "n_classes": n_classes,
        **{f"n_{s}": len(texts[s]) for s in SPLITS},
        "eval_split": eval_split,
        "seq_len": seq_len,
        "model_dir": str(folder),
        "model_type": str(getattr(config, "model_type", "")),
        "head_kind": head,
        "head": "model.classifier" if head == "sequence_classification" else "head",
        "staged": isinstance(probe, MiniLMClassifier),
        "n_params": sum(p.numel() for p in probe.parameters() if p.requires_grad),
        "chance_accuracy": 1 / n_classes,
    }
    return TextClassificationTask(
        model_fn=functools.partial(_build_model, str(folder), head, n_classes, seed),
        train=train,
        val=evaluated,
        info=info,
    )


def _model_folder(model: object) -> Path:
    if importlib.util.find_spec("transformers") is None:
        raise TaskError(f"{_NAME} needs transformers, which is not installed: {INSTALL_HINT}")
    folder = existing_path(_NAME, "model", model)
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise TaskError(
            f"{_NAME}: model {str(folder)!r} is not a Hugging Face model folder (no config.json "
            "in it); give a local folder written by save_pretrained (nothing is downloaded)"
        )
    return folder


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' load reports and progress bars off, restored after."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


@functools.cache
def _config(folder: str) -> Any:
    from transformers import AutoConfig

    try:
        with _quiet_transformers():
            return AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError ...
        raise TaskError(f"{_NAME}: cannot read the config of model folder {folder}: {e}") from e


@functools.cache
def _tokenizer(folder: str) -> Any:
    from transformers import AutoTokenizer

    try:
        with _quiet_transformers():
            return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as e:
        raise TaskError(
            f"{_NAME}: cannot load a tokenizer from {folder} ({e}); save one there with "
            "tokenizer.save_pretrained(folder)"
        ) from e


def _read_splits(
    data: object,
    *,
    text_column: str,
    label_column: str,
    val_data: object,
    test_data: object,
    split_column: str | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> tuple[dict[str, list[str]], dict[str, list[Any]]]:
    """Texts and raw label values of each split."""
    columns = [text_column, label_column, *([split_column] if split_column else [])]
    frames = {"train": read_table(_NAME, "data", existing_path(_NAME, "data", data), columns)}
    for split, path in (("val", val_data), ("test", test_data)):
        if path is not None:
            frames[split] = read_table(
                _NAME, f"{split}_data", existing_path(_NAME, f"{split}_data", path), columns[:2]
            )
    if split_column is not None and len(frames) > 1:
        raise TaskError(f"{_NAME}: give split_column or val_data/test_data, not both")
    for split, frame in frames.items():
        empty = int(frame[text_column].isna().sum() + frame[label_column].isna().sum())
        if empty:
            raise TaskError(
                f"{_NAME}: {empty} row(s) of the {split} data have no {text_column!r} or "
                f"{label_column!r}; drop or fill them"
            )
    whole = frames["train"]
    texts_all = [str(t) for t in whole[text_column].tolist()]
    values_all = [plain(v) for v in whole[label_column].tolist()]
    if split_column is not None:
        rows = split_column_rows(_NAME, whole[split_column].tolist(), split_column)
    elif len(frames) > 1:
        rows = {"train": torch.arange(len(whole))}
    else:
        rows = split_rows(
            _NAME, len(whole), val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
        )
    texts: dict[str, list[str]] = {}
    values: dict[str, list[Any]] = {}
    for split in SPLITS:
        if split in rows:
            idx = rows[split].tolist()
            texts[split] = [texts_all[i] for i in idx]
            values[split] = [values_all[i] for i in idx]
        elif split in frames:
            texts[split] = [str(t) for t in frames[split][text_column].tolist()]
            values[split] = [plain(v) for v in frames[split][label_column].tolist()]
        else:
            texts[split], values[split] = [], []
    return texts, values


@functools.cache
def _base_model(folder: str, head: str, n_classes: int, seed: int) -> nn.Module:
    """The model with its fresh head, read once per process; ``_build_model`` copies it."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    config = _config(folder)
    try:
        with _quiet_transformers(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 2 + _HEAD_STREAM)  # the fresh head, the same every call
            if head == "sequence_classification":
                return SequenceClassifier(
                    AutoModelForSequenceClassification.from_pretrained(
                        folder,
                        local_files_only=True,
                        num_labels=n_classes,
                        ignore_mismatched_sizes=True,
                    )
                ).float()
            extra: dict[str, Any] = (
                {"add_pooling_layer": False} if config.model_type == "bert" else {}
            )
            encoder = AutoModel.from_pretrained(folder, local_files_only=True, **extra).float()
            hidden = _hidden_size(config)
            if _runs_layer_by_layer(encoder):
                return MiniLMClassifier(encoder, hidden, n_classes)
            pooler = getattr(encoder, "pooler", None)
            if isinstance(pooler, nn.Module):  # never called under mean pooling: not trained
                pooler.requires_grad_(False)
            return PooledEncoder(encoder, hidden, n_classes)
    except TaskError:
        raise
    except Exception as e:
        raise TaskError(f"{_NAME}: cannot load the model in {folder}: {e}") from e


def _hidden_size(config: Any) -> int:
    for key in ("hidden_size", "d_model", "dim"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise TaskError(
        f"{_NAME}: the model's config has no hidden_size; use head = 'sequence_classification'"
    )


def _runs_layer_by_layer(encoder: nn.Module) -> bool:
    """Whether the MiniLM task's layer-by-layer forward gives this encoder's own token states.

    Checked on a small input with padding (eval mode, so no dropout): only then may the model be
    cut into stages.
    """
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if not isinstance(getattr(encoder, "embeddings", None), nn.Module) or not isinstance(
        layers, nn.ModuleList
    ):
        return False
    vocab = int(getattr(encoder.config, "vocab_size", 2) or 2)
    ids = torch.arange(8).remainder(vocab).view(2, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            own = encoder(input_ids=ids, attention_mask=mask)[0]
            states = encoder.embeddings(input_ids=ids)  # type: ignore[operator]
            by_layer = _run_layers(encoder.config, layers, states, mask)
        keep = mask.bool()
        return bool(torch.allclose(own[keep], by_layer[keep], atol=1e-4, rtol=1e-4))
    except Exception:  # any other calling convention: run it whole
        return False
    finally:
        encoder.train(was_training)


def _build_model(folder: str, head: str, n_classes: int, seed: int) -> nn.Module:
    """A fresh copy of the loaded model and head, in train mode."""
    return copy.deepcopy(_base_model(folder, head, n_classes, seed)).train()

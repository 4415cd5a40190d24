"""What the tasks share: argument checks (also of the built-in tasks), tables, labels, splits.

A split is made (a seeded shuffle cut by fractions) or given (a column naming each row's split,
or separate files); labels may be strings, mapped to class ids in a sorted, stated order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lrsearch.errors import TaskError

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train",
    "val": "val",
    "validation": "val",
    "valid": "val",
    "test": "test",
}
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".pq")
EVAL_SPLITS = ("val", "test")
MAX_SEED = 2**32 - 1


def check_int(task: str, name: str, value: object, low: int, high: int, *, why: str = "") -> int:
    """``value`` if it is an int in ``[low, high]``, else ``TaskError`` naming ``task``."""
    context = f" ({why})" if why else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TaskError(
            f"{task}: {name} must be an integer in [{low}, {high}]{context}, got {value!r}"
        )
    if not low <= value <= high:
        raise TaskError(
            f"{task}: {name}={value} is out of range; it must be in [{low}, {high}]{context}"
        )
    return value


def check_fraction(task: str, name: str, value: object) -> float:
    """``value`` as a float in ``[0, 1)``, else ``TaskError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise TaskError(f"{task}: {name} must be a number in [0, 1), got {value!r}")
    return float(value)


def check_choice(task: str, name: str, value: object, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else ``TaskError``."""
    if not isinstance(value, str) or value not in choices:
        raise TaskError(f"{task}: {name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def existing_path(task: str, name: str, value: object) -> Path:
    """``value`` as a path that exists, else ``TaskError``."""
    if not isinstance(value, (str, Path)) or not str(value):
        raise TaskError(f"{task}: {name} must be a path (a string), got {value!r}")
    path = Path(value).expanduser()
    if not path.exists():
        raise TaskError(f"{task}: {name} {str(path)!r} does not exist; fix the path")
    return path


def read_table(task: str, name: str, path: Path, columns: Sequence[str]) -> Any:
    """A CSV/TSV/JSONL/Parquet file as a pandas DataFrame holding ``columns``.

    Raises:
        TaskError: An unknown suffix, an unreadable file, or a missing column (naming the ones
            the file has).
    """
    import pandas as pd  # heavy; only the no-code tasks read tables

    suffix = path.suffix.lower()
    if path.is_dir() or suffix not in TABLE_SUFFIXES:
        raise TaskError(
            f"{task}: {name} {str(path)!r} must be a file ending in {', '.join(TABLE_SUFFIXES)}"
        )
    try:
        if suffix in (".csv", ".tsv"):
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        elif suffix in (".jsonl", ".json"):
            frame = pd.read_json(path, lines=suffix == ".jsonl")
        else:
            frame = pd.read_parquet(path)
    except ImportError as e:
        raise TaskError(
            f'{task}: reading {path} needs pyarrow ({e}); pip install "lrsearch[parquet]"'
        ) from e
    except Exception as e:  # pandas raises many kinds for a malformed file
        raise TaskError(f"{task}: cannot read {name} {str(path)!r}: {e}") from e
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TaskError(
            f"{task}: {name} {str(path)!r} has no column {', '.join(map(repr, missing))}; its "
            f"columns are {', '.join(map(str, frame.columns))}"
        )
    return frame


def split_rows(
    task: str, n: int, *, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, torch.Tensor]:
    """Row indices of each split: a shuffle by ``seed``, test first, then val, then train."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    if val_fraction > 0 and n_val == 0:
        raise TaskError(
            f"{task}: the validation split is empty ({n} rows x val_fraction {val_fraction}); "
            "raise val_fraction or add rows"
        )
    if n - n_test - n_val < 1:
        raise TaskError(
            f"{task}: no rows left for training ({n} rows, val_fraction {val_fraction}, "
            f"test_fraction {test_fraction}); lower the fractions or add rows"
        )
    return {
        "test": order[:n_test],
        "val": order[n_test : n_test + n_val],
        "train": order[n_test + n_val :],
    }


def split_column_rows(task: str, values: Sequence[Any], column: str) -> dict[str, torch.Tensor]:
    """Row indices of each split named by a column (``train``, ``val``/``validation``, ``test``)."""
    names = [SPLIT_ALIASES.get(str(v).strip().lower()) for v in values]
    bad = sorted({str(v) for v, s in zip(values, names, strict=True) if s is None})
    if bad:
        raise TaskError(
            f"{task}: split column {column!r} has value(s) {', '.join(map(repr, bad[:5]))}; "
            f"use {', '.join(SPLIT_ALIASES)}"
        )
    return {
        s: torch.tensor([i for i, n in enumerate(names) if n == s], dtype=torch.long)
        for s in SPLITS
    }


@dataclass(frozen=True)
class LabelMap:
    """Class names in id order; a label value maps to its name's index."""

    classes: tuple[str, ...]

    @classmethod
    def build(cls, task: str, values: Sequence[Any], given: object = None) -> LabelMap:
        """The classes ``given`` (a list, in that order), or every value seen, sorted.

        Integers sort by value (labels 0..K-1 keep their ids), anything else as text.
        """
        if given is not None:
            if not isinstance(given, list) or len(given) < 2:
                raise TaskError(
                    f"{task}: labels must be a list of at least two class names, got {given!r}"
                )
            names = tuple(str(v) for v in given)
            if len(set(names)) != len(names):
                raise TaskError(f"{task}: labels names a class twice: {list(names)}")
            return cls(names)
        distinct = set(values)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in distinct):
            ordered = [str(v) for v in sorted(distinct)]
        else:
            ordered = sorted({str(v) for v in distinct})
        if len(ordered) < 2:
            raise TaskError(
                f"{task}: the data has {len(ordered)} class(es) ({ordered}); classification needs "
                "at least two"
            )
        return cls(tuple(ordered))

    def ids(self, task: str, values: Sequence[Any], where: str) -> torch.Tensor:
        """The class ids of ``values``; ``TaskError`` naming any label not in the classes."""
        index = {name: i for i, name in enumerate(self.classes)}
        unknown = sorted({str(v) for v in values if str(v) not in index})
        if unknown:
            raise TaskError(
                f"{task}: {where} has unknown label(s) {', '.join(map(repr, unknown[:5]))}; the "
                f"classes are {list(self.classes)} (fix the data or the labels argument)"
            )
        return torch.tensor([index[str(v)] for v in values], dtype=torch.long)


def plain(value: Any) -> Any:
    """A numpy/pandas scalar as the Python value it holds (``numpy.int64(3)`` -> ``3``)."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def check_nonempty(task: str, sizes: dict[str, int], *, eval_split: str) -> None:
    """``TaskError`` when training, or the split evaluated, has no rows."""
    for split in ("train", eval_split):
        if sizes.get(split, 0) == 0:
            raise TaskError(
                f"{task}: the {split} split is empty; give it rows (a split column value, a "
                f"{split}_data file, or a {split}_fraction above 0)"
            )


def encode_texts(
    tokenizer: Any, texts: Sequence[str], labels: torch.Tensor, seq_len: int, *, by_length: bool
) -> dict[str, torch.Tensor]:
    """Texts tokenised to ``seq_len`` (truncated, padded), with their labels.

    With ``by_length`` the rows are sorted by length (evaluation order is free: each batch is
    then cut to about its own texts' length instead of the longest of a random lot).
    """
    enc = tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=seq_len,
        return_tensors="pt",
    )
    split = {
        "input_ids": enc["input_ids"].long(),
        "attention_mask": enc["attention_mask"].long(),
        "labels": labels,
    }
    if by_length:
        order = torch.argsort(split["attention_mask"].sum(dim=1), stable=True)
        split = {name: t[order] for name, t in split.items()}
    return split

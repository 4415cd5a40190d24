"""A trial's frozen prefix: run without autograd, and its outputs computed once per study.

A task with the ``StagedTask`` capability (``lrsearch.tasks``) names its model's stages in forward
order. The *frozen prefix* of a trial is the run of stages, from the first, whose parameters are
all frozen (lr 0, or ``requires_grad=False`` already); it ends at the first stage with a trained
parameter. A trained parameter outside every stage could be used anywhere, so it leaves no prefix.

- **Freeze-aware execution.** The prefix runs under ``torch.no_grad`` and the rest of the model
  (``task.rest``) on its output, so backward stops at the first trained stage. Not
  ``inference_mode``: its outputs could not be saved for the backward of the first trained stage.
- **The feature cache** (``[train] prefix_cache = true``). The prefix's outputs for every training
  and validation example are computed once and reused by every later trial with the same key. It
  applies only where they cannot differ from trial to trial: the task declares its batches
  deterministic, no BatchNorm in the prefix follows the data (``freeze_batchnorm = false``), and
  the prefix runs in eval mode (dropout off) in every trial with the option on, cached or not, so
  that a trial's result does not depend on whether the cache held its entry.
- **Keys.** The task's ``fingerprint()`` (a digest of its examples; without one, the task object
  itself, and the entry stays in memory), a digest of the prefix's parameters and buffers, the
  prefix's stage paths, the precision and the device. The training outputs are stored per example
  index, so each trial's own shuffle gathers its batches from them.
- **Size.** Entries live in one process-wide, least-recently-used store of at most
  ``[train] cache_mb``; outputs larger than that are not cached (said once in a log line) and the
  trial runs the prefix itself. ``[train] cache_dir`` also keeps entries on disk (``torch.save``
  of tensors only, read back with ``weights_only=True``), shared by the processes of a machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrsearch.errors import TaskError
from lrsearch.groups import matches
from lrsearch.tasks import Batch, StagedTask, digest_tensors

_log = logging.getLogger("lrsearch")
_FORMAT = "lrsearch-prefix-1"  # part of every key: a new layout never reads an old file
_MISSING = object()


def staged(task: object) -> StagedTask | None:
    """``task`` when it has the ``StagedTask`` capability, else ``None``."""
    return task if isinstance(task, StagedTask) else None


def frozen_prefix(task: StagedTask, model: nn.Module) -> tuple[str, ...]:
    """The stage paths of ``model``'s frozen prefix (empty: none), from ``requires_grad``.

    Raises:
        TaskError: A stage path names no module of ``model``.
    """
    stages = tuple(task.stages(model))
    if not stages:
        return ()
    for path in stages:
        try:
            model.get_submodule(path)
        except AttributeError as e:
            raise TaskError(
                f"task stage {path!r} is not a module of {type(model).__name__}; "
                "fix the task's stages()"
            ) from e
    first_trained = len(stages)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        where = next((i for i, path in enumerate(stages) if matches(name, path)), None)
        if where is None:
            return ()  # trained outside every stage: it could feed the first stage
        first_trained = min(first_trained, where)
    if first_trained == len(stages):
        return ()  # nothing trains: the trainer only evaluates
    return stages[:first_trained]


def cache_blocker(
    task: StagedTask, modules: Sequence[nn.Module], frozen_norms: Iterable[nn.Module]
) -> str | None:
    """Why the prefix's outputs may differ between trials (so cannot be cached), or ``None``."""
    if not getattr(task, "deterministic_batches", False):
        return "the task's batches are not deterministic (augmentation?)"
    kept = {id(m) for m in frozen_norms}
    for module in modules:
        for sub in module.modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm) and id(sub) not in kept:
                return "a BatchNorm layer in it follows the data ([train] freeze_batchnorm = false)"
    return None


# --- per-example feature tables -------------------------------------------------------------


def _map(batch: Batch, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
    if batch is None:  # no validation examples
        return None
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, dict):
        return {k: _map(v, fn) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_map(v, fn) for v in batch)
    raise TaskError(
        f"run_prefix returned a {type(batch).__name__}; the prefix cache stores tensors, and "
        "tuples, lists and dicts of them"
    )


def _tensors(batch: Batch) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        found.append(t)
        return t

    _map(batch, keep)
    return found


def _cat(parts: list[Batch]) -> Batch:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {k: _cat([p[k] for p in parts]) for k in first}
    return type(first)(_cat([p[i] for p in parts]) for i in range(len(first)))


def rows(batch: Batch) -> int:
    sizes = {t.shape[0] if t.dim() else -1 for t in _tensors(batch)}
    if len(sizes) != 1 or -1 in sizes:
        raise TaskError(
            "every tensor that run_prefix returns must have the examples along dimension 0; "
            f"got leading sizes {sorted(sizes)}"
        )
    return sizes.pop()


def take(table: Batch, idx: torch.Tensor) -> Batch:
    """The examples ``idx`` of a feature table, as one batch."""
    return _map(table, lambda t: t.index_select(0, idx.to(t.device)))


def slices(table: Batch, size: int) -> Iterator[Batch]:
    """A feature table in batches of ``size``, in order."""
    if table is None:
        return
    n = rows(table)
    for start in range(0, n, size):
        yield _map(table, lambda t: t.narrow(0, start, min(size, n - start)))  # noqa: B023


@dataclass(frozen=True)
class Features:
    """The prefix's outputs: ``train`` in example-index order, ``val`` in ``val_batches`` order."""

    train: Batch
    val: Batch

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in _tensors((self.train, self.val)))


def compute_features(
    task: StagedTask,
    model: nn.Module,
    upto: int,
    *,
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    move: Callable[[Batch, torch.device], Batch],
    limit_bytes: int,
) -> Features | None:
    """Run the prefix (in whatever mode it is in) over every example; ``None`` past the limit.

    Raises:
        TaskError: ``train_indices`` does not cover the training examples once each, or does not
            match ``train_batches``.
    """
    used = 0
    parts: list[Batch] = []
    order: list[torch.Tensor] = []
    # Both draw from a generator seeded alike: the same shuffle, so index i goes with batch i.
    indices = task.train_indices(batch_size, torch.Generator().manual_seed(0))
    batches = task.train_batches(batch_size, torch.Generator().manual_seed(0))
    disagree = TaskError(
        "the task's train_indices() and train_batches() disagree (other batch sizes or counts); "
        "they must yield the same examples in the same order"
    )
    with torch.no_grad(), autocast():
        for split in ("train", "val"):
            source: Iterable[tuple[Any, Batch]] = (
                zip_longest(indices, batches, fillvalue=_MISSING)
                if split == "train"
                else ((None, b) for b in task.val_batches(batch_size))
            )
            split_parts: list[Batch] = []
            for idx, batch in source:
                if idx is _MISSING or batch is _MISSING:
                    raise disagree
                out = task.run_prefix(model, move(batch, device), upto)
                if idx is not None and rows(out) != len(idx):
                    raise disagree
                used += sum(t.numel() * t.element_size() for t in _tensors(out))
                if used > limit_bytes:
                    return None
                split_parts.append(out)
                if idx is not None:
                    order.append(idx)
            parts.append(_cat(split_parts) if split_parts else None)
    flat = torch.cat(order) if order else torch.empty(0, dtype=torch.long)
    ranks = torch.argsort(flat)
    if not torch.equal(flat[ranks], torch.arange(len(flat))):
        raise TaskError(
            "the task's train_indices() must yield each index 0..n-1 of the training examples once "
            "per epoch"
        )
    return Features(train=take(parts[0], ranks), val=parts[1])


# --- keys and the store ---------------------------------------------------------------------

# id(task) -> (a weak reference to it, its fingerprint): computed once per task object.
_fingerprints: dict[int, tuple[weakref.ref[Any], str | None]] = {}


def _fingerprint(task: StagedTask) -> str | None:
    cached = _fingerprints.get(id(task))
    if cached is not None and cached[0]() is task:
        return cached[1]
    value = task.fingerprint()
    try:
        key = id(task)
        ref = weakref.ref(task, lambda _: _fingerprints.pop(key, None))
    except TypeError:
        return value
    _fingerprints[key] = (ref, value)
    return value


def weights_digest(modules: Sequence[nn.Module]) -> str:
    """A digest of the parameters and buffers (names, shapes, values) of ``modules``."""
    names: list[str] = []
    tensors: list[torch.Tensor] = []
    for i, module in enumerate(modules):
        for name, t in module.state_dict(keep_vars=False).items():
            names.append(f"{i}.{name}")
            tensors.append(t)
    h = hashlib.blake2b("\n".join(names).encode(), digest_size=16)
    h.update(digest_tensors(*tensors).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """What identifies a prefix's outputs. ``disk`` is false when the task has no fingerprint."""

    digest: str
    device: str
    disk: bool

    @property
    def memory(self) -> str:
        return f"{self.digest}@{self.device}"


def cache_key(
    task: StagedTask,
    model: nn.Module,
    prefix: Sequence[str],
    *,
    precision: str,
    device: torch.device,
) -> CacheKey:
    """The key of ``task``'s prefix outputs for a prefix of ``model`` (its weights as they are)."""
    fingerprint = _fingerprint(task)
    # Without a fingerprint the task object stands for its data; its id is only unique while it
    # lives, so its entries go when it does (``FeatureCache.forget``).
    identity = fingerprint if fingerprint is not None else f"object:{id(task)}"
    modules = [model.get_submodule(p) for p in prefix]
    parts = [_FORMAT, identity, weights_digest(modules), "|".join(prefix), precision]
    digest = hashlib.blake2b("\n".join(parts).encode(), digest_size=16).hexdigest()
    key = CacheKey(digest, str(device), disk=fingerprint is not None)
    if fingerprint is None and key.memory not in CACHE.watched:
        CACHE.watched.add(key.memory)
        with contextlib.suppress(TypeError):  # no weak references: the entry stays until evicted
            weakref.finalize(task, CACHE.forget, key.memory)
    return key


@dataclass(frozen=True)
class CacheInfo:
    hits: int
    misses: int
    entries: int
    nbytes: int


class FeatureCache:
    """A least-recently-used store of ``Features``, bounded in bytes by each caller's limit."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, Features] = OrderedDict()
        self._too_big: dict[str, int] = {}  # key -> the largest limit it did not fit
        self.watched: set[str] = set()  # keys dropped when their task object dies
        self.hits = self.misses = 0

    def info(self) -> CacheInfo:
        return CacheInfo(
            self.hits,
            self.misses,
            len(self._entries),
            sum(f.nbytes for f in self._entries.values()),
        )

    def clear(self) -> None:
        self._entries.clear()
        self._too_big.clear()
        self.hits = self.misses = 0

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)
        self._too_big.pop(key, None)
        self.watched.discard(key)

    def get(self, key: str) -> Features | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: str, features: Features, limit_bytes: int) -> bool:
        size = features.nbytes
        if size > limit_bytes:
            return False
        while self._entries and self.info().nbytes + size > limit_bytes:
            self._entries.popitem(last=False)
        self._entries[key] = features
        return True

    def lookup(
        self,
        key: CacheKey,
        compute: Callable[[], Features | None],
        *,
        limit_bytes: int,
        cache_dir: str | None,
        device: torch.device,
        describe: str,
    ) -> Features | None:
        """The entry of ``key``: from memory, from disk, or computed now; ``None`` if too big."""
        found = self.get(key.memory)
        if found is not None:
            self.hits += 1
            return found
        if limit_bytes <= self._too_big.get(key.memory, -1):
            return None  # known not to fit: computing it again would be wasted
        path = Path(cache_dir) / f"prefix-{key.digest}.pt" if cache_dir and key.disk else None
        if path is not None and path.exists():
            found = _load(path, device)
            if found is not None and self.put(key.memory, found, limit_bytes):
                self.hits += 1
                return found
        self.misses += 1
        found = compute()
        if found is None or not self.put(key.memory, found, limit_bytes):
            self._too_big[key.memory] = limit_bytes
            _log.info(
                "prefix cache: the outputs of %s need more than [train] cache_mb = %d; not cached, "
                "each trial runs it (raise cache_mb to cache them)",
                describe,
                limit_bytes // 2**20,
            )
            return None
        if path is not None:
            _save(path, found)
        return found


CACHE = FeatureCache()
"""The process-wide store every trial of this process shares."""


def cache_info() -> CacheInfo:
    """Hits, misses, entries and bytes of the process-wide prefix cache."""
    return CACHE.info()


def clear_cache() -> None:
    """Empty the process-wide prefix cache (the disk copies stay)."""
    CACHE.clear()


def _save(path: Path, features: Features) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    on_cpu = {
        "train": _map(features.train, torch.Tensor.cpu),
        "val": _map(features.val, torch.Tensor.cpu),
    }
    # Written aside and renamed: a reader in another process never sees half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(on_cpu, tmp)
        os.replace(tmp, path)
    except OSError as e:
        _log.warning("prefix cache: cannot write %s (%s); kept in memory only", path, e)
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _load(path: Path, device: torch.device) -> Features | None:
    try:
        data = torch.load(path, map_location=device, weights_only=True)
        return Features(train=data["train"], val=data["val"])
    except Exception as e:  # a truncated or foreign file: recompute rather than fail the trial
        _log.warning("prefix cache: cannot read %s (%s); computing the outputs again", path, e)
        return None

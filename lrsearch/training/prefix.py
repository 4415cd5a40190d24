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
  itself, and the entry stays in memory), the prefix's stage paths, the precision and the device;
  an entry is taken only when the prefix's parameters and buffers equal those it was computed
  with (compared on the device, no hashing per trial); a disk copy is named by a digest of them.
  The training outputs are stored per example index, so each trial's own shuffle gathers its
  batches from them.
- **Size.** Entries live in the ``Trainer``'s least-recently-used store of at most
  ``[train] cache_mb``, on the trial's device; outputs larger than that are not cached (said once
  in a log line) and the trial runs the prefix itself. ``[train] cache_dir`` also keeps entries on
  disk (``torch.save`` of tensors only, read back with ``weights_only=True``), shared by the
  processes of a machine.
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


def _state(modules: Sequence[nn.Module]) -> list[tuple[str, torch.Tensor]]:
    return [
        (f"{i}.{name}", t.detach())
        for i, module in enumerate(modules)
        for name, t in module.state_dict(keep_vars=True).items()
    ]


def _same_state(a: list[tuple[str, torch.Tensor]], b: list[tuple[str, torch.Tensor]]) -> bool:
    if len(a) != len(b):
        return False
    for (name_a, t_a), (name_b, t_b) in zip(a, b, strict=True):
        if name_a != name_b or t_a.shape != t_b.shape or t_a.dtype != t_b.dtype:
            return False
        if t_a.device != t_b.device or not torch.equal(t_a, t_b):
            return False
    return True


@dataclass
class _Entry:
    """A prefix's outputs, and the prefix weights (the tensors themselves) they came from."""

    state: list[tuple[str, torch.Tensor]]
    features: Features
    digest: str | None = None  # of the weights, computed only for the disk copy


@dataclass(frozen=True)
class CacheInfo:
    hits: int
    misses: int
    entries: int
    nbytes: int


class FeatureCache:
    """Prefix outputs by task, prefix, precision and device; least recently used first out.

    A lookup finds the entries of the same task (its ``fingerprint()``, or the task object while it
    lives), stage paths, precision and device, and takes the one whose prefix weights equal the
    trial's (``torch.equal`` on the device, where both already are): no trial hashes its weights.
    Only a disk copy (``cache_dir``) is named by a digest of the weights, computed once per entry.
    """

    def __init__(self) -> None:
        # (identity, paths, precision, device) -> entries with other weights, newest last.
        self._entries: OrderedDict[tuple[str, ...], list[_Entry]] = OrderedDict()
        self._too_big: dict[tuple[str, ...], int] = {}  # key -> the largest limit it did not fit
        self._fingerprints: dict[int, tuple[weakref.ref[Any], str | None]] = {}
        self._watched: set[int] = set()  # ids of fingerprint-less tasks whose entries go with them
        self.hits = self.misses = 0

    def info(self) -> CacheInfo:
        return CacheInfo(
            self.hits,
            self.misses,
            sum(len(v) for v in self._entries.values()),
            self._nbytes(),
        )

    def _nbytes(self) -> int:
        return sum(e.features.nbytes for v in self._entries.values() for e in v)

    def clear(self) -> None:
        self._entries.clear()
        self._too_big.clear()
        self.hits = self.misses = 0

    def _forget_task(self, identity: str) -> None:
        for key in [k for k in self._entries if k[0] == identity]:
            del self._entries[key]
        for key in [k for k in self._too_big if k[0] == identity]:
            del self._too_big[key]

    def fingerprint(self, task: StagedTask) -> str | None:
        """``task.fingerprint()``, computed once per task object."""
        cached = self._fingerprints.get(id(task))
        if cached is not None and cached[0]() is task:
            return cached[1]
        value = task.fingerprint()
        key = id(task)
        try:
            ref = weakref.ref(task, lambda _: self._fingerprints.pop(key, None))
        except TypeError:
            return value
        self._fingerprints[key] = (ref, value)
        return value

    def _identity(self, task: StagedTask) -> tuple[str, bool]:
        fingerprint = self.fingerprint(task)
        if fingerprint is not None:
            return fingerprint, True
        # The task object stands for its data; its id is unique only while it lives, so its
        # entries go when it does.
        identity = f"object:{id(task)}"
        if id(task) not in self._watched:
            self._watched.add(id(task))
            with contextlib.suppress(TypeError):  # no weak references: kept until evicted
                weakref.finalize(task, self._forget_task, identity)
                weakref.finalize(task, self._watched.discard, id(task))
        return identity, False

    def key(
        self, task: StagedTask, paths: Sequence[str], precision: str, device: torch.device
    ) -> tuple[str, ...]:
        """What an entry is filed under: the task, the prefix's stage paths, precision, device."""
        return (self._identity(task)[0], "|".join(paths), precision, str(device))

    def _put(self, key: tuple[str, ...], entry: _Entry, limit_bytes: int) -> bool:
        size = entry.features.nbytes
        if size > limit_bytes:
            return False
        while self._entries and self._nbytes() + size > limit_bytes:
            oldest = next(iter(self._entries))
            self._entries[oldest].pop(0)
            if not self._entries[oldest]:
                del self._entries[oldest]
        self._entries.setdefault(key, []).append(entry)
        self._entries.move_to_end(key)
        return True

    def lookup(
        self,
        task: StagedTask,
        modules: Sequence[nn.Module],
        paths: Sequence[str],
        compute: Callable[[], Features | None],
        *,
        precision: str,
        limit_bytes: int,
        cache_dir: str | None,
        device: torch.device,
        describe: str,
    ) -> Features | None:
        """The outputs of the prefix ``modules`` (at ``paths``) of ``task``: from memory, from
        disk, or computed now; ``None`` if too big."""
        identity, durable = self._identity(task)
        key = self.key(task, paths, precision, device)
        state = _state(modules)
        for entry in self._entries.get(key, []):
            if _same_state(entry.state, state):
                self._entries.move_to_end(key)
                self.hits += 1
                return entry.features
        if limit_bytes <= self._too_big.get(key, -1):
            return None  # known not to fit: computing it again would be wasted
        path: Path | None = None
        digest: str | None = None
        if cache_dir and durable:
            parts = [_FORMAT, identity, weights_digest(modules), "|".join(paths), precision]
            digest = hashlib.blake2b("\n".join(parts).encode(), digest_size=16).hexdigest()
            path = Path(cache_dir) / f"prefix-{digest}.pt"
            found = _load(path, device) if path.exists() else None
            if found is not None and self._put(key, _Entry(state, found, digest), limit_bytes):
                self.hits += 1
                return found
        self.misses += 1
        found = compute()
        if found is None or not self._put(key, _Entry(state, found, digest), limit_bytes):
            self._too_big[key] = limit_bytes
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


@dataclass
class _Timings:
    started: int = 0
    uncached: float | None = None  # seconds a step, the second trial of the prefix
    cached: float | None = None  # seconds a step, its first cached trial (filled before it ran)
    decided: bool | None = None


class AutoChoice:
    """``[train] prefix_cache = "auto"``: the cache for a prefix only where it is measured to pay.

    Per cache key (task, prefix, precision, device): the first trial runs uncached and is not
    timed (it pays the process's start-up), the second fills the cache and is timed from then on,
    the third runs uncached and is timed; from the fourth on every trial takes the faster of the
    two, by seconds a training step (its evaluations included; the filling not). Every trial of
    the prefix runs it in eval mode either way, so the choice never changes a result. Whether the
    cache pays depends on the device, the prefix's share of the forward pass and the batch sizes
    (on an H200 it was once measured 0.63x of plain MiniLM trials, on 2 CPU cores 3x): measured,
    not guessed.
    """

    def __init__(self) -> None:
        self._keys: dict[tuple[str, ...], _Timings] = {}

    def use(self, key: tuple[str, ...]) -> bool:
        """Whether the next trial of ``key`` takes the cache (and counts it as started)."""
        timings = self._keys.setdefault(key, _Timings())
        timings.started += 1
        if timings.decided is not None:
            return timings.decided
        # The warm-up trial uncached; then cached until a cached trial is timed (one pruned before
        # its end is not), then uncached until an uncached one is.
        return timings.started > 1 and timings.cached is None

    def record(self, key: tuple[str, ...], cached: bool, seconds_per_step: float) -> str | None:
        """Time a trial of ``key``; the decision, said once, when it is made."""
        timings = self._keys.get(key)
        if timings is None or timings.decided is not None or timings.started < 2:
            return None
        if cached:
            timings.cached = seconds_per_step
        else:
            timings.uncached = seconds_per_step
        if timings.cached is None or timings.uncached is None:
            return None
        timings.decided = timings.cached < timings.uncached
        return (
            f"{'on' if timings.decided else 'off'}: {timings.cached:.4f} s a step cached, "
            f"{timings.uncached:.4f} s recomputed"
        )

    def decided(self, key: tuple[str, ...]) -> bool | None:
        """The choice made for ``key``, or ``None`` while it is being measured."""
        timings = self._keys.get(key)
        return None if timings is None else timings.decided

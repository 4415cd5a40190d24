"""One trial's training: device, precision, schedule, evaluation, divergence and out-of-memory.

Knows nothing of Optuna or SQL: the search passes a ``report(step, value)`` callback, which may
raise (``optuna.TrialPruned``) to stop the trial; whatever it raises goes through untouched.

Semantics worth knowing:

- **Per-group rates.** Every optimizer param group keeps its own rate; the schedule is a
  ``LambdaLR`` factor, so warmup and decay scale each group's own rate and never overwrite all
  groups with one value.
- **Frozen groups** (lr 0) get ``requires_grad=False`` and stay out of the optimizer, so autograd
  computes no gradient for them (a frozen prefix of the network needs no backward pass at all).
- **Frozen prefix.** For a task with the ``StagedTask`` capability, the stages before the first
  trained one run under ``torch.no_grad`` and the task's ``rest`` module on their output; with
  ``[train] prefix_cache = true`` that output is computed once per study and reused, and the prefix
  runs in eval mode (dropout off). The rules are in ``lrsearch.prefix``. Other tasks run as they
  are.
- **BatchNorm.** In train mode a BatchNorm layer updates its running statistics even when its
  weights do not learn. With ``[train] freeze_batchnorm = true`` (the default), a BatchNorm layer
  whose parameters are all frozen is kept in eval mode, so it normalises with its pretrained
  statistics and leaves them unchanged; ``false`` lets them follow the new data as plain PyTorch
  would.
- **Precision.** ``auto`` is bf16 autocast on a GPU that supports it, else fp16 autocast with a
  ``GradScaler`` (gradients unscaled before clipping); fp32 on the CPU.
- **Divergence.** A NaN/inf loss or metric ends the trial with ``TrialFailure(diverged=True)``.
- **Out of memory.** CUDA OOM frees what the trial held and ends it with ``TrialFailure``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import time
import weakref
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lrsearch import prefix as _prefix
from lrsearch.errors import LrsearchError, TrialFailure
from lrsearch.groups import LayerGroups, build_param_groups, make_optimizer
from lrsearch.space import Sample
from lrsearch.spec import TrainSection
from lrsearch.tasks import Task, move_to

Report = Callable[[int, float], None]

_log = logging.getLogger("lrsearch")
_told: set[str] = set()  # reasons the prefix cache did not apply, logged once per process


@dataclass(frozen=True)
class TrainResult:
    """The outcome of a finished trial: its final metric and what it cost."""

    value: float
    steps: int
    evaluations: int
    seconds: float
    device: str
    precision: str
    frozen_prefix: int = 0
    """Stages that ran without autograd (0: none, or a task without stages)."""
    prefix_cached: bool = False
    """Whether the frozen prefix's outputs came from (or went into) the prefix cache."""


def resolve_device(device: str | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA when present, else the CPU; otherwise the named device, checked.

    Raises:
        LrsearchError: The device is not a torch device or is not available here.
    """
    if device is None or device in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise LrsearchError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from e
    if dev.type not in ("cpu", "cuda", "mps"):
        # torch accepts "meta", "xla", ...; a trial could not train on them.
        raise LrsearchError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise LrsearchError(f"device {device!r} asked for, but MPS is not available; use cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LrsearchError(f"device {device!r} asked for, but CUDA is not available; use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise LrsearchError(
                f"device {device!r} does not exist; this machine has "
                f"{torch.cuda.device_count()} GPU(s)"
            )
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a trial really runs in: ``fp32``, ``bf16`` or ``fp16``.

    Raises:
        LrsearchError: Mixed precision asked for on a device that cannot run it.
    """
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise LrsearchError(
            f"[train] precision must be auto, fp32, bf16 or fp16, got {precision!r}"
        )
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            raise LrsearchError(
                f"[train] precision = {precision!r} needs a CUDA device; use auto or fp32 on "
                f"{device.type}"
            )
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise LrsearchError(
            "[train] precision = 'bf16' is not supported by this GPU; use auto or fp16"
        )
    return precision


def schedule_factor(kind: str, warmup_ratio: float, total_steps: int) -> Callable[[int], float]:
    """The multiplier of each group's own rate at a step (a ``LambdaLR`` lambda).

    Step ``k`` (0-based) of ``total_steps`` trains with ``lr * factor(k)``: a linear warmup over
    ``round(warmup_ratio * total_steps)`` steps, then constant, cosine or linear decay towards 0.
    """
    warmup = round(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if kind == "warmup_linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


# (id(task), batch_size) -> (a weak reference to the task, batches per epoch). The reference tells a
# live task from a dead one whose id was reused by a new task with other data.
_epoch_lengths: dict[tuple[int, int], tuple[weakref.ref[Any], int]] = {}


def steps_per_epoch(task: Task, batch_size: int) -> int:
    """How many training batches one epoch has (``len()`` where the batches have one).

    Counting may iterate a whole epoch, so the count is cached for as long as ``task`` lives.
    """
    key = (id(task), batch_size)
    cached = _epoch_lengths.get(key)
    if cached is not None and cached[0]() is task:
        return cached[1]
    batches = task.train_batches(batch_size, torch.Generator().manual_seed(0))
    n = len(batches) if isinstance(batches, Sized) else sum(1 for _ in batches)
    try:
        ref = weakref.ref(task, lambda _: _epoch_lengths.pop(key, None))
    except TypeError:  # no weak references to it (__slots__): count again next time
        return n
    _epoch_lengths[key] = (ref, n)
    return n


def _frozen_batchnorms(model: nn.Module) -> list[nn.Module]:
    norms: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                norms.append(module)
    return norms


class _Trial:
    """The state of one training run; ``run`` drives it."""

    def __init__(
        self,
        task: Task,
        groups: LayerGroups,
        sample: Sample,
        cfg: TrainSection,
        device: torch.device,
        seed: int,
    ) -> None:
        self.task, self.cfg, self.device = task, cfg, device
        self.precision = resolve_precision(cfg.precision, device)
        # Counted before seeding: the first count iterates an epoch, which may draw from the global
        # RNG (augmentations), and later trials read the cache, so the same seed would train apart.
        per_epoch = steps_per_epoch(task, cfg.batch_size)
        torch.manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.model = task.build_model().to(device)
        param_groups = build_param_groups(
            self.model, groups, sample.lrs, weight_decay=sample.weight_decay
        )
        self.params = [p for g in param_groups for p in g["params"]]
        self.optimizer = (
            make_optimizer(cfg.optimizer, param_groups, momentum=cfg.momentum)
            if param_groups
            else None
        )
        self.frozen_norms = _frozen_batchnorms(self.model) if cfg.freeze_batchnorm else []
        self.staged = _prefix.staged(task)
        self.prefix: tuple[str, ...] = ()
        self.prefix_modules: list[nn.Module] = []
        self.prefix_eval = False
        self.rest: nn.Module = self.model
        self.features: _prefix.Features | None = None
        if self.staged is not None and self.optimizer is not None:
            self.prefix = _prefix.frozen_prefix(self.staged, self.model)
        if self.staged is not None and self.prefix:
            self.rest = self.staged.rest(self.model, len(self.prefix))
            self.prefix_modules = [self.model.get_submodule(p) for p in self.prefix]
            if cfg.prefix_cache:
                self.features = self.cached_features(self.staged)
        self.total_steps = cfg.epochs * per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.scheduler = (
            torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, schedule_factor(cfg.schedule, cfg.warmup_ratio, self.total_steps)
            )
            if self.optimizer
            else None
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def cached_features(self, task: _prefix.StagedTask) -> _prefix.Features | None:
        where = f"the frozen prefix ({', '.join(self.prefix)})"
        blocker = _prefix.cache_blocker(task, self.prefix_modules, self.frozen_norms)
        if blocker is not None:
            if blocker not in _told:
                _told.add(blocker)
                _log.info("prefix cache: %s is not cached: %s", where, blocker)
            return None
        # In every trial with the option on, cached or not: a result never depends on a hit.
        self.prefix_eval = True
        self.train_mode()
        key = _prefix.cache_key(
            task, self.model, self.prefix, precision=self.precision, device=self.device
        )
        limit = self.cfg.cache_mb * 2**20
        return _prefix.CACHE.lookup(
            key,
            lambda: _prefix.compute_features(
                task,
                self.model,
                len(self.prefix),
                batch_size=self.cfg.eval_batch_size,
                device=self.device,
                autocast=self.autocast,
                move=move_to,
                limit_bytes=limit,
            ),
            limit_bytes=limit,
            cache_dir=self.cfg.cache_dir,
            device=self.device,
            describe=where,
        )

    def train_mode(self) -> None:
        self.model.train()
        for module in self.frozen_norms:
            module.eval()
        if self.prefix_eval:
            for module in self.prefix_modules:
                module.eval()

    def evaluate(self, step: int) -> float:
        self.model.eval()
        with torch.no_grad(), self.autocast():
            if self.features is not None:
                value = float(
                    self.task.evaluate(
                        self.rest, _prefix.slices(self.features.val, self.cfg.eval_batch_size)
                    )
                )
            else:
                batches = (
                    move_to(b, self.device) for b in self.task.val_batches(self.cfg.eval_batch_size)
                )
                value = float(self.task.evaluate(self.model, batches))
        self.train_mode()
        if not math.isfinite(value):
            raise TrialFailure(f"diverged: metric is {value} at step {step}", diverged=True)
        return value

    def step(self, batch: Any, step: int) -> None:
        assert self.optimizer is not None and self.scheduler is not None
        with self.autocast():
            if self.features is not None:  # already the prefix's outputs, on the device
                loss = self.task.loss(self.rest, batch)
            elif self.staged is not None and self.prefix:
                # No graph for the frozen prefix: backward stops at the first trained stage.
                with torch.no_grad():
                    inputs = self.staged.run_prefix(
                        self.model, move_to(batch, self.device), len(self.prefix)
                    )
                loss = self.task.loss(self.rest, inputs)
            else:
                loss = self.task.loss(self.model, move_to(batch, self.device))
        if not torch.isfinite(loss.detach()).all():
            raise TrialFailure(f"diverged: loss is {loss.item()} at step {step}", diverged=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if self.cfg.grad_clip:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not scaled ones
                torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if self.cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def batches(self) -> Iterator[Any]:
        for _ in range(self.cfg.epochs):
            if self.features is not None and self.staged is not None:
                # The same shuffle as train_batches, gathered from the cached outputs.
                for idx in self.staged.train_indices(self.cfg.batch_size, self.generator):
                    yield _prefix.take(self.features.train, idx)
            else:
                yield from self.task.train_batches(self.cfg.batch_size, self.generator)
            yield None  # end of an epoch

    def run(self, report: Report | None) -> tuple[float, int, int]:
        report = report or (lambda step, value: None)
        if self.optimizer is None:  # every group frozen: the pretrained model as it is
            value = self.evaluate(0)
            report(0, value)
            return value, 0, 1
        self.train_mode()
        step = evaluations = 0
        value = math.nan
        evaluated_at = -1
        for batch in self.batches():
            end_of_epoch = batch is None
            if not end_of_epoch:
                if step >= self.total_steps:
                    break
                step += 1
                self.step(batch, step)
            every = self.cfg.eval_every
            # eval_every = 0: once per epoch; otherwise every `every` steps (and once at the end).
            due = (every and not end_of_epoch and step % every == 0) or (end_of_epoch and not every)
            if due and evaluated_at != step:
                value = self.evaluate(step)
                evaluations += 1
                evaluated_at = step
                report(step, value)
        if evaluated_at != step:
            value = self.evaluate(step)
            evaluations += 1
            report(step, value)
        return value, step, evaluations


def train_trial(
    task: Task,
    groups: LayerGroups,
    sample: Sample,
    cfg: TrainSection,
    *,
    device: torch.device | str | None = None,
    seed: int = 0,
    report: Report | None = None,
) -> TrainResult:
    """Train a fresh model of ``task`` with ``sample``'s per-group rates; return its final metric.

    Args:
        task: What to train.
        groups: The layer groups, resolved on a model of the same task.
        sample: ``{group: lr}`` (0 = frozen) and weight decay.
        cfg: The ``[train]`` section.
        device: A torch device, ``"auto"`` or ``None`` (CUDA when present).
        seed: Seeds model initialisation and data order.
        report: Called as ``report(step, value)`` after each evaluation; may raise to stop the
            trial.

    Returns:
        The last evaluation's value and what the trial cost.

    Raises:
        TrialFailure: The trial diverged (NaN/inf) or ran out of GPU memory.
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    start = time.perf_counter()
    trial: _Trial | None = None
    oom = ""
    try:
        trial = _Trial(task, groups, sample, cfg, dev, seed)
        value, steps, evaluations = trial.run(report)
        return TrainResult(
            value,
            steps,
            evaluations,
            time.perf_counter() - start,
            str(dev),
            trial.precision,
            frozen_prefix=len(trial.prefix),
            prefix_cached=trial.features is not None,
        )
    except torch.cuda.OutOfMemoryError as e:
        # Raised below, outside this block: the OOM traceback holds frames that hold GPU tensors.
        oom = str(e).splitlines()[0] if str(e) else "out of memory"
    finally:
        # Drop the model and optimizer before the next trial allocates its own.
        del trial
        emptied = ""
        if oom and _prefix.cache_info().entries:
            # Cached prefix outputs live on the trial's device: memory the next trial may need.
            _prefix.clear_cache()
            emptied = "; the prefix cache was emptied to free its memory"
        if dev.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
    raise TrialFailure(
        f"CUDA out of memory at [train] batch_size = {cfg.batch_size}; lower it or use a smaller "
        f"model ({oom}){emptied}"
    )

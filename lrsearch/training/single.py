"""One trial's training: one model, its optimizer, schedule, evaluation, divergence and OOM.

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
  runs in eval mode (dropout off). The rules are in ``lrsearch.training.prefix``. Other tasks run
  as they are.
- **BatchNorm.** In train mode a BatchNorm layer updates its running statistics even when its
  weights do not learn. With ``[train] freeze_batchnorm = true`` (the default), a BatchNorm layer
  whose parameters are all frozen is kept in eval mode, so it normalises with its pretrained
  statistics and leaves them unchanged; ``false`` lets them follow the new data as plain PyTorch
  would.
- **Precision.** ``auto`` is bf16 autocast on a GPU that supports it, else fp16 autocast with a
  ``GradScaler`` (gradients unscaled before clipping); fp32 on the CPU. On CUDA, AdamW and Adam
  run fused (one kernel for every parameter), and attention never runs through cuDNN's kernel,
  whose host cost per call was most of a MiniLM step's (``common.attention``).
- **Divergence.** A NaN/inf loss or metric ends the trial with ``TrialFailure(diverged=True)``.
  On the CPU the loss is checked at every step; on a GPU the check stays on the device and is
  read at evaluation points and every ``SYNC_EVERY`` steps, so no step waits for the GPU.
- **Out of memory.** CUDA OOM frees what the trial held and ends it with ``TrialFailure``.
- **Compile.** With ``[train] compile = true`` the module a training step runs (the model, or the
  part after a frozen prefix) goes through ``torch.compile``. Its compiled code is kept by torch
  per worker process and reused by every later trial with the same frozen groups (a new pattern of
  frozen groups compiles once more); evaluation runs uncompiled. It pays when the trials are long
  enough to repay the first trial's compilation, typically on a GPU.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lrsearch.groups import LayerGroups, build_param_groups, make_optimizer
from lrsearch.space import Sample
from lrsearch.spec import TrainSection
from lrsearch.tasks import Task, move_to
from lrsearch.training import prefix as _prefix
from lrsearch.training.common import (
    Divergence,
    Plan,
    Report,
    check_metric,
    epochs,
    frozen_batchnorms,
    kernels,
    resolve_precision,
    schedule_factor,
)
from lrsearch.training.evaluate import evaluate

if TYPE_CHECKING:
    from lrsearch.training.trainer import Trainer

_log = logging.getLogger("lrsearch")

SYNC_EVERY = 32
"""On a GPU, steps between reads of the device-side divergence record (outside evaluations)."""


def optimizer_options(name: str, device: torch.device) -> dict[str, Any]:
    """Extra optimizer arguments for ``device``: fused Adam/AdamW on CUDA (one kernel a step)."""
    if device.type == "cuda" and name in ("adamw", "adam"):
        return {"fused": True}
    return {}


def compiled(module: nn.Module) -> nn.Module:
    """``module`` through ``torch.compile``: same parameters, its forward compiled on first call.

    torch keeps the compiled code per process, keyed by the module's code and guarded on its
    tensors' properties, so a later trial's fresh copy of the model reuses it.
    """
    return torch.compile(module)  # type: ignore[return-value]


class Trial:
    """The state of one training run; ``run`` drives it."""

    def __init__(
        self,
        trainer: Trainer,
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
        # RNG (augmentations), and later trials read the count, so the same seed would train apart.
        per_epoch = trainer.epoch_lengths(task, cfg.batch_size)
        torch.manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.model = task.build_model().to(device)
        param_groups = build_param_groups(
            self.model, groups, sample.lrs, weight_decay=sample.weight_decay
        )
        self.params = [p for g in param_groups for p in g["params"]]
        self.optimizer = (
            make_optimizer(
                cfg.optimizer,
                param_groups,
                momentum=cfg.momentum,
                **optimizer_options(cfg.optimizer, device),
            )
            if param_groups
            else None
        )
        self.frozen_norms = frozen_batchnorms(self.model) if cfg.freeze_batchnorm else []
        self.staged = _prefix.staged(task)
        self.prefix: tuple[str, ...] = ()
        self.prefix_modules: list[nn.Module] = []
        self.prefix_eval = False
        self.rest: nn.Module = self.model
        self.features: _prefix.Features | None = None
        self.auto_key: tuple[str, ...] | None = None  # timed for prefix_cache = "auto"
        if self.staged is not None and self.optimizer is not None:
            self.prefix = _prefix.frozen_prefix(self.staged, self.model)
        if self.staged is not None and self.prefix:
            self.rest = self.staged.rest(self.model, len(self.prefix))
            self.prefix_modules = [self.model.get_submodule(p) for p in self.prefix]
            if cfg.prefix_cache:
                self.features = self.cached_features(trainer, self.staged)
        self.plan = Plan.of(cfg, per_epoch)
        self.scheduler = (
            torch.optim.lr_scheduler.LambdaLR(
                self.optimizer,
                schedule_factor(cfg.schedule, cfg.warmup_ratio, self.plan.total_steps),
            )
            if self.optimizer
            else None
        )
        # What a training step's forward runs: compiled when asked (the parameters stay the
        # model's own, so the optimizer, groups and evaluation see no difference).
        self.train_module: nn.Module = compiled(self.rest) if cfg.compile else self.rest
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.divergence = Divergence(1, device)
        self.sync_now = device.type != "cuda"  # a CPU step waits for nothing anyway

    def autocast(self) -> Any:
        # With the attention kernels chosen for the device (see common.attention).
        return kernels(self.precision, self.device)

    def cached_features(
        self, trainer: Trainer, task: _prefix.StagedTask
    ) -> _prefix.Features | None:
        where = f"the frozen prefix ({', '.join(self.prefix)})"
        blocker = _prefix.cache_blocker(task, self.prefix_modules, self.frozen_norms)
        if blocker is not None:
            if blocker not in trainer.told:
                trainer.told.add(blocker)
                _log.info("prefix cache: %s is not cached: %s", where, blocker)
            return None
        # In every trial with the option on, cached or not: a result never depends on a hit.
        self.prefix_eval = True
        self.train_mode()
        if self.cfg.prefix_cache == "auto":
            self.auto_key = trainer.cache.key(task, self.prefix, self.precision, self.device)
            if not trainer.auto.use(self.auto_key):
                return None  # the prefix runs in eval mode each step, as when cached
        limit = self.cfg.cache_mb * 2**20
        return trainer.cache.lookup(
            task,
            self.prefix_modules,
            self.prefix,
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
            precision=self.precision,
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

    def raise_if_diverged(self) -> None:
        failure = self.divergence.first()[0]
        if failure is not None:
            raise failure

    def evaluate(self, step: int) -> float:
        self.raise_if_diverged()
        self.model.eval()
        with torch.no_grad(), self.autocast():
            if self.features is not None:
                batches = _prefix.slices(self.features.val, self.cfg.eval_batch_size)
                value = evaluate(self.task, self.rest, batches)
            else:
                batches = (
                    move_to(b, self.device) for b in self.task.val_batches(self.cfg.eval_batch_size)
                )
                value = evaluate(self.task, self.model, batches)
        self.train_mode()
        return check_metric(value, step)

    def step(self, batch: Any, step: int) -> None:
        assert self.optimizer is not None and self.scheduler is not None
        with self.autocast():
            if self.features is not None:  # already the prefix's outputs, on the device
                loss = self.task.loss(self.train_module, batch)
            elif self.staged is not None and self.prefix:
                # No graph for the frozen prefix: backward stops at the first trained stage.
                with torch.no_grad():
                    inputs = self.staged.run_prefix(
                        self.model, move_to(batch, self.device), len(self.prefix)
                    )
                loss = self.task.loss(self.train_module, inputs)
            else:
                loss = self.task.loss(self.train_module, move_to(batch, self.device))
        self.divergence.check(loss, step)
        if self.sync_now or step % SYNC_EVERY == 0:
            self.raise_if_diverged()
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

    def one_epoch(self) -> Any:
        if self.features is not None and self.staged is not None:
            # The same shuffle as train_batches, gathered from the cached outputs.
            return (
                _prefix.take(self.features.train, idx)
                for idx in self.staged.train_indices(self.cfg.batch_size, self.generator)
            )
        return self.task.train_batches(self.cfg.batch_size, self.generator)

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
        for batch in epochs(self.cfg.epochs, self.one_epoch):
            end_of_epoch = batch is None
            if not end_of_epoch:
                if step >= self.plan.total_steps:
                    break
                step += 1
                self.step(batch, step)
            if self.plan.due(step, end_of_epoch) and evaluated_at != step:
                value = self.evaluate(step)
                evaluations += 1
                evaluated_at = step
                report(step, value)
        if evaluated_at != step:
            value = self.evaluate(step)
            evaluations += 1
            report(step, value)
        return value, step, evaluations

"""K trials in one model step: the parameters of K copies stacked and run under ``torch.func.vmap``.

Small models leave a GPU (and, less so, a CPU) mostly idle; stacking K copies of the model makes
every matrix product K times larger for one Python step. Each copy keeps what makes it its own
trial, so ``Trainer.train_many`` gives what K separate ``Trainer.train_one`` runs with the same
seeds give, within float rounding:

- **Initialisation and data order.** Copy k builds its model after ``torch.manual_seed(seed_k)``
  and draws its batches from its own generator seeded with ``seed_k``, as the trainer does; the
  global CPU RNG is switched per copy while its batches are drawn, so augmentations that draw from
  it match too. All copies must then see batches of the same shapes (true of in-memory tasks;
  not of tasks that pad each batch to its longest sequence, which fail with
  :class:`BatchingUnsupported`).
- **Rates, freezing, weight decay, schedule.** The optimizer (AdamW, Adam or SGD, written here over
  the stacked tensors) holds a ``[K]`` rate per group, scaled each step by the schedule's factor. A
  group frozen in copy k has rate 0 there, its gradient is zeroed and its weight decay masked, so
  it stays bit for bit as built. A group frozen in every copy gets no gradient at all and, when its
  weights are the same in every copy, is not stacked.
- **Evaluation, pruning, divergence.** At the trainer's evaluation points the K copies are
  evaluated together under vmap where the task has the ``ScoredTask`` capability (one pass over
  the validation batches for all of them), else one copy after another (``task.evaluate`` returns
  a float, which vmap cannot batch); then each copy's own ``report`` is called. A report that
  raises (``optuna.TrialPruned``), or a NaN/inf loss or metric, ends that copy alone: its result
  is the exception and it is dropped from the stack. On a GPU a NaN loss is noticed at the next
  evaluation (or within ``SYNC_EVERY`` steps), as for one trial.
- **Attention.** The stacked step runs scaled-dot-product attention with its math kernel: the
  fused kernels have no batching rule under vmap (CUDA refuses them, the CPU loops per copy).

What cannot batch, :func:`can_batch` names before training and :class:`BatchingUnsupported` says
when training starts: BatchNorm layers in train mode (their running statistics are updated in
place), fp16 (one ``GradScaler`` per trial), and anything ``vmap`` rejects at the first step
(``.item()`` in a loss, data-dependent control flow, missing batching rules). The caller then
trains the trials one at a time; no report has been made and nothing trained by then (trials
whose every group is frozen only evaluate, after the stacked ones).

Differences from separate runs, by design: dropout draws differ (``vmap(randomness="different")``
draws per copy, from one RNG); ``TrainResult.seconds`` is the wall time of the shared run until
that copy finished; CUDA out of memory fails every copy still running.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from lrsearch.errors import LrsearchError, TrialFailure
from lrsearch.groups import LayerGroups, build_param_groups, make_optimizer
from lrsearch.space import Sample
from lrsearch.spec import TrainSection
from lrsearch.tasks import AlignedTask, Task, move_to, scored
from lrsearch.training.common import (
    Divergence,
    Plan,
    Report,
    TrainResult,
    as_device,
    attention,
    autocast,
    check_metric,
    epochs,
    oom_text,
    resolve_precision,
    schedule_factor,
)
from lrsearch.training.evaluate import ratios
from lrsearch.training.single import SYNC_EVERY
from lrsearch.training.stacked_optim import StackedOptimizer

if TYPE_CHECKING:
    from lrsearch.training.trainer import Trainer

__all__ = ["BatchingUnsupported", "can_batch"]

_PREFIX = "model."  # names of the model's tensors inside _Call


class BatchingUnsupported(LrsearchError):
    """These trials cannot be trained stacked; ``reason`` says why. Train them one at a time."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"cannot batch trials: {reason}; train them one at a time")
        self.reason = reason


class _Call(nn.Module):
    """``fn(model, *args)`` as a module, so ``functional_call`` swaps the model's tensors for it."""

    def __init__(self, model: nn.Module, fn: Any) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(self.model, *args)


def _batchnorm_problem(
    model: nn.Module, groups: LayerGroups, samples: Sequence[Sample], freeze_batchnorm: bool
) -> str | None:
    group_of = {n: g for g, names in groups.params for n in names}
    for name, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        if not module.training and not module.track_running_stats:
            continue
        owned = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
        own_groups = {group_of[n] for n in owned if n in group_of}
        training = [
            i
            for i, s in enumerate(samples)
            if any(s.lrs.get(g, 0) > 0 for g in own_groups) or not freeze_batchnorm or not owned
        ]
        if training:
            why = (
                "[train] freeze_batchnorm = false"
                if not freeze_batchnorm
                else "it has no parameters"
                if not owned
                else f"its group(s) {sorted(own_groups)} learn"
            )
            return (
                f"BatchNorm layer {name!r} runs in train mode in trial(s) {training} ({why}), and "
                "vmap cannot update its running statistics per trial; freeze its group in every "
                "trial or set [train] batch_trials = 1"
            )
    return None


def can_batch(
    task: Task,
    groups: LayerGroups,
    samples: Sequence[Sample],
    *,
    cfg: TrainSection | None = None,
    device: torch.device | str | None = None,
) -> str | None:
    """Why ``samples`` cannot train stacked, or ``None`` when they can (as far as can be told).

    Builds one model of ``task`` to look at its layers. ``Trainer.train_many`` may still raise
    :class:`BatchingUnsupported` at its first step, before any report, if ``vmap`` rejects the
    model or its loss.

    Args:
        task: What the trials train.
        groups: The layer groups.
        samples: The trials' rates.
        cfg: The ``[train]`` section (default: its defaults).
        device: Where they would train (``None``: CUDA when present).
    """
    cfg = cfg or TrainSection()
    if not samples:
        return "no trials given"
    problem = _precision_problem(cfg, as_device(device))
    if problem is not None:
        return problem
    with torch.random.fork_rng(devices=[]):
        model = task.build_model()
    return _batchnorm_problem(model, groups, samples, cfg.freeze_batchnorm)


def _precision_problem(cfg: TrainSection, device: torch.device) -> str | None:
    if resolve_precision(cfg.precision, device) == "fp16":
        return (
            "fp16 needs a gradient scaler per trial, which batched trials do not have; use "
            "[train] precision = 'bf16' or 'fp32'"
        )
    return None


def train_many(
    trainer: Trainer,
    task: Task,
    groups: LayerGroups,
    samples: Sequence[Sample],
    cfg: TrainSection,
    *,
    device: torch.device | str | None,
    seeds: Sequence[int],
    reports: Sequence[Report | None],
) -> list[TrainResult | BaseException]:
    """What :meth:`lrsearch.training.Trainer.train_many` does (documented there)."""
    if not len(samples) == len(seeds) == len(reports):
        raise ValueError(
            f"samples, seeds and reports must have one entry per trial, got "
            f"{len(samples)}, {len(seeds)} and {len(reports)}"
        )
    dev = as_device(device)
    results: list[TrainResult | BaseException | None] = [None] * len(samples)
    # A trial with every group frozen only evaluates the model as built: nothing to stack.
    stacked = [i for i, s in enumerate(samples) if any(lr > 0 for lr in s.lrs.values())]
    if stacked:
        # Refused (here, while the models are built, or at the first step) before any trial,
        # stacked or not, trains.
        problem = _precision_problem(cfg, dev)
        if problem:
            raise BatchingUnsupported(problem)
        run = _Batch(
            trainer,
            task,
            groups,
            [samples[i] for i in stacked],
            cfg,
            dev,
            [seeds[i] for i in stacked],
        )
        for i, result in zip(stacked, run.run([reports[i] for i in stacked]), strict=True):
            results[i] = result
    for i in range(len(samples)):
        if results[i] is None:
            try:
                results[i] = trainer.train_one(
                    task, groups, samples[i], cfg, device=dev, seed=seeds[i], report=reports[i]
                )
            except Exception as e:
                results[i] = e
    return [r for r in results if r is not None]


def _stack(batches: list[Any]) -> tuple[Any, Any]:
    """The per-copy batches stacked along a new first dimension, and vmap's ``in_dims`` for it."""
    first = batches[0]
    if isinstance(first, torch.Tensor):
        shapes = {tuple(b.shape) for b in batches}
        if len(shapes) > 1:
            raise BatchingUnsupported(
                f"the trials' batches differ in shape: {sorted(shapes)} (a task whose batches "
                "vary can pad them to one shape with an align() method: see AlignedTask)"
            )
        return torch.stack(batches), 0
    if isinstance(first, dict):
        pairs = {k: _stack([b[k] for b in batches]) for k in first}
        return {k: v[0] for k, v in pairs.items()}, {k: v[1] for k, v in pairs.items()}
    if isinstance(first, (list, tuple)):
        parts = [_stack([b[j] for b in batches]) for j in range(len(first))]
        return type(first)(p[0] for p in parts), type(first)(p[1] for p in parts)
    if any(b != first for b in batches):
        raise BatchingUnsupported(f"the trials' batches hold different {type(first).__name__}s")
    return first, None


class _Batch:
    """K trials' stacked state; ``run`` drives them."""

    def __init__(
        self,
        trainer: Trainer,
        task: Task,
        groups: LayerGroups,
        samples: list[Sample],
        cfg: TrainSection,
        device: torch.device,
        seeds: list[int],
    ) -> None:
        self.task, self.cfg, self.device = task, cfg, device
        self.precision = resolve_precision(cfg.precision, device)
        per_epoch = trainer.epoch_lengths(task, cfg.batch_size)  # before seeding, as one trial
        self.generators, self.rng_states = [], []
        models, defaults = [], []
        for sample, seed in zip(samples, seeds, strict=True):
            torch.manual_seed(seed)
            self.generators.append(torch.Generator().manual_seed(seed))
            model = task.build_model()
            # Sets requires_grad and checks the rates as the trainer does; the optimizer it builds
            # is only read for its defaults (weight decay when the sample has none, betas, eps).
            param_groups = build_param_groups(
                model, groups, sample.lrs, weight_decay=sample.weight_decay
            )
            defaults.append(
                make_optimizer(cfg.optimizer, param_groups, momentum=cfg.momentum).param_groups
            )
            self.rng_states.append(torch.get_rng_state())
            models.append(model)
            if len(models) == 1:  # what can_batch checks, on this model rather than one more
                problem = _batchnorm_problem(model, groups, samples, cfg.freeze_batchnorm)
                if problem:
                    raise BatchingUnsupported(problem)
        self.plan = Plan.of(cfg, per_epoch)
        self.factor = schedule_factor(cfg.schedule, cfg.warmup_ratio, self.plan.total_steps)

        group_of = {n: g for g, names in groups.params for n in names}
        hyper = defaults[0][0]
        wd = torch.tensor([d[0]["weight_decay"] for d in defaults], dtype=torch.float64)
        # name -> stacked [K, ...] tensor, or one tensor shared by every copy (never trained).
        # Compared and stacked where the copies were built (the CPU), then moved: one copy each.
        self.stacked: dict[str, torch.Tensor] = {}
        self.shared: dict[str, torch.Tensor] = {}
        lrs: dict[str, torch.Tensor] = {}
        per_model = [dict(m.named_parameters()) | dict(m.named_buffers()) for m in models]
        for name in per_model[0]:
            values = [p[name].detach() for p in per_model]
            group = group_of.get(name)
            lr = torch.tensor(
                [s.lrs[group] if group else 0.0 for s in samples], dtype=torch.float64
            )
            if not lr.any() and all(torch.equal(values[0], v) for v in values[1:]):
                self.shared[name] = values[0].to(device)
                continue
            self.stacked[name] = torch.stack(values).to(device)
            if lr.any():
                self.stacked[name].requires_grad_(True)
                lrs[name] = lr
        # The skeleton whose tensors functional_call swaps for the stacked ones: on the device,
        # for any tensor the model keeps outside its parameters and buffers.
        self.model = models[0].to(device)
        del models, per_model
        self.loss_fn = _Call(self.model, task.loss)
        self.eval_fn = _Call(self.model, task.evaluate)
        scorer = scored(task)
        self.score_fn = _Call(self.model, scorer.score) if scorer is not None else None
        self.optimizer = StackedOptimizer(
            cfg.optimizer,
            {n: self.stacked[n] for n in lrs},
            lrs,
            {n: wd for n in lrs},
            betas=hyper.get("betas", (0.9, 0.999)),
            eps=hyper.get("eps", 1e-8),
            momentum=hyper.get("momentum", 0.0),
        )
        # Every BatchNorm layer is frozen in every copy here (can_batch saw to it): eval mode.
        self.norms = [
            m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        self.divergence = Divergence(len(samples), device)
        self.sync_now = device.type != "cuda"

    # -- the pieces of one step ------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.precision, self.device)

    def train_mode(self) -> None:
        self.model.train()
        for module in self.norms:
            module.eval()

    def copy_tensors(self, k: int) -> dict[str, torch.Tensor]:
        tensors = {n: t[k].detach() for n, t in self.stacked.items()} | self.shared
        return {_PREFIX + n: t for n, t in tensors.items()}

    def vmapped(self, fn: nn.Module, batch: Any, dims: Any, **options: Any) -> Any:
        """``fn(batch)`` for every copy at once: its tensors stacked, ``batch`` per ``dims``."""
        shared = {_PREFIX + n: t for n, t in self.shared.items()}

        def one(tensors: dict[str, torch.Tensor], batch: Any) -> Any:
            named = {_PREFIX + n: t for n, t in tensors.items()}
            return functional_call(fn, named | shared, (batch,))

        with self.autocast(), attention(self.device, vmapped=True):
            return vmap(one, in_dims=(0, dims), **options)(self.stacked, batch)

    def losses(self, batch: Any, dims: Any) -> torch.Tensor:
        out: torch.Tensor = self.vmapped(self.loss_fn, batch, dims, randomness="different")
        return out

    def update(self, step: int) -> None:
        # LambdaLR semantics: the first step trains with factor(0).
        # Each copy's gradient clipped over the groups it trains, as the trainer clips one trial.
        self.optimizer.step(self.stacked, step, self.factor(step - 1), clip=self.cfg.grad_clip)
        for p in self.stacked.values():
            p.grad = None

    def keep(self, kept: list[int]) -> None:
        """Drop every copy not in ``kept`` (indices into the current stack)."""
        index = torch.tensor(kept, dtype=torch.long)
        on = index.to(self.device)
        for name, t in self.stacked.items():
            self.stacked[name] = t.detach()[on].requires_grad_(t.requires_grad)
        self.optimizer.keep(index)
        self.divergence.keep(index)

    # -- evaluation and the loop -----------------------------------------------------------------

    def val_batches(self) -> Iterator[Any]:
        return (move_to(b, self.device) for b in self.task.val_batches(self.cfg.eval_batch_size))

    def evaluate_all(self, step: int) -> list[float | BaseException]:
        """Each copy's metric at ``step``, or the failure that ends it (diverged)."""
        diverged = self.divergence.first()
        self.model.eval()
        with torch.no_grad():
            if self.score_fn is not None:
                total: torch.Tensor | None = None
                for batch in self.val_batches():
                    part = self.vmapped(self.score_fn, batch, None).double()
                    total = part if total is None else total + part
                values = ratios(total, len(diverged))
            else:
                values = []
                for k in range(len(diverged)):
                    with self.autocast():
                        values.append(
                            float(
                                functional_call(
                                    self.eval_fn, self.copy_tensors(k), (self.val_batches(),)
                                )
                            )
                        )
        self.train_mode()
        out: list[float | BaseException] = []
        for value, failure in zip(values, diverged, strict=True):
            if failure is not None:
                out.append(failure)
                continue
            try:
                out.append(check_metric(value, step))
            except TrialFailure as e:
                out.append(e)
        return out

    def one_epoch(self, k: int) -> Any:
        return self.task.train_batches(self.cfg.batch_size, self.generators[k])

    def next_batches(self, streams: list[Iterator[Any]], slots: list[int]) -> list[Any] | None:
        """Each live copy's next batch (``None`` at an epoch's end), or ``None`` when all ended."""
        out = []
        for stream, slot in zip(streams, slots, strict=True):
            # The copy's own global RNG, as if it ran alone: augmentations draw the same numbers.
            torch.set_rng_state(self.rng_states[slot])
            out.append(next(stream, StopIteration))
            self.rng_states[slot] = torch.get_rng_state()
        ended = [b is StopIteration for b in out]
        epoch_ends = [b is None for b in out]
        if all(ended):
            return None
        if any(ended) or (any(epoch_ends) and not all(epoch_ends)):
            raise BatchingUnsupported("the trials' epochs have different numbers of batches")
        return out

    def run(self, reports: list[Report | None]) -> list[TrainResult | BaseException]:
        start = time.perf_counter()
        k = len(reports)
        results: list[TrainResult | BaseException | None] = [None] * k
        slots = list(range(k))  # the original index of each copy still in the stack
        streams = [epochs(self.cfg.epochs, functools.partial(self.one_epoch, i)) for i in range(k)]
        evaluations = [0] * k
        values = [math.nan] * k

        def stop(ended: dict[int, BaseException]) -> None:
            # ended: position in the stack -> what ended that copy
            for pos, error in ended.items():
                results[slots[pos]] = error
            kept = [pos for pos in range(len(slots)) if pos not in ended]
            if kept and ended:
                self.keep(kept)
            for pos in sorted(ended, reverse=True):
                del slots[pos], streams[pos]

        def evaluate_all(step: int) -> None:
            ended: dict[int, BaseException] = {}
            for pos, value in enumerate(self.evaluate_all(step)):
                slot = slots[pos]
                if isinstance(value, BaseException):
                    ended[pos] = value
                    continue
                try:
                    values[slot] = value
                    evaluations[slot] += 1
                    report = reports[slot]
                    if report is not None:
                        report(step, value)
                except Exception as e:  # pruned, or the report's own error: this copy alone
                    ended[pos] = e
            stop(ended)

        def check_divergence() -> None:
            failures = self.divergence.first()
            stop({pos: f for pos, f in enumerate(failures) if f is not None})

        self.train_mode()
        step = 0
        evaluated_at = -1
        try:
            while slots:
                batches = self.next_batches(streams, slots)
                if batches is None:
                    break
                end_of_epoch = batches[0] is None
                if not end_of_epoch:
                    if step >= self.plan.total_steps:
                        break
                    step += 1
                    self.step(batches, step)
                    if self.sync_now or step % SYNC_EVERY == 0:
                        check_divergence()
                    if not slots:
                        break
                if self.plan.due(step, end_of_epoch) and evaluated_at != step:
                    evaluate_all(step)
                    evaluated_at = step
            if slots and evaluated_at != step:
                evaluate_all(step)
        except torch.cuda.OutOfMemoryError as e:
            oom = oom_text(e)
            for slot in slots:
                results[slot] = TrialFailure(
                    f"CUDA out of memory with {len(slots)} trials batched at [train] batch_size = "
                    f"{self.cfg.batch_size}; lower [train] batch_trials or batch_size ({oom})"
                )
            slots = []
        seconds = time.perf_counter() - start
        for slot in slots:
            results[slot] = TrainResult(
                values[slot], step, evaluations[slot], seconds, str(self.device), self.precision
            )
        return [r if r is not None else RuntimeError("lost trial") for r in results]

    def step(self, batches: list[Any], step: int) -> None:
        """One training step of every copy (a diverged copy is recorded, not stopped, here)."""
        if isinstance(self.task, AlignedTask):
            batches = self.task.align(batches)
        batch, dims = _stack([move_to(b, self.device) for b in batches])
        try:
            losses = self.losses(batch, dims)
            finite = self.divergence.check(losses, step)
            # Per copy: a NaN in one copy's loss reaches only that copy's gradients.
            torch.where(finite, losses, 0).sum().backward()
        except (RuntimeError, NotImplementedError) as e:
            if step != 1 or isinstance(e, torch.cuda.OutOfMemoryError):
                raise
            # Nothing reported yet: the caller can still train these trials one at a time.
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BatchingUnsupported(
                f"torch.func.vmap cannot run this model or loss: {first}"
            ) from e
        self.update(step)

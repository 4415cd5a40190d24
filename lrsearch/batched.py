"""K trials in one model step: the parameters of K copies stacked and run under ``torch.func.vmap``.

Small models leave a GPU (and, less so, a CPU) mostly idle; stacking K copies of the model makes
every matrix product K times larger for one Python step. Each copy keeps what makes it its own
trial, so ``train_batched`` gives what K separate :func:`~lrsearch.trainer.train_trial` runs with
the same seeds give, within float rounding:

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
- **Evaluation, pruning, divergence.** At the trainer's evaluation points each copy is evaluated
  on its own (``task.evaluate`` returns a float, which vmap cannot batch) and its own ``report`` is
  called. A report that raises (``optuna.TrialPruned``), or a NaN/inf loss or metric, ends that
  copy alone: its result is the exception and it is dropped from the stack.

What cannot batch, :func:`can_batch` names before training and :class:`BatchingUnsupported` says
when training starts: BatchNorm layers in train mode (their running statistics are updated in
place), fp16 (one ``GradScaler`` per trial), and anything ``vmap`` rejects at the first step
(``.item()`` in a loss, data-dependent control flow, missing batching rules). The caller then
trains the trials one at a time; no report has been made by then.

Differences from separate runs, by design: dropout draws differ (``vmap(randomness="different")``
draws per copy, from one RNG); ``TrainResult.seconds`` is the wall time of the shared run until
that copy finished; CUDA out of memory fails every copy still running.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from lrsearch.errors import LrsearchError, TrialFailure
from lrsearch.groups import LayerGroups, build_param_groups, make_optimizer
from lrsearch.space import Sample
from lrsearch.spec import TrainSection
from lrsearch.tasks import Task, move_to
from lrsearch.trainer import (
    Report,
    TrainResult,
    resolve_device,
    resolve_precision,
    schedule_factor,
    steps_per_epoch,
    train_trial,
)

__all__ = ["BatchingUnsupported", "can_batch", "train_batched"]

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

    Builds one model of ``task`` to look at its layers. ``train_batched`` may still raise
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
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if resolve_precision(cfg.precision, dev) == "fp16":
        return (
            "fp16 needs a gradient scaler per trial, which batched trials do not have; use "
            "[train] precision = 'bf16' or 'fp32'"
        )
    with torch.random.fork_rng(devices=[]):
        model = task.build_model()
    return _batchnorm_problem(model, groups, samples, cfg.freeze_batchnorm)


def train_batched(
    task: Task,
    groups: LayerGroups,
    samples: Sequence[Sample],
    cfg: TrainSection,
    *,
    device: torch.device | str | None = None,
    seeds: Sequence[int],
    reports: Sequence[Report | None],
) -> list[TrainResult | BaseException]:
    """Train ``len(samples)`` trials together, each as :func:`~lrsearch.trainer.train_trial` would.

    Args:
        task: What to train.
        groups: The layer groups, resolved on a model of the same task.
        samples: Each trial's ``{group: lr}`` (0 = frozen) and weight decay.
        cfg: The ``[train]`` section, shared by all trials.
        device: A torch device, ``"auto"`` or ``None`` (CUDA when present).
        seeds: Each trial's seed (model initialisation and data order).
        reports: Each trial's ``report(step, value)`` callback, or ``None``; one that raises stops
            its trial alone.

    Returns:
        One entry per trial, in order: its ``TrainResult``, or the exception that ended it
        (``TrialFailure`` on divergence or out of memory, or whatever its report raised).

    Raises:
        BatchingUnsupported: The trials cannot train stacked (raised before any report).
        GroupError: A sample's rates do not name exactly the groups.
    """
    if not len(samples) == len(seeds) == len(reports):
        raise ValueError(
            f"samples, seeds and reports must have one entry per trial, got "
            f"{len(samples)}, {len(seeds)} and {len(reports)}"
        )
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    results: list[TrainResult | BaseException | None] = [None] * len(samples)
    # A trial with every group frozen only evaluates the model as built: nothing to stack.
    stacked = [i for i, s in enumerate(samples) if any(lr > 0 for lr in s.lrs.values())]
    for i in range(len(samples)):
        if i not in stacked:
            try:
                results[i] = train_trial(
                    task, groups, samples[i], cfg, device=dev, seed=seeds[i], report=reports[i]
                )
            except Exception as e:
                results[i] = e
    if stacked:
        problem = can_batch(task, groups, [samples[i] for i in stacked], cfg=cfg, device=dev)
        if problem:
            raise BatchingUnsupported(problem)
        run = _Batch(
            task, groups, [samples[i] for i in stacked], cfg, dev, [seeds[i] for i in stacked]
        )
        for i, result in zip(stacked, run.run([reports[i] for i in stacked]), strict=True):
            results[i] = result
    return [r for r in results if r is not None]


def _stack(batches: list[Any]) -> tuple[Any, Any]:
    """The per-copy batches stacked along a new first dimension, and vmap's ``in_dims`` for it."""
    first = batches[0]
    if isinstance(first, torch.Tensor):
        shapes = {tuple(b.shape) for b in batches}
        if len(shapes) > 1:
            raise BatchingUnsupported(f"the trials' batches differ in shape: {sorted(shapes)}")
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


def _per_copy(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``[K]`` vector shaped to broadcast over a stacked tensor ``[K, ...]``, in its dtype."""
    return values.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))


class _StackedOptimizer:
    """AdamW, Adam or SGD (as torch computes them) over stacked ``[K, ...]`` tensors.

    Each tensor has a ``[K]`` base rate (0: frozen in that copy, which then gets no update at all,
    weight decay included) and a ``[K]`` weight decay; ``step`` scales the rates by the schedule's
    factor. Hyperparameters are torch's defaults, as ``make_optimizer`` uses them.
    """

    def __init__(
        self,
        kind: str,
        params: dict[str, torch.Tensor],
        lrs: dict[str, torch.Tensor],
        decay: dict[str, torch.Tensor],
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        momentum: float = 0.0,
    ) -> None:
        self.kind, self.betas, self.eps, self.momentum = kind, betas, eps, momentum
        self.lrs = {n: lr.to(torch.float64) for n, lr in lrs.items()}
        self.decay = {n: decay[n].to(torch.float64) * (lr > 0) for n, lr in self.lrs.items()}
        moments = 2 if kind != "sgd" else 1 if momentum else 0
        self.state = {n: [torch.zeros_like(params[n]) for _ in range(moments)] for n in lrs}

    @torch.no_grad()
    def zero_frozen(self, params: dict[str, torch.Tensor]) -> None:
        """Zero the gradient of each copy where its group is frozen (before clipping norms)."""
        for name, base_lr in self.lrs.items():
            grad = params[name].grad
            if grad is not None and not base_lr.all():
                grad.copy_(torch.where(_per_copy(base_lr > 0, grad).bool(), grad, 0))

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor], step: int, factor: float = 1.0) -> None:
        """Update ``params`` in place from their ``.grad``; ``step`` counts from 1."""
        beta1, beta2 = self.betas
        for name, base_lr in self.lrs.items():
            p = params[name]
            lr64, decay = base_lr * factor, self.decay[name]
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            if not base_lr.all():
                # Zeroed where the group is frozen: a NaN there must not leak in through 0 * NaN.
                g = torch.where(_per_copy(base_lr > 0, p).bool(), g, 0)
            if self.kind != "adamw" and decay.any():
                g = g.add(p * _per_copy(decay, p))  # L2 in the gradient, as Adam and SGD do
            if self.kind == "sgd":
                if self.momentum:
                    (buf,) = self.state[name]
                    buf.mul_(self.momentum).add_(g)  # from zeros: buf = g at first, as in torch
                    g = buf
                p.sub_(_per_copy(lr64, p) * g)
                continue
            exp_avg, exp_avg_sq = self.state[name]
            if self.kind == "adamw":
                p.mul_(_per_copy(1 - lr64 * decay, p))
            exp_avg.lerp_(g, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            step_size = _per_copy(lr64 / (1 - beta1**step), p)
            # torch's (exp_avg / (sqrt(v) / sqrt(bc2) + eps)) * step_size, in one buffer.
            update = exp_avg_sq.sqrt().div_(math.sqrt(1 - beta2**step)).add_(self.eps)
            p.sub_(update.reciprocal_().mul_(exp_avg).mul_(step_size))

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the copies at ``index`` (a CPU ``long`` tensor)."""
        for name in self.lrs:
            self.lrs[name] = self.lrs[name][index]
            self.decay[name] = self.decay[name][index]
            self.state[name] = [s[index.to(s.device)] for s in self.state[name]]


class _Batch:
    """K trials' stacked state; ``run`` drives them."""

    def __init__(
        self,
        task: Task,
        groups: LayerGroups,
        samples: list[Sample],
        cfg: TrainSection,
        device: torch.device,
        seeds: list[int],
    ) -> None:
        self.task, self.cfg, self.device = task, cfg, device
        self.precision = resolve_precision(cfg.precision, device)
        per_epoch = steps_per_epoch(task, cfg.batch_size)  # before seeding, as the trainer does
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
        self.model = models[0].to(device)
        self.loss_fn = _Call(self.model, task.loss)
        self.eval_fn = _Call(self.model, task.evaluate)
        self.total_steps = cfg.epochs * per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.factor = schedule_factor(cfg.schedule, cfg.warmup_ratio, self.total_steps)

        group_of = {n: g for g, names in groups.params for n in names}
        hyper = defaults[0][0]
        wd = torch.tensor([d[0]["weight_decay"] for d in defaults], dtype=torch.float64)
        # name -> stacked [K, ...] tensor, or one tensor shared by every copy (never trained).
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
        self.optimizer = _StackedOptimizer(
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

    # -- the pieces of one step ------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def train_mode(self) -> None:
        self.model.train()
        for module in self.norms:
            module.eval()

    def copy_tensors(self, k: int) -> dict[str, torch.Tensor]:
        tensors = {n: t[k].detach() for n, t in self.stacked.items()} | self.shared
        return {_PREFIX + n: t for n, t in tensors.items()}

    def losses(self, batch: Any, dims: Any) -> torch.Tensor:
        shared = {_PREFIX + n: t for n, t in self.shared.items()}

        def one(tensors: dict[str, torch.Tensor], batch: Any) -> torch.Tensor:
            named = {_PREFIX + n: t for n, t in tensors.items()}
            return functional_call(self.loss_fn, named | shared, (batch,))

        with self.autocast():
            out: torch.Tensor = vmap(one, in_dims=(0, dims), randomness="different")(
                self.stacked, batch
            )
            return out

    def clip(self) -> None:
        """Clip each copy's gradient norm over the groups it trains, as ``clip_grad_norm_``."""
        assert self.cfg.grad_clip
        grads = {n: self.stacked[n].grad for n in self.optimizer.lrs}
        squares = sum(g.float().pow(2).flatten(1).sum(1) for g in grads.values() if g is not None)
        norm = torch.as_tensor(squares).sqrt()
        coef = (self.cfg.grad_clip / (norm + 1e-6)).clamp(max=1.0)
        for g in grads.values():
            if g is not None:
                g.mul_(_per_copy(coef, g))

    def update(self, step: int) -> None:
        # LambdaLR semantics: the first step trains with factor(0).
        self.optimizer.step(self.stacked, step, self.factor(step - 1))
        for p in self.stacked.values():
            p.grad = None

    def keep(self, kept: list[int]) -> None:
        """Drop every copy not in ``kept`` (indices into the current stack)."""
        index = torch.tensor(kept, dtype=torch.long)
        on = index.to(self.device)
        for name, t in self.stacked.items():
            self.stacked[name] = t.detach()[on].requires_grad_(t.requires_grad)
        self.optimizer.keep(index)

    # -- evaluation and the loop -----------------------------------------------------------------

    def evaluate(self, k: int, step: int) -> float:
        self.model.eval()
        with torch.no_grad(), self.autocast():
            batches = (
                move_to(b, self.device) for b in self.task.val_batches(self.cfg.eval_batch_size)
            )
            value = float(functional_call(self.eval_fn, self.copy_tensors(k), (batches,)))
        self.train_mode()
        if not math.isfinite(value):
            raise TrialFailure(f"diverged: metric is {value} at step {step}", diverged=True)
        return value

    def epochs(self, k: int) -> Iterator[Any]:
        for _ in range(self.cfg.epochs):
            yield from self.task.train_batches(self.cfg.batch_size, self.generators[k])
            yield None  # end of an epoch

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
        streams = [self.epochs(i) for i in range(k)]
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
            for pos, slot in enumerate(slots):
                try:
                    values[slot] = self.evaluate(pos, step)
                    evaluations[slot] += 1
                    report = reports[slot]
                    if report is not None:
                        report(step, values[slot])
                except Exception as e:  # pruned, diverged, or the report's own error: this copy
                    ended[pos] = e
            stop(ended)

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
                    if step >= self.total_steps:
                        break
                    step += 1
                    stop(self.step(batches, step))
                    if not slots:
                        break
                every = self.cfg.eval_every
                due = (every and not end_of_epoch and step % every == 0) or (
                    end_of_epoch and not every
                )
                if due and evaluated_at != step:
                    evaluate_all(step)
                    evaluated_at = step
            if slots and evaluated_at != step:
                evaluate_all(step)
        except torch.cuda.OutOfMemoryError as e:
            oom = str(e).splitlines()[0] if str(e) else "out of memory"
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

    def step(self, batches: list[Any], step: int) -> dict[int, BaseException]:
        """One training step of every copy; returns the copies whose loss diverged."""
        batch, dims = _stack([move_to(b, self.device) for b in batches])
        try:
            losses = self.losses(batch, dims)
            finite = torch.isfinite(losses.detach())
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
        # The trainer clips over the groups a trial trains: a frozen copy's gradient counts nowhere.
        self.optimizer.zero_frozen(self.stacked)
        if self.cfg.grad_clip:
            self.clip()
        self.update(step)
        bad = (~finite).nonzero().flatten().tolist()
        return {
            pos: TrialFailure(
                f"diverged: loss is {losses[pos].item()} at step {step}", diverged=True
            )
            for pos in bad
        }

"""What one trial and K stacked trials share: device, precision, schedule, the evaluation plan.

Both trainers (:mod:`lrsearch.training.single`, :mod:`lrsearch.training.stacked`) walk the same
steps the same way, so these pieces are written once here:

- :func:`resolve_device`, :func:`resolve_precision`, :func:`autocast`: where and in what a trial
  runs (bf16 autocast on a GPU that has it, else fp16 with a ``GradScaler``; fp32 on the CPU).
- :func:`schedule_factor`: the ``LambdaLR`` factor that scales each group's own rate.
- :class:`Plan`: how many steps a trial takes and when it evaluates.
- :class:`EpochLengths`: batches per epoch, counted once per task (counting may iterate a whole
  epoch); owned by the :class:`~lrsearch.training.Trainer` that uses it, not by the module.
- :func:`epochs`: the training batches of every epoch, with ``None`` at each epoch's end.
- :class:`Divergence`: the per-step finite-loss check kept on the device, so a step never waits
  for the GPU; read at the evaluation points, which wait anyway.
- :func:`oom_message`: what a trial that ran out of GPU memory says.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lrsearch.errors import LrsearchError, TrialFailure
from lrsearch.spec import TrainSection
from lrsearch.tasks import Batch, Task

Report = Callable[[int, float], None]
"""``report(step, value)`` after each evaluation; may raise (``optuna.TrialPruned``) to stop."""


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


def as_device(device: torch.device | str | None) -> torch.device:
    """``device`` as a checked ``torch.device`` (see :func:`resolve_device`)."""
    return device if isinstance(device, torch.device) else resolve_device(device)


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


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The autocast context of ``precision`` (a resolved one) on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def attention(
    device: torch.device, *, vmapped: bool = False
) -> contextlib.AbstractContextManager[Any]:
    """The scaled-dot-product attention kernels a trial may use on ``device``.

    On CUDA, every kernel but cuDNN's: measured on an H200 (``benchmarks/profile_trial.py``),
    cuDNN attention cost ~0.8 ms of host time a call for MiniLM's batches, whose widths vary from
    step to step, more than the rest of the step's launches together; the flash and
    memory-efficient kernels launch in microseconds. Elsewhere, torch's own choice.

    ``vmapped``: the math kernel alone, on every device, which vmap batches: the fused kernels
    have no batching rule (on CUDA vmap refuses them; on the CPU it loops per copy).
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: no cuDNN attention to avoid; the old switch for vmap
        if vmapped:
            return torch.backends.cuda.sdp_kernel(
                enable_flash=False, enable_math=True, enable_mem_efficient=False
            )
        return contextlib.nullcontext()
    if vmapped:
        return sdpa_kernel(SDPBackend.MATH)
    if device.type != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel(
        [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    )


def kernels(precision: str, device: torch.device) -> contextlib.ExitStack:
    """Autocast of ``precision`` and the attention kernels of :func:`attention`, together."""
    stack = contextlib.ExitStack()
    stack.enter_context(autocast(precision, device))
    stack.enter_context(attention(device))
    return stack


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


class EpochLengths:
    """Batches per epoch of each live task, counted once (``len()`` where the batches have one).

    Keyed by the task object and batch size; an entry goes when its task does, so a new task that
    reuses a dead one's ``id`` is counted afresh.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[int, int], tuple[weakref.ref[Any], int]] = {}

    def __call__(self, task: Task, batch_size: int) -> int:
        key = (id(task), batch_size)
        cached = self._counts.get(key)
        if cached is not None and cached[0]() is task:
            return cached[1]
        batches = task.train_batches(batch_size, torch.Generator().manual_seed(0))
        n = len(batches) if isinstance(batches, Sized) else sum(1 for _ in batches)
        try:
            ref = weakref.ref(task, lambda _: self._counts.pop(key, None))
        except TypeError:  # no weak references to it (__slots__): count again next time
            return n
        self._counts[key] = (ref, n)
        return n


@dataclass(frozen=True)
class Plan:
    """How many steps a trial takes and when it evaluates, from ``[train]``."""

    total_steps: int
    eval_every: int

    @classmethod
    def of(cls, cfg: TrainSection, per_epoch: int) -> Plan:
        total = cfg.epochs * per_epoch
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        return cls(total, cfg.eval_every)

    def due(self, step: int, end_of_epoch: bool) -> bool:
        """Whether to evaluate now: every ``eval_every`` steps, or (0) once per epoch."""
        every = self.eval_every
        if every:
            return not end_of_epoch and step % every == 0
        return end_of_epoch


def epochs(n: int, one_epoch: Callable[[], Iterable[Batch]]) -> Iterator[Batch | None]:
    """``n`` epochs of ``one_epoch()``'s batches, each followed by ``None`` (the epoch's end)."""
    for _ in range(n):
        yield from one_epoch()
        yield None


def frozen_batchnorms(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` whose parameters are all frozen."""
    norms: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                norms.append(module)
    return norms


class Divergence:
    """The first step whose loss was NaN/inf, per copy, kept on the device.

    ``check`` queues a comparison and never waits for the GPU; ``first`` reads the record (one
    wait) at an evaluation point. A diverged trial therefore ends at its next evaluation, not at
    the step itself: the steps in between are wasted, but no step of a healthy trial waits.
    """

    def __init__(self, copies: int, device: torch.device) -> None:
        # 0: finite so far; otherwise the first bad step (steps count from 1).
        self.steps = torch.zeros(copies, dtype=torch.long, device=device)
        self.losses = torch.zeros(copies, dtype=torch.float32, device=device)

    def check(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """Record where ``loss`` (one per copy) is not finite; returns the finite mask."""
        loss = loss.detach().reshape(-1)
        finite = torch.isfinite(loss)
        new = (~finite) & (self.steps == 0)
        self.steps = torch.where(new, step, self.steps)
        self.losses = torch.where(new, loss.float(), self.losses)
        return finite

    def keep(self, index: torch.Tensor) -> None:
        on = index.to(self.steps.device)
        self.steps, self.losses = self.steps[on], self.losses[on]

    def first(self) -> list[TrialFailure | None]:
        """Per copy, the failure that its first non-finite loss means, or ``None``."""
        steps = self.steps.tolist()
        if not any(steps):
            return [None] * len(steps)
        losses = self.losses.tolist()
        return [
            TrialFailure(f"diverged: loss is {loss} at step {s}", diverged=True) if s else None
            for s, loss in zip(steps, losses, strict=True)
        ]


def check_metric(value: float, step: int) -> float:
    """``value``, or ``TrialFailure`` when it is NaN/inf."""
    if not math.isfinite(value):
        raise TrialFailure(f"diverged: metric is {value} at step {step}", diverged=True)
    return value


def oom_text(error: BaseException) -> str:
    """The first line of an out-of-memory error."""
    text = str(error)
    return text.splitlines()[0] if text else "out of memory"

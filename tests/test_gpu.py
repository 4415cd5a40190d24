"""The trainer on CUDA: bf16 autocast, fp16 with a GradScaler, precision auto, real out-of-memory.

Skipped without CUDA; run with ``pytest -m gpu`` on a GPU machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from toy_tasks import cuda_allocated

from lrsearch.errors import TrialFailure
from lrsearch.groups import LayerGroups, resolve_groups
from lrsearch.space import Sample
from lrsearch.spec import TrainSection
from lrsearch.tasks import TensorClassificationTask
from lrsearch.training import resolve_precision, train_trial

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

GROUPS = {"body": ["0"], "head": ["2"]}
MiB = 2**20


@dataclass
class LossTask(TensorClassificationTask):
    """Scored by mean validation cross-entropy, so 'lowers its loss' is measurable."""

    metric: str = "loss"
    direction: Any = "minimize"

    def evaluate(self, model: nn.Module, batches: Any) -> float:
        total = sum(
            float(F.cross_entropy(model(x).float(), y, reduction="sum")) for x, y in batches
        )
        return total / len(self.y_val)


def make_task(width: int = 64, cls: type[LossTask] = LossTask) -> LossTask:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(544, 16, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()

    def model() -> nn.Module:
        return nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, 3))

    return cls(model, x[:512], y[:512], x[512:], y[512:])


def groups_of(task: LossTask) -> LayerGroups:
    return resolve_groups(task.model_fn(), GROUPS)


def cfg(**kwargs: Any) -> TrainSection:
    base = TrainSection(optimizer="sgd", batch_size=32, eval_batch_size=64, epochs=3)
    return replace(base, **kwargs)


def test_bf16_autocast_trains_and_lowers_the_loss() -> None:
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    task = make_task()
    groups = groups_of(task)
    before = train_trial(task, groups, Sample({"body": 0.0, "head": 0.0}), cfg(), device="cuda")
    after = train_trial(
        task, groups, Sample({"body": 0.05, "head": 0.1}), cfg(precision="bf16"), device="cuda"
    )
    assert after.precision == "bf16" and after.device.startswith("cuda")
    assert after.steps == 3 * 512 // 32
    assert math.isfinite(after.value)
    assert after.value < 0.9 * before.value


def test_fp16_uses_a_grad_scaler_and_clips_unscaled_gradients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[tuple[str, float]] = []
    built: list[nn.Module] = []
    real_unscale = torch.amp.GradScaler.unscale_
    real_clip = torch.nn.utils.clip_grad_norm_

    def unscale(self: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> None:
        events.append(("unscale", float(self.get_scale())))
        real_unscale(self, optimizer)

    def clip(params: Any, max_norm: float, *args: Any, **kwargs: Any) -> torch.Tensor:
        params = list(params)
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        events.append(("clip", float(norm)))
        return real_clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.amp.GradScaler, "unscale_", unscale)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    task = make_task()
    real_fn = task.model_fn

    def remember() -> nn.Module:
        built.append(real_fn())
        return built[-1]

    task.model_fn = remember
    torch.manual_seed(0)  # the trial seeds itself with 0 before building: the same weights
    initial = {k: v.clone() for k, v in real_fn().state_dict().items()}
    result = train_trial(
        task,
        groups_of(task),
        Sample({"body": 0.05, "head": 0.1}),
        cfg(precision="fp16", grad_clip=0.5),
        device="cuda",
        seed=0,
    )
    assert result.precision == "fp16"
    assert math.isfinite(result.value)
    kinds = [kind for kind, _ in events]
    assert kinds == ["unscale", "clip"] * result.steps  # unscaled before every clip
    scales = [v for kind, v in events if kind == "unscale"]
    norms = [v for kind, v in events if kind == "clip" and math.isfinite(v)]
    assert min(scales) >= 2.0**8  # gradients were scaled, by a lot
    # Clipped gradients are the true ones: far below what the scale would have made them.
    assert norms and max(norms) < 100.0
    model = built[-1]
    moved = [not torch.equal(p.detach().cpu(), initial[n]) for n, p in model.named_parameters()]
    assert all(moved)


def test_precision_auto_on_cuda() -> None:
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert resolve_precision("auto", torch.device("cuda")) == expected
    task = make_task()
    result = train_trial(
        task, groups_of(task), Sample({"body": 0.01, "head": 0.01}), cfg(max_steps=2), device="cuda"
    )
    assert result.precision == expected


@dataclass
class OomTask(LossTask):
    """Its second training step asks for 40 TB of GPU memory."""

    calls: int = 0

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        self.calls += 1
        x, _ = batch
        if x.is_cuda and self.calls == 2:
            torch.empty(10**13, device=x.device)
        return super().loss(model, batch)


def test_real_oom_is_a_trial_failure_and_frees_the_trial() -> None:
    # Wide enough (4096 x 4096 weights: 64 MiB, as much again for momentum) that a leak shows.
    task = make_task(width=4096, cls=OomTask)
    assert isinstance(task, OomTask)
    groups = groups_of(task)
    lrs = Sample({"body": 0.01, "head": 0.01})
    # Warm up first: CUDA context, cuBLAS workspaces and the like stay allocated for good.
    task.calls = 10
    train_trial(task, groups, lrs, cfg(max_steps=2), device="cuda")
    task.calls = 0
    before = cuda_allocated()
    with pytest.raises(TrialFailure) as info:
        train_trial(task, groups, lrs, cfg(), device="cuda")
    assert "out of memory" in info.value.reason
    assert "batch_size = 32" in info.value.reason
    assert info.value.diverged is False
    assert task.calls == 2  # one step trained (optimizer state allocated), then the OOM
    assert cuda_allocated() <= before + 4 * MiB
    # And the GPU is usable at once for the next trial.
    task.calls = 10
    result = train_trial(task, groups, lrs, cfg(max_steps=2), device="cuda")
    assert math.isfinite(result.value)

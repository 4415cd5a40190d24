"""The trainer on tiny CPU models: schedules, freezing, BatchNorm, evaluation cadence, failures."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrsearch.errors import LrsearchError, TrialFailure
from lrsearch.groups import LayerGroups, resolve_groups
from lrsearch.space import Sample
from lrsearch.spec import TrainSection
from lrsearch.tasks import TensorClassificationTask
from lrsearch.training import (
    resolve_device,
    resolve_precision,
    schedule_factor,
    steps_per_epoch,
    train_trial,
)
from lrsearch.training import single as trainer

N_TRAIN = 64  # with BATCH 8: 8 steps per epoch
BATCH = 8
GROUPS = {"body": ["0", "1"], "mid": ["3", "4"], "head": ["6"]}


def _mlp() -> nn.Module:
    # body = Linear + BatchNorm, mid = Linear + BatchNorm, head = Linear
    return nn.Sequential(
        nn.Linear(4, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Off-centre inputs, so that BatchNorm's running statistics move away from (0, 1) in training.
    x = torch.randn(n, 4, generator=g) * 2 + 1
    y = (x[:, 0] > 1).long() + (x[:, 1] > 1).long()
    return x, y


@dataclass
class ToyTask(TensorClassificationTask):
    """A TensorClassificationTask that remembers the models it built and counts loss calls."""

    built: list[nn.Module] = field(default_factory=list)
    initial: list[dict[str, torch.Tensor]] = field(default_factory=list)
    loss_calls: int = 0
    on_loss: Callable[[ToyTask, nn.Module], None] | None = None

    def build_model(self) -> nn.Module:
        model = self.model_fn()
        self.built.append(model)
        self.initial.append(copy.deepcopy(model.state_dict()))
        return model

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        self.loss_calls += 1
        if self.on_loss is not None:
            self.on_loss(self, model)
        return super().loss(model, batch)


def make_task(n_train: int = N_TRAIN, cls: type[ToyTask] = ToyTask, **kwargs: Any) -> ToyTask:
    x, y = _data(n_train, 0)
    xv, yv = _data(32, 1)
    return cls(_mlp, x, y, xv, yv, **kwargs)


def make_groups(task: ToyTask) -> LayerGroups:
    return resolve_groups(task.model_fn(), GROUPS)


def cfg(**kwargs: Any) -> TrainSection:
    base = TrainSection(optimizer="sgd", batch_size=BATCH, eval_batch_size=16, precision="auto")
    return replace(base, **kwargs)


def sample(body: float = 0.05, mid: float = 0.05, head: float = 0.05) -> Sample:
    return Sample({"body": body, "mid": mid, "head": head})


class Capture:
    """Wraps ``trainer.make_optimizer`` to keep the optimizer a trial builds."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.optimizers: list[torch.optim.Optimizer] = []
        real = trainer.make_optimizer

        def wrapped(*args: Any, **kwargs: Any) -> torch.optim.Optimizer:
            opt = real(*args, **kwargs)
            self.optimizers.append(opt)
            return opt

        monkeypatch.setattr(trainer, "make_optimizer", wrapped)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(dim=-1) == y).float().mean())


# --- schedules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "warmup_ratio", "total", "step", "expected"),
    [
        ("constant", 0.0, 10, 0, 1.0),
        ("constant", 0.0, 10, 9, 1.0),
        ("constant", 0.2, 10, 0, 1 / 3),  # warmup over 2 steps: 1/3, 2/3, then 1
        ("constant", 0.2, 10, 1, 2 / 3),
        ("constant", 0.2, 10, 2, 1.0),
        ("warmup_linear", 0.2, 10, 0, 1 / 3),
        ("warmup_linear", 0.2, 10, 2, 1.0),
        ("warmup_linear", 0.2, 10, 6, 0.5),  # half way through the 8 decay steps
        ("warmup_linear", 0.2, 10, 9, 1 / 8),
        ("warmup_linear", 0.0, 4, 0, 1.0),
        ("warmup_linear", 0.0, 4, 3, 0.25),
        ("warmup_cosine", 0.2, 10, 1, 2 / 3),
        ("warmup_cosine", 0.2, 10, 2, 1.0),
        ("warmup_cosine", 0.2, 10, 6, 0.5),
        ("warmup_cosine", 0.2, 10, 4, 0.5 * (1 + math.cos(math.pi / 4))),  # progress 1/4
        ("warmup_cosine", 0.0, 4, 2, 0.5),
        ("warmup_cosine", 0.0, 4, 4, 0.0),
    ],
)
def test_schedule_factor_known_values(
    kind: str, warmup_ratio: float, total: int, step: int, expected: float
) -> None:
    assert schedule_factor(kind, warmup_ratio, total)(step) == pytest.approx(expected)


def _reference_factor(kind: str, warmup: int, total: int, k: int) -> float:
    """The schedule written out independently: linear warmup, then flat / linear / cosine decay."""
    if k < warmup:
        return (k + 1) / (warmup + 1)
    progress = (k - warmup) / (total - warmup)
    return {
        "constant": 1.0,
        "warmup_linear": 1.0 - progress,
        "warmup_cosine": (1.0 + math.cos(math.pi * progress)) / 2,
    }[kind]


@pytest.mark.parametrize("kind", ["constant", "warmup_linear", "warmup_cosine"])
def test_schedule_scales_each_groups_own_rate(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    capture = Capture(monkeypatch)
    seen: list[dict[str, float]] = []

    def record(task: ToyTask, model: nn.Module) -> None:
        # Called before each step's optimizer update: the rates this step trains with.
        seen.append({g["name"]: g["lr"] for g in capture.optimizers[-1].param_groups})

    task = make_task(on_loss=record)
    lrs = {"body": 0.001, "mid": 0.004, "head": 0.02}
    result = train_trial(
        task,
        make_groups(task),
        Sample(lrs),
        cfg(schedule=kind, warmup_ratio=0.25, epochs=2),
        device="cpu",
    )
    total = 2 * N_TRAIN // BATCH
    assert result.steps == total == len(seen)
    for k, rates in enumerate(seen):
        factor = _reference_factor(kind, round(0.25 * total), total, k)
        for group, lr in lrs.items():
            assert rates[group] == pytest.approx(lr * factor, rel=1e-9, abs=1e-15), (k, group)
        # The ratio between groups is the sampled one at every step: nothing overwrote one group.
        assert rates["head"] / rates["body"] == pytest.approx(20.0)
        assert rates["mid"] / rates["body"] == pytest.approx(4.0)


# --- frozen groups -----------------------------------------------------------------------------


def test_frozen_group_is_untouched_and_out_of_the_optimizer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    capture = Capture(monkeypatch)
    task = make_task()
    train_trial(task, make_groups(task), sample(body=0.0), cfg(epochs=2), device="cpu")

    model, initial = task.built[-1], task.initial[-1]
    body = [model[0].weight, model[0].bias, model[1].weight, model[1].bias]
    in_optimizer = {id(p) for g in capture.optimizers[-1].param_groups for p in g["params"]}
    assert [g["name"] for g in capture.optimizers[-1].param_groups] == ["mid", "head"]
    for name, p in [("0.weight", body[0]), ("0.bias", body[1]), ("1.weight", body[2])]:
        assert torch.equal(p, initial[name]), name
    for p in body:
        assert p.requires_grad is False
        assert id(p) not in in_optimizer
        # Never cleared by the optimizer (it does not hold them): None means never allocated.
        assert p.grad is None
    # The trained groups did learn.
    assert not torch.equal(model[6].weight, initial["6.weight"])
    assert not torch.equal(model[3].weight, initial["3.weight"])


def test_frozen_prefix_gets_no_backward_work() -> None:
    outputs: dict[str, list[bool]] = {"body": [], "mid": []}
    backward: list[str] = []

    def record(name: str) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            if torch.is_grad_enabled():  # a training forward, not an evaluation
                outputs[name].append(output.requires_grad)

        return hook

    def install(task: ToyTask, model: nn.Module) -> None:
        if getattr(model, "_hooked", False):
            return
        model._hooked = True  # type: ignore[assignment]
        model[1].register_forward_hook(record("body"))  # the end of the frozen prefix
        model[4].register_forward_hook(record("mid"))
        # Fires only if autograd computes gradients for the prefix's outputs: it must never.
        model[0].register_full_backward_hook(lambda m, gi, go: backward.append("body"))
        model[3].weight.register_hook(lambda grad: backward.append("mid"))

    task = make_task(on_loss=install)
    result = train_trial(task, make_groups(task), sample(body=0.0), cfg(), device="cpu")
    # The hooks go in at the first step's loss, before its forward: every step is recorded.
    steps = result.steps
    assert outputs["body"] == [False] * steps  # no graph: backward stops at the mid group
    assert outputs["mid"] == [True] * steps
    assert backward == ["mid"] * steps


@pytest.mark.parametrize(
    ("freeze_batchnorm", "frozen_bn_changes"),
    [(True, False), (False, True)],
)
def test_batchnorm_of_a_frozen_group(freeze_batchnorm: bool, frozen_bn_changes: bool) -> None:
    modes: list[tuple[bool, bool]] = []
    task = make_task(on_loss=lambda t, m: modes.append((m[1].training, m[4].training)))
    train_trial(
        task,
        make_groups(task),
        sample(body=0.0),
        cfg(freeze_batchnorm=freeze_batchnorm),
        device="cpu",
    )
    model, initial = task.built[-1], task.initial[-1]
    frozen_bn_moved = not torch.equal(model[1].running_mean, initial["1.running_mean"])
    assert frozen_bn_moved == frozen_bn_changes
    assert (not torch.equal(model[1].running_var, initial["1.running_var"])) == frozen_bn_changes
    # The trained group's BatchNorm always follows the data.
    assert not torch.equal(model[4].running_mean, initial["4.running_mean"])
    # During training: the frozen BatchNorm in eval mode only when freeze_batchnorm is on.
    assert modes and all(mode == (not freeze_batchnorm, True) for mode in modes)


def test_all_groups_frozen_evaluates_the_pretrained_model() -> None:
    reports: list[tuple[int, float]] = []
    task = make_task()
    result = train_trial(
        task,
        make_groups(task),
        sample(0.0, 0.0, 0.0),
        cfg(epochs=3),
        device="cpu",
        report=lambda s, v: reports.append((s, v)),
    )
    model, initial = task.built[-1], task.initial[-1]
    for name, value in model.state_dict().items():
        assert torch.equal(value, initial[name]), name
    assert result.value == pytest.approx(_accuracy(model, task.x_val, task.y_val))
    assert (result.steps, result.evaluations, task.loss_calls) == (0, 1, 0)
    assert reports == [(0, result.value)]


# --- evaluation cadence ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_train", "epochs", "eval_every", "max_steps", "expected"),
    [
        (64, 1, 3, None, [3, 6, 8]),  # every 3 steps, and once at the end
        (64, 1, 4, None, [4, 8]),  # the last step is an evaluation step: not twice
        (64, 2, 0, None, [8, 16]),  # 0: once per epoch
        (60, 2, 0, None, [8, 16]),  # a short last batch is still a step
        (64, 2, 0, 5, [5]),  # max_steps ends inside the first epoch
        (64, 3, 0, 12, [8, 12]),
        (64, 2, 5, 12, [5, 10, 12]),
        (64, 1, 100, None, [8]),
    ],
)
def test_evaluation_cadence(
    n_train: int, epochs: int, eval_every: int, max_steps: int | None, expected: list[int]
) -> None:
    reports: list[tuple[int, float]] = []
    task = make_task(n_train)
    result = train_trial(
        task,
        make_groups(task),
        sample(),
        cfg(epochs=epochs, eval_every=eval_every, max_steps=max_steps),
        device="cpu",
        report=lambda s, v: reports.append((s, v)),
    )
    assert [s for s, _ in reports] == expected
    assert result.steps == expected[-1] == task.loss_calls
    assert result.evaluations == len(expected)
    assert result.value == reports[-1][1]
    assert all(0.0 <= v <= 1.0 for _, v in reports)


class _Prune(Exception):
    pass


def test_a_raising_report_stops_the_trial_and_leaves_nothing_behind() -> None:
    task = make_task()
    groups = make_groups(task)
    before = train_trial(task, groups, sample(), cfg(eval_every=2, epochs=2), device="cpu")
    calls: list[int] = []
    raised = _Prune("pruned at step 4")

    def report(step: int, value: float) -> None:
        calls.append(step)
        if step == 4:
            raise raised

    task.loss_calls = 0
    with pytest.raises(_Prune) as info:
        train_trial(
            task, groups, sample(), cfg(eval_every=2, epochs=2), device="cpu", report=report
        )
    assert info.value is raised  # untouched, not wrapped
    assert calls == [2, 4]
    assert task.loss_calls == 4  # no training after the raise
    # The next trial is unaffected: same seed, same result as before the pruned one.
    after = train_trial(task, groups, sample(), cfg(eval_every=2, epochs=2), device="cpu")
    assert after.value == before.value and after.steps == before.steps == 16


# --- divergence and failure --------------------------------------------------------------------


@dataclass
class NanLossTask(ToyTask):
    bad_value: float = math.nan
    bad_at: int = 3

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        loss = super().loss(model, batch)
        return loss * self.bad_value if self.loss_calls == self.bad_at else loss


@dataclass
class NanMetricTask(ToyTask):
    def evaluate(self, model: nn.Module, batches: Any) -> float:
        super().evaluate(model, batches)
        return math.nan


@pytest.mark.parametrize(
    ("cls", "kwargs", "lrs", "expected"),
    [
        (NanLossTask, {"bad_value": math.nan}, {}, "loss is nan at step 3"),
        (NanLossTask, {"bad_value": math.inf}, {}, "loss is inf at step 3"),
        (NanLossTask, {"bad_value": math.nan, "bad_at": 1}, {}, "at step 1"),
        (ToyTask, {}, {"head": 1e30, "mid": 1e30}, "diverged: loss is"),
        (NanMetricTask, {}, {}, "metric is nan at step 8"),
    ],
)
def test_divergence_is_a_trial_failure(
    cls: type[ToyTask], kwargs: dict[str, Any], lrs: dict[str, float], expected: str
) -> None:
    task = make_task(cls=cls, **kwargs)
    with pytest.raises(TrialFailure) as info:
        train_trial(task, make_groups(task), sample(**lrs), cfg(epochs=3), device="cpu")
    assert info.value.diverged is True
    assert expected in info.value.reason


def test_huge_lr_diverges_at_a_named_step() -> None:
    task = make_task()
    with pytest.raises(TrialFailure) as info:
        train_trial(task, make_groups(task), sample(1e30, 1e30, 1e30), cfg(epochs=3), device="cpu")
    step = int(info.value.reason.rsplit("at step ", 1)[1])
    assert 1 < step <= task.loss_calls


def test_simulated_cuda_oom_is_a_trial_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def oom(task: ToyTask, model: nn.Module) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    task = make_task(on_loss=oom)
    with pytest.raises(TrialFailure) as info:
        train_trial(task, make_groups(task), sample(), cfg(batch_size=8), device="cpu")
    assert info.value.diverged is False
    assert "out of memory" in info.value.reason
    assert "batch_size = 8" in info.value.reason
    assert "80.00 GiB" in info.value.reason  # the original message is kept


# --- determinism -------------------------------------------------------------------------------


@dataclass
class NoisyTask(ToyTask):
    """Augments with the global RNG and scores by validation loss (continuous, so seeds differ)."""

    metric: str = "loss"
    direction: Any = "minimize"

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        for x, y in super().train_batches(batch_size, generator):
            yield x + 0.1 * torch.randn(x.shape), y

    def evaluate(self, model: nn.Module, batches: Any) -> float:
        losses = [F.cross_entropy(model(x), y, reduction="sum") for x, y in batches]
        return float(sum(losses)) / len(self.y_val)


def test_same_seed_same_value_and_other_seeds_differ() -> None:
    # A fresh task: its first trial also counts the batches of an epoch (drawing augmentation noise
    # from the global RNG), and must still match the second.
    task = make_task(cls=NoisyTask)
    groups = make_groups(task)
    run = [
        train_trial(task, groups, sample(), cfg(epochs=2), device="cpu", seed=s).value
        for s in (0, 0, 1)
    ]
    assert run[0] == run[1]
    assert run[2] != run[0]


def test_epoch_length_is_not_taken_from_a_dead_task() -> None:
    # id() is reused once a task is gone; a cached count must not outlive its task.
    for _ in range(3):
        big = make_task(40)
        assert steps_per_epoch(big, 4) == 10
        del big  # freed at once (no cycles), so the next task usually gets its id
        small = make_task(8)
        assert steps_per_epoch(small, 4) == 2
        del small


def test_epoch_length_counts_plain_iterables() -> None:
    task = make_task(60)
    assert steps_per_epoch(task, 8) == 8  # a generator: counted by iterating
    assert steps_per_epoch(task, 8) == 8  # and again from the cache
    assert steps_per_epoch(task, 16) == 4


# --- devices and precision ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device_type", "precision", "bf16_ok", "expected"),
    [
        ("cpu", "auto", True, "fp32"),
        ("cpu", "fp32", True, "fp32"),
        ("cpu", "bf16", True, LrsearchError("use auto or fp32")),
        ("cpu", "fp16", True, LrsearchError("use auto or fp32")),
        ("cuda", "auto", True, "bf16"),
        ("cuda", "auto", False, "fp16"),
        ("cuda", "fp32", True, "fp32"),
        ("cuda", "fp16", True, "fp16"),
        ("cuda", "bf16", True, "bf16"),
        ("cuda", "bf16", False, LrsearchError("use auto or fp16")),
        ("cuda", "fp8", True, LrsearchError("auto, fp32, bf16 or fp16")),
        ("cpu", "half", True, LrsearchError("auto, fp32, bf16 or fp16")),
    ],
)
def test_resolve_precision(
    device_type: str,
    precision: str,
    bf16_ok: bool,
    expected: str | LrsearchError,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # torch.device("cuda") is only a name: nothing touches a GPU here.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    device = torch.device(device_type)
    if isinstance(expected, LrsearchError):
        with pytest.raises(LrsearchError, match=str(expected)):
            resolve_precision(precision, device)
    else:
        assert resolve_precision(precision, device) == expected


@pytest.mark.parametrize("device", [None, "", "auto"])
def test_resolve_device_auto(device: str | None) -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(device).type == expected


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("gpu0", "unknown device"),
        ("cuda:x", "unknown device"),
        ("", None),
        ("meta", "unsupported device"),
        ("cpu", None),
        ("cuda", "CUDA is not available"),
        ("cuda:0", "CUDA is not available"),
    ],
)
def test_resolve_device_checks(device: str, message: str | None) -> None:
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("checks the error given without CUDA")
    if message is None:
        assert resolve_device(device).type in ("cpu", "cuda")
        return
    with pytest.raises(LrsearchError, match=message):
        resolve_device(device)


def test_train_trial_reports_what_it_ran_on() -> None:
    task = make_task()
    result = train_trial(task, make_groups(task), sample(), cfg(), device="cpu")
    assert (result.device, result.precision) == ("cpu", "fp32")
    assert result.seconds > 0
    with pytest.raises(LrsearchError, match="needs a CUDA device"):
        train_trial(task, make_groups(task), sample(), cfg(precision="bf16"), device="cpu")


# --- [train] compile -----------------------------------------------------------------------------


@pytest.mark.slow  # torch.compile builds C++ kernels on the CPU: tens of seconds the first time
def test_compile_trains_the_same_model_and_reuses_its_code(monkeypatch: pytest.MonkeyPatch) -> None:
    task = make_task()
    groups = make_groups(task)
    wrapped: list[nn.Module] = []
    real = trainer.compiled

    def spy(module: nn.Module) -> nn.Module:
        wrapped.append(module)
        return real(module)

    monkeypatch.setattr(trainer, "compiled", spy)
    plain = train_trial(task, groups, sample(), cfg(epochs=2), device="cpu", seed=0)
    assert wrapped == []  # off by default
    fast = [
        train_trial(task, groups, sample(), cfg(epochs=2, compile=True), device="cpu", seed=0)
        for _ in range(2)
    ]
    assert wrapped == task.built[1:]  # each compiled trial compiled its own model's forward
    for result in fast:
        assert result.value == pytest.approx(plain.value, abs=1e-6)
        assert result.steps == plain.steps
    # A frozen body trains only what follows it; the optimizer sees the model's own parameters.
    frozen = train_trial(
        task, groups, sample(body=0.0), cfg(epochs=2, compile=True), device="cpu", seed=0
    )
    body = task.built[-1][0]
    assert torch.equal(body.weight, task.initial[-1]["0.weight"])
    assert math.isfinite(frozen.value)

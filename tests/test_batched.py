"""Batched trials on the CPU: K stacked copies train as K separate ``train_trial`` runs would."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import optuna
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrsearch.errors import LrsearchError, TrialFailure
from lrsearch.groups import LayerGroups, resolve_groups
from lrsearch.space import Sample
from lrsearch.spec import TrainSection
from lrsearch.tasks import TensorClassificationTask
from lrsearch.tasks.digits import digits_transfer
from lrsearch.training import (
    BatchingUnsupported,
    TrainResult,
    can_batch,
    train_batched,
    train_trial,
)
from lrsearch.training.stacked_optim import StackedOptimizer

TOL = {"rtol": 1e-4, "atol": 1e-5}
CFG = TrainSection(
    epochs=2,
    batch_size=8,
    eval_every=3,
    precision="fp32",
    schedule="warmup_cosine",
    warmup_ratio=0.2,
    grad_clip=1.0,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Net(nn.Module):
    """``embed`` -> ``norm`` (BatchNorm, or nothing) -> ``body`` -> ``head``."""

    def __init__(self, norm: bool = False) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.norm = nn.BatchNorm1d(8) if norm else nn.Identity()
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(torch.tanh(self.norm(self.embed(x))))))


@dataclass
class LossTask(TensorClassificationTask):
    """Scored by validation loss (continuous, so small differences show) and remembering the
    parameters it saw at each evaluation."""

    seen: list[dict[str, torch.Tensor]] = field(default_factory=list)
    item_in_loss: bool = False
    power: int = 1  # 4: a huge loss overflows to inf (a diverging trial)

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        loss = super().loss(model, batch) ** self.power
        if self.item_in_loss:
            loss = loss * (1.0 if loss.item() > 0 else 2.0)  # data-dependent: vmap refuses
        return loss

    def evaluate(self, model: nn.Module, batches: Iterable[Any]) -> float:
        self.seen.append({n: p.detach().clone() for n, p in model.named_parameters()})
        total = n = 0.0
        for x, y in batches:
            total += float(F.cross_entropy(model(x), y, reduction="sum"))
            n += len(y)
        return total / n


def _model(norm: bool) -> nn.Module:
    # Seeded by the trainer (torch.manual_seed(seed)): each seed gets its own initial weights.
    return Net(norm)


def _task(norm: bool = False, **kwargs: Any) -> LossTask:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return LossTask(
        lambda: _model(norm), x[:36], y[:36], x[36:], y[36:], direction="minimize", **kwargs
    )


GROUPS = {"embed": ["embed"], "body": ["body", "norm"], "head": ["head"]}


def _groups(task: Any) -> LayerGroups:
    return resolve_groups(task.build_model(), GROUPS)


SAMPLES = [
    Sample({"embed": 1e-2, "body": 3e-3, "head": 3e-2}),
    Sample({"embed": 0.0, "body": 1e-2, "head": 1e-1}, weight_decay=0.2),
    Sample({"embed": 3e-3, "body": 1e-3, "head": 0.0}, weight_decay=0.0),
]
SEEDS = [0, 1, 2]

Log = list[tuple[int, float]]


def _recorder(log: Log) -> Callable[[int, float], None]:
    return lambda step, value: log.append((step, value))


def _separate(task: Any, samples: list[Sample], cfg: TrainSection) -> tuple[list[Any], list[Log]]:
    logs: list[Log] = [[] for _ in samples]
    results: list[Any] = []
    for sample, seed, log in zip(samples, SEEDS, logs, strict=True):
        try:
            results.append(
                train_trial(task, _groups(task), sample, cfg, seed=seed, report=_recorder(log))
            )
        except Exception as e:
            results.append(e)
    return results, logs


def _together(
    task: Any, samples: list[Sample], cfg: TrainSection, reports: list[Any] | None = None
) -> tuple[list[Any], list[Log]]:
    logs: list[Log] = [[] for _ in samples]
    results = train_batched(
        task,
        _groups(task),
        samples,
        cfg,
        device="cpu",
        seeds=SEEDS[: len(samples)],
        reports=reports or [_recorder(log) for log in logs],
    )
    return results, logs


def _assert_logs_close(got: Log, want: Log) -> None:
    assert [s for s, _ in got] == [s for s, _ in want]
    torch.testing.assert_close([v for _, v in got], [v for _, v in want], **TOL)


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_matches_separate_runs(optimizer: str) -> None:
    cfg = TrainSection(**{**CFG.__dict__, "optimizer": optimizer})
    want, want_logs = _separate(_task(), SAMPLES, cfg)
    task = _task()
    got, got_logs = _together(task, SAMPLES, cfg)
    for g, w, gl, wl in zip(got, want, got_logs, want_logs, strict=True):
        assert isinstance(g, TrainResult) and isinstance(w, TrainResult)
        assert (g.steps, g.evaluations) == (w.steps, w.evaluations)
        torch.testing.assert_close(g.value, w.value, **TOL)
        _assert_logs_close(gl, wl)
    # The last evaluation saw each copy's final weights: equal to the separate runs' ones.
    reference = _task()
    _separate(reference, SAMPLES, cfg)
    per_run = len(reference.seen) // len(SAMPLES)
    for k in range(len(SAMPLES)):
        final = task.seen[-len(SAMPLES) + k]
        torch.testing.assert_close(final, reference.seen[(k + 1) * per_run - 1], **TOL)


def test_frozen_groups_unchanged_in_their_copy_only() -> None:
    task = _task()
    _together(task, SAMPLES, CFG)
    first, last = task.seen[: len(SAMPLES)], task.seen[-len(SAMPLES) :]
    built = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        built.append(dict(task.build_model().named_parameters()))
    for k, sample in enumerate(SAMPLES):
        for name, value in last[k].items():
            group = name.split(".")[0]
            if sample.lrs[group] == 0:  # frozen here: bit for bit as built, weight decay or not
                assert torch.equal(value, built[k][name]), (k, name)
            else:
                assert not torch.equal(value, first[k][name]) or not torch.equal(
                    value, built[k][name]
                ), (k, name)
    # Copy 2 freezes the head, copy 1 the embedding; the other copies train them.
    assert torch.equal(last[2]["head.weight"], built[2]["head.weight"])
    assert not torch.equal(last[0]["head.weight"], built[0]["head.weight"])
    assert torch.equal(last[1]["embed.weight"], built[1]["embed.weight"])


def test_digits_matches_separate_runs() -> None:
    task = digits_transfer(n_train=48, n_val=60, hidden=32, pretrain_epochs=3)
    groups = resolve_groups(task.build_model(), auto_depth=1)
    samples = [
        Sample({"stem": 1e-3, "body": 1e-3, "head": 1e-2}),
        Sample({"stem": 0.0, "body": 1e-4, "head": 3e-2}),
        Sample({"stem": 0.0, "body": 0.0, "head": 1e-2}),
    ]
    cfg = TrainSection(epochs=2, batch_size=16, eval_every=2, precision="fp32")
    logs: list[Log] = [[] for _ in samples]
    got = train_batched(
        task, groups, samples, cfg, seeds=[3, 4, 5], reports=[_recorder(x) for x in logs]
    )
    for k, sample in enumerate(samples):
        want_log: Log = []
        want = train_trial(task, groups, sample, cfg, seed=3 + k, report=_recorder(want_log))
        result = got[k]
        assert isinstance(result, TrainResult)
        assert result.value == pytest.approx(want.value, abs=1e-6)
        _assert_logs_close(logs[k], want_log)


def test_pruned_slot_stops_while_the_others_go_on() -> None:
    logs: list[Log] = [[] for _ in SAMPLES]

    def prune_at_6(step: int, value: float) -> None:
        logs[1].append((step, value))
        if step >= 6:
            raise optuna.TrialPruned(f"pruned at step {step}")

    reports = [_recorder(logs[0]), prune_at_6, _recorder(logs[2])]
    got, _ = _together(_task(), SAMPLES, CFG, reports)
    want, want_logs = _separate(_task(), SAMPLES, CFG)
    assert isinstance(got[1], optuna.TrialPruned)
    assert [s for s, _ in logs[1]] == [3, 6]  # no report after the one that pruned it
    _assert_logs_close(logs[1], want_logs[1][:2])
    for k in (0, 2):
        assert isinstance(got[k], TrainResult)
        torch.testing.assert_close(got[k].value, want[k].value, **TOL)
        _assert_logs_close(logs[k], want_logs[k])


def test_diverging_slot_fails_alone() -> None:
    cfg = TrainSection(**{**CFG.__dict__, "optimizer": "sgd", "grad_clip": None})
    samples = [SAMPLES[0], Sample({"embed": 1e30, "body": 1e30, "head": 1e30}), SAMPLES[2]]
    got, logs = _together(_task(power=4), samples, cfg)
    want, want_logs = _separate(_task(power=4), samples, cfg)
    assert isinstance(want[1], TrialFailure) and want[1].diverged
    assert isinstance(got[1], TrialFailure) and got[1].diverged
    assert str(got[1]) == str(want[1])
    for k in (0, 2):
        assert isinstance(got[k], TrainResult)
        torch.testing.assert_close(got[k].value, want[k].value, **TOL)
        _assert_logs_close(logs[k], want_logs[k])


def test_all_frozen_trial_only_evaluates() -> None:
    samples = [SAMPLES[0], Sample({"embed": 0.0, "body": 0.0, "head": 0.0})]
    got, logs = _together(_task(), samples, CFG)
    assert isinstance(got[1], TrainResult) and got[1].steps == 0
    assert [s for s, _ in logs[1]] == [0]
    assert isinstance(got[0], TrainResult) and got[0].steps == 10


def test_batchnorm_in_train_mode_is_refused_with_the_reason() -> None:
    task = _task(norm=True)
    groups = _groups(task)
    reason = can_batch(task, groups, SAMPLES, cfg=CFG, device="cpu")
    assert reason is not None and "BatchNorm layer 'norm'" in reason and "[0, 1, 2]" in reason
    with pytest.raises(BatchingUnsupported, match="BatchNorm layer 'norm'") as info:
        train_batched(task, groups, SAMPLES, CFG, seeds=SEEDS, reports=[None] * 3)
    assert isinstance(info.value, LrsearchError) and info.value.reason == reason
    unfrozen = TrainSection(**{**CFG.__dict__, "freeze_batchnorm": False})
    frozen_body = [Sample({**s.lrs, "body": 0.0}, s.weight_decay) for s in SAMPLES]
    assert "freeze_batchnorm = false" in str(can_batch(task, groups, frozen_body, cfg=unfrozen))


def test_frozen_batchnorm_batches_and_matches() -> None:
    samples = [Sample({**s.lrs, "body": 0.0}, s.weight_decay) for s in SAMPLES]
    task = _task(norm=True)
    assert can_batch(task, _groups(task), samples, cfg=CFG) is None
    got, logs = _together(task, samples, CFG)
    want, want_logs = _separate(_task(norm=True), samples, CFG)
    for k in range(len(samples)):
        torch.testing.assert_close(got[k].value, want[k].value, **TOL)
        _assert_logs_close(logs[k], want_logs[k])


def test_what_vmap_rejects_is_refused_before_any_report() -> None:
    task = _task(item_in_loss=True)
    logs: list[Log] = [[] for _ in SAMPLES]
    with pytest.raises(BatchingUnsupported, match="vmap cannot run"):
        train_batched(
            task, _groups(task), SAMPLES, CFG, seeds=SEEDS, reports=[_recorder(x) for x in logs]
        )
    assert logs == [[], [], []]


def test_fp16_and_bad_arguments_are_refused() -> None:
    task = _task()
    cpu = torch.device("cpu")
    assert can_batch(task, _groups(task), [], cfg=CFG, device=cpu) == "no trials given"
    with pytest.raises(ValueError, match="one entry per trial"):
        train_batched(task, _groups(task), SAMPLES, CFG, seeds=[0], reports=[None] * 3)


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_stacked_optimizer_matches_torch(optimizer: str) -> None:
    g = torch.Generator().manual_seed(0)
    lrs = [1e-2, 0.0, 3e-3]
    decays = [0.1, 0.5, 0.0]
    stacked = torch.randn(3, 5, 4, generator=g)
    copies = [stacked[k].clone().requires_grad_() for k in range(3)]
    torch_opts = [
        {
            "adamw": torch.optim.AdamW,
            "adam": torch.optim.Adam,
            "sgd": lambda p, **kw: torch.optim.SGD(p, momentum=0.9, **kw),
        }[optimizer]([c], lr=lr, weight_decay=wd)
        for c, lr, wd in zip(copies, lrs, decays, strict=True)
    ]
    stacked.requires_grad_()
    mine = StackedOptimizer(
        optimizer,
        {"w": stacked},
        {"w": torch.tensor(lrs)},
        {"w": torch.tensor(decays)},
        momentum=0.9 if optimizer == "sgd" else 0.0,
    )
    for step in range(1, 8):
        grad = torch.randn(3, 5, 4, generator=g)
        grad[1] = float("nan")  # a frozen copy's gradient must not matter
        stacked.grad = grad.clone()
        factor = 0.5 + 0.1 * step  # a schedule scales every copy's own rate
        mine.step({"w": stacked}, step, factor)
        for k, (copy, opt) in enumerate(zip(copies, torch_opts, strict=True)):
            if lrs[k] == 0:
                continue
            for group in opt.param_groups:
                group["lr"] = lrs[k] * factor
            copy.grad = grad[k].clone()
            opt.step()
    for k, copy in enumerate(copies):
        torch.testing.assert_close(stacked[k].detach(), copy.detach(), rtol=1e-5, atol=1e-6)
    assert torch.equal(stacked[1].detach(), copies[1].detach())  # frozen: untouched


def test_stacked_optimizer_keeps_tensors_and_dtypes_apart() -> None:
    """Two tensors with their own rates, one float64: each copy of each moves as torch moves it."""
    g = torch.Generator().manual_seed(1)
    rates = {"w": [1e-2, 0.0, 3e-3], "b": [0.0, 5e-3, 1e-3]}
    shapes = {"w": (3, 4, 2), "b": (3, 6)}
    dtypes = {"w": torch.float32, "b": torch.float64}
    stacked = {n: torch.randn(shapes[n], generator=g, dtype=dtypes[n]) for n in rates}
    copies = {n: [stacked[n][k].clone().requires_grad_() for k in range(3)] for n in rates}
    torch_opts = [
        torch.optim.AdamW(
            [{"params": [copies[n][k]], "lr": rates[n][k]} for n in rates], weight_decay=0.1
        )
        for k in range(3)
    ]
    mine = StackedOptimizer(
        "adamw",
        {n: t.requires_grad_() for n, t in stacked.items()},
        {n: torch.tensor(r) for n, r in rates.items()},
        {n: torch.full((3,), 0.1) for n in rates},
    )
    for step in range(1, 6):
        grads = {n: torch.randn(shapes[n], generator=g, dtype=dtypes[n]) for n in rates}
        for n, t in stacked.items():
            t.grad = grads[n].clone()
        mine.step(stacked, step, 1.0, clip=0.5)
        for k, opt in enumerate(torch_opts):
            for n in rates:
                copies[n][k].grad = grads[n][k].clone() if rates[n][k] else None
            torch.nn.utils.clip_grad_norm_([copies[n][k] for n in rates if rates[n][k]], 0.5)
            opt.step()
    for n in rates:
        for k in range(3):
            torch.testing.assert_close(stacked[n][k].detach(), copies[n][k].detach())

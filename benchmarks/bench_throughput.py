"""Trials per hour of the same study on the real tasks, execution modes side by side.

Every mode trains the same fixed list of samples (per-group rates with the lower half of the
network frozen), trial ``i`` with seed ``i`` as a search would, on the same task object:

- **naive**: what a tuner that knows nothing of freezing runs, and what ``torch.optim`` does with
  an ``lr = 0`` param group in a user's own loop: the frozen groups get ``lr = 1e-30`` instead of
  0, so every parameter keeps ``requires_grad``, backward runs through the whole network and the
  optimizer updates every group's state, while no weight moves (the steps are below float32's
  resolution). BatchNorm in those groups then runs in train mode, as it does under plain
  PyTorch with ``lr = 0``. Its ratio is reported beside each mode (``ratio_vs_naive``).
- **plain**: lrsearch's trainer on the task without its ``StagedTask`` capability (a wrapper that
  hides it), so the whole model runs forward; frozen groups are ``requires_grad=False`` (the
  foundation's rule), so autograd already records nothing below the first trained group.
- **freeze_aware**: the task as it is, ``[train] prefix_cache = false``: the frozen prefix runs
  under ``torch.no_grad`` and ``task.rest`` on its output.
- **cache**: ``prefix_cache = true``. The first trial computes the prefix's outputs for every
  example (reported apart, as ``first_trial_seconds``); the others (and the first sample once more,
  to show a hit gives what the miss gave) read them. Its figures are the warm trials'.
- **compiled** (only when ``--modes`` names it): ``plain`` with ``[train] compile = true``. Its
  first trial compiles (reported apart, as ``first_trial_seconds``) and runs sample 0 again
  afterwards; its figures are the warm trials'. It agrees with ``plain`` where the trained part has
  no dropout (compiled kernels draw their own random numbers).
- **batched_k4**, **batched_k8**: ``lrsearch.training.train_batched``, K trials in one vmapped step;
  where ``can_batch`` or the first step refuses, the reason is recorded instead of a number.

What the values should show: ``plain`` and ``freeze_aware`` train the same (same dropout draws);
``cache`` equals them where the frozen prefix has no dropout (MobileNetV2, digits), while with
dropout in the prefix (MiniLM's embeddings) it trains with the prefix in eval mode, the documented
rule, so only its miss and hit agree; batched trials draw dropout per copy (vmap), so they agree
with ``plain`` only on models without dropout in the trained part (digits). MiniLM cuts each batch
to its longest review; batched trials need one shape for every copy, so its batched modes use the
task with ``train_width = "split"`` (every training batch cut to the longest training review),
and pay that padding.

**Frozen depth** (``--sweep``, on by default): the cache's gain depends on how much of the forward
pass the frozen prefix is, so for every depth (the first 1, 2, ... groups frozen, the rest
trained) ``plain`` and ``cache`` are measured again, beside the prefix's share of the forward
pass (``prefix_forward_share``: the prefix and the rest timed apart under ``no_grad``) and what a
simple cost model predicts: a training example costs ``P + 3S`` without the cache and ``3S`` with
it (backward about twice forward), an evaluated one ``P + S`` and ``S``, where ``P`` and ``S`` are
the prefix's and the rest's forward cost.

Run (about 10-15 minutes on a 2-core CPU; ``--quick`` about 3; ``--device cuda`` on a GPU also
records peak GPU memory per mode)::

    python benchmarks/bench_throughput.py
    python benchmarks/bench_throughput.py --quick --tasks mobilenet

Results go to ``benchmarks/results/throughput.json`` (``--out``). Torch runs with
``--threads`` (default 1) threads: on a CPU shared with other jobs, more made every mode slower and
noisier. Seconds are wall time; CPU seconds of the process are recorded beside them, since a busy
machine inflates wall time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrsearch import training
from lrsearch.groups import LayerGroups, resolve_groups
from lrsearch.space import Sample
from lrsearch.spec import TrainSection
from lrsearch.tasks import Batch, Task
from lrsearch.training import (
    BatchingUnsupported,
    TrainResult,
    can_batch,
    prefix,
    resolve_device,
    steps_per_epoch,
    train_batched,
    train_trial,
)

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import _common  # noqa: E402

DEFAULT_OUT = _HERE / "results" / "throughput.json"
TARGET = 3.0  # the issue's: at least 3x with the cache when half the network is frozen
ONE_AT_A_TIME = ("naive", "plain", "freeze_aware", "cache")
OPTIONAL = ("compiled",)  # run only when --modes names them
NAIVE_LR = 1e-30  # "frozen" as a tuner without freezing has it: trained, but no weight moves
CACHE_DROPOUT = "dropout in the frozen prefix, which runs in eval mode with prefix_cache"
AGREE = 1e-6  # accuracies: equal up to float noise in the last digit


# --- the tasks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """One task of the benchmark: how to build it, its groups, what is frozen, how it trains."""

    name: str
    build: Callable[..., Task]
    kwargs: dict[str, Any]
    groups: dict[str, list[str]]
    frozen: tuple[str, ...]
    lr: tuple[float, float]
    head: str
    head_lr: tuple[float, float]
    train: TrainSection
    batched_kwargs: dict[str, Any] | None = None  # other task kwargs for the batched modes

    def task(self, batched: bool = False) -> Task:
        extra = (self.batched_kwargs or {}) if batched else {}
        return self.build(**self.kwargs, **extra)


def _digits(**kwargs: Any) -> Task:
    from lrsearch.tasks.digits import digits_transfer

    return digits_transfer(**kwargs)


def _mobilenet(**kwargs: Any) -> Task:
    from lrsearch.tasks.vision import fashion_mnist_mobilenet

    return fashion_mnist_mobilenet(**kwargs)


def _minilm(**kwargs: Any) -> Task:
    from lrsearch.tasks.text import rotten_tomatoes_minilm

    return rotten_tomatoes_minilm(**kwargs)


def _train(batch_size: int, steps: int, evals: int, **extra: Any) -> TrainSection:
    # One epoch of `steps` batches with `evals` evaluations, the study files' optimizer and
    # schedule; eval_batch_size also sets the batches that fill the cache.
    return TrainSection(
        optimizer="adamw",
        epochs=1,
        batch_size=batch_size,
        schedule="warmup_cosine",
        warmup_ratio=0.1,
        eval_every=max(1, steps // evals),
        **extra,
    )


def setups(size: str) -> dict[str, Setup]:
    """The tasks at ``size``: ``default`` (~10-15 min on 2 CPU cores), ``quick``, ``tiny``."""
    # The study files' groups; importing the module needs none of the task's packages.
    from lrsearch.tasks.vision import STAGES as MOBILENET_GROUPS

    # (training, validation) examples; the study files' ratios (2:1 images, 1:1 reviews), smaller.
    mobilenet_n, minilm_n, minilm_batch, digits_n = {
        "default": ((512, 256), (256, 256), 32, (300, 299)),
        "quick": ((128, 256), (48, 96), 16, (150, 299)),
        "tiny": ((64, 64), (32, 32), 16, (75, 299)),
        # MiniLM as a user fine-tunes it on a GPU: 8,000 reviews, seq 128, 250 steps of 32.
        "realistic": ((512, 256), (8000, 1000), 32, (300, 299)),
    }[size]
    minilm_seq = 128 if size == "realistic" else 64
    return {
        "mobilenet": Setup(
            name="mobilenet",
            build=_mobilenet,
            kwargs={"n_train": mobilenet_n[0], "n_val": mobilenet_n[1], "image_size": 32},
            groups={g: list(paths) for g, paths in MOBILENET_GROUPS.items()},
            frozen=("stem", "stage2", "stage3", "stage4"),
            lr=(1e-5, 1e-2),
            head="head",
            head_lr=(1e-4, 1e-1),
            train=_train(32, mobilenet_n[0] // 32, 2, eval_batch_size=256),
        ),
        "minilm": Setup(
            name="minilm",
            build=_minilm,
            kwargs={"n_train": minilm_n[0], "n_val": minilm_n[1], "seq_len": minilm_seq},
            groups={
                "embeddings": ["encoder.embeddings"],
                "layers_0_1": ["encoder.encoder.layer.[01].*"],
                "layers_2_3": ["encoder.encoder.layer.[23].*"],
                "layers_4_5": ["encoder.encoder.layer.[45].*"],
                "head": ["head"],
            },
            frozen=("embeddings", "layers_0_1", "layers_2_3"),
            lr=(1e-5, 3e-3),
            head="head",
            head_lr=(1e-4, 3e-2),
            train=_train(minilm_batch, minilm_n[0] // minilm_batch, 2, eval_batch_size=64),
        ),
        "digits": Setup(
            name="digits",
            build=_digits,
            kwargs={"n_train": digits_n[0], "n_val": digits_n[1], "hidden": 256},
            groups={"stem": ["stem"], "body0": ["body.0"], "body1": ["body.1"], "head": ["head"]},
            frozen=("stem", "body0"),
            lr=(1e-4, 1e-2),
            head="head",
            head_lr=(1e-3, 1e-1),
            train=_train(32, digits_n[0] // 32, 2, eval_batch_size=64),
        ),
    }


class Plain:
    """``task`` without the ``StagedTask`` capability: the trainer runs its whole model."""

    def __init__(self, task: Task) -> None:
        self._task = task
        self.metric, self.direction = task.metric, task.direction

    def build_model(self) -> nn.Module:
        return self._task.build_model()

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterable[Batch]:
        return self._task.train_batches(batch_size, generator)

    def val_batches(self, batch_size: int) -> Iterable[Batch]:
        return self._task.val_batches(batch_size)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self._task.loss(model, batch)

    def evaluate(self, model: nn.Module, batches: Iterable[Batch]) -> float:
        return self._task.evaluate(model, batches)


def samples(setup: Setup, groups: LayerGroups, n: int) -> list[Sample]:
    """``n`` fixed samples: the frozen groups at 0, the others spread over their log ranges."""
    out = []
    for i in range(n):
        lrs = {}
        for j, g in enumerate(groups.names):
            if g in setup.frozen:
                lrs[g] = 0.0
                continue
            low, high = setup.head_lr if g == setup.head else setup.lr
            frac = (0.3 + 0.618 * i + 0.29 * j) % 1.0  # a golden-ratio walk: spread, fixed
            lrs[g] = float(f"{low * (high / low) ** frac:.3g}")
        out.append(Sample(lrs))
    return out


def naive(sample: Sample) -> Sample:
    """``sample`` with each frozen group trained at ``NAIVE_LR``: plain PyTorch's ``lr = 0``."""
    return replace(sample, lrs={g: lr or NAIVE_LR for g, lr in sample.lrs.items()})


# --- measuring ------------------------------------------------------------------------------


class Meter:
    """Wall and process CPU seconds, and peak CUDA memory, of what runs inside ``with``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.wall = self.cpu = 0.0
        self.peak_mb: float | None = None

    def __enter__(self) -> Meter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.peak_mb = max(self.peak_mb or 0.0, peak)
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c


def _figures(walls: Sequence[float], cpus: Sequence[float]) -> dict[str, Any]:
    wall = statistics.fmean(walls)
    return {
        "seconds_per_trial": round(wall, 4),
        "median_seconds_per_trial": round(statistics.median(walls), 4),
        "cpu_seconds_per_trial": round(statistics.fmean(cpus), 4),
        "trials_per_hour": round(3600 / wall, 1),
        "seconds": [round(w, 4) for w in walls],
    }


def one_at_a_time(
    mode: str,
    task: Task,
    groups: LayerGroups,
    todo: list[Sample],
    cfg: TrainSection,
    device: torch.device,
) -> dict[str, Any]:
    """Each sample as its own trial; the cache mode reports its filling trial apart."""
    cfg = replace(cfg, prefix_cache=mode == "cache", compile=mode == "compiled")
    run_task: Task = Plain(task) if mode in ("plain", "naive", "compiled") else task
    if mode == "naive":
        todo = [naive(s) for s in todo]
    training.clear_cache()
    # The cache fills on sample 0 and serves it again last; compile compiles on an extra sample 0.
    order = ([0] if mode == "compiled" else []) + list(range(len(todo)))
    order += [0] if mode == "cache" else []
    walls, cpus, values, results = [], [], [], []
    meter = Meter(device)
    for i in order:
        one = Meter(device)
        with one:
            result = train_trial(run_task, groups, todo[i], cfg, device=device, seed=i)
        if one.peak_mb is not None:
            meter.peak_mb = max(meter.peak_mb or 0.0, one.peak_mb)
        walls.append(one.wall)
        cpus.append(one.cpu)
        values.append(result.value)
        results.append(result)
    out: dict[str, Any] = {}
    if mode == "cache":
        info = training.cache_info()
        out["first_trial_seconds"] = round(walls[0], 4)
        out["first_trial_cpu_seconds"] = round(cpus[0], 4)
        out["cache"] = {
            "hits": info.hits,
            "misses": info.misses,
            "entry_mb": round(info.nbytes / 2**20, 2),
        }
        # The first sample ran twice: filling the cache, and once more from it.
        out["repeat_of_first_value"] = values[-1]
        out["miss_equals_hit"] = abs(values[-1] - values[0]) <= AGREE
        out |= _figures(walls[1:], cpus[1:])
        values = values[:-1]
    elif mode == "compiled":
        out["first_trial_seconds"] = round(walls[0], 4)  # the compilation
        out["first_trial_cpu_seconds"] = round(cpus[0], 4)
        out |= _figures(walls[1:], cpus[1:])
        values = values[1:]
    else:
        out |= _figures(walls, cpus)
    out["values"] = values
    out["frozen_prefix_stages"] = results[0].frozen_prefix
    out["prefix_cached"] = results[0].prefix_cached
    if meter.peak_mb is not None:
        out["peak_gpu_memory_mb"] = round(meter.peak_mb, 1)
    training.clear_cache()
    return out


def batched(
    k: int,
    task: Task,
    groups: LayerGroups,
    todo: list[Sample],
    cfg: TrainSection,
    device: torch.device,
) -> dict[str, Any]:
    """The samples in chunks of ``k``, each chunk one ``train_batched`` call."""
    problem = can_batch(task, groups, todo[:k], cfg=cfg, device=device)
    if problem is not None:
        return {"unsupported": problem}
    walls, cpus, values = [], [], []
    meter = Meter(device)
    # Untimed warm-up: one chunk of K, as the one-at-a-time modes' first trial (vmap's first call
    # at a new K pays for its own set-up).
    try:
        train_batched(
            task, groups, todo[:k], cfg, device=device, seeds=list(range(k)), reports=[None] * k
        )
    except BatchingUnsupported as e:
        return {"unsupported": e.reason}
    for start in range(0, len(todo), k):
        chunk = list(range(start, min(start + k, len(todo))))
        one = Meter(device)
        try:
            with one:
                results = train_batched(
                    task,
                    groups,
                    [todo[i] for i in chunk],
                    cfg,
                    device=device,
                    seeds=chunk,
                    reports=[None] * len(chunk),
                )
        except BatchingUnsupported as e:
            return {"unsupported": e.reason}
        if one.peak_mb is not None:
            meter.peak_mb = max(meter.peak_mb or 0.0, one.peak_mb)
        for r in results:
            if not isinstance(r, TrainResult):
                raise r
            values.append(r.value)
        # Each trial of the chunk costs its share of the chunk's time.
        walls += [one.wall / len(chunk)] * len(chunk)
        cpus += [one.cpu / len(chunk)] * len(chunk)
    out = _figures(walls, cpus) | {"k": k, "values": values}
    if meter.peak_mb is not None:
        out["peak_gpu_memory_mb"] = round(meter.peak_mb, 1)
    return out


def bench_task(
    setup: Setup,
    n_trials: int,
    ks: Sequence[int],
    device: torch.device,
    sweep_trials: int = 0,
    run_modes: Sequence[str] = ONE_AT_A_TIME,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    task = setup.task()
    groups = resolve_groups(task.build_model(), setup.groups)
    todo = samples(setup, groups, n_trials)
    cfg = setup.train
    steps = steps_per_epoch(task, cfg.batch_size)
    # Untimed warm-up, a whole trial: the first steps and evaluations of a process pay for the
    # allocator, kernel selection and library handles (on an H200 a first MiniLM trial took 3.3 s
    # after a one-step warm-up, a warm one 0.15 s), which would be charged to the first mode.
    train_trial(task, groups, todo[0], cfg, device=device, seed=0)
    prepared = time.perf_counter() - t0
    modes: dict[str, Any] = {}
    for mode in run_modes:
        print(f"  {setup.name:9s} {mode} ...", flush=True)
        modes[mode] = one_at_a_time(mode, task, groups, todo, cfg, device)
    batched_task = setup.task(batched=True) if setup.batched_kwargs else task
    for k in ks:
        print(f"  {setup.name:9s} batched K={k} ...", flush=True)
        modes[f"batched_k{k}"] = batched(k, batched_task, groups, todo, cfg, device)
    plain = modes["plain"]
    model = task.build_model()
    prefix_paths = staged_prefix(task, model, groups, todo[0])
    why_not = {
        "cache": CACHE_DROPOUT if _has(model, prefix_paths, _is_dropout) else None,
        "naive": "BatchNorm in the frozen groups runs in train mode (its running statistics "
        "follow the data), as under plain PyTorch with lr = 0"
        if _has(model, prefix_paths, _is_batchnorm)
        else None,
    }
    for name, mode in modes.items():
        if "seconds_per_trial" not in mode:
            continue
        reason = why_not.get(name)
        if name.startswith("batched") and _has(model, [""], _is_dropout):
            reason = "dropout: vmap draws its masks per copy, not as a lone trial would"
        if name == "compiled" and _has(model, [""], _is_dropout):
            reason = "dropout: compiled kernels draw their own random numbers"
        mode["expected_to_agree"] = reason is None
        if reason is not None:
            mode["why_values_differ"] = reason
        mode["ratio"] = round(plain["seconds_per_trial"] / mode["seconds_per_trial"], 3)
        if "naive" in modes:
            mode["ratio_vs_naive"] = round(
                modes["naive"]["seconds_per_trial"] / mode["seconds_per_trial"], 3
            )
        mode["cpu_ratio"] = round(plain["cpu_seconds_per_trial"] / mode["cpu_seconds_per_trial"], 3)
        mode["max_abs_diff_vs_plain"] = _max_diff(mode["values"], plain["values"])
        mode["agrees_with_plain"] = mode["max_abs_diff_vs_plain"] <= AGREE
    cache = modes.get("cache", {})
    sweep = depth_sweep(setup, task, groups, sweep_trials, device) if sweep_trials else []
    return {
        "task_kwargs": setup.kwargs,
        "batched_task_kwargs": {**setup.kwargs, **(setup.batched_kwargs or {})},
        "train": {
            "optimizer": cfg.optimizer,
            "batch_size": cfg.batch_size,
            "steps_per_trial": steps,
            "eval_every": cfg.eval_every,
            "eval_batch_size": cfg.eval_batch_size,
            "schedule": cfg.schedule,
            "precision": cfg.precision,
        },
        "groups": list(groups.names),
        "frozen": list(setup.frozen),
        "n_trials": n_trials,
        "samples": [s.lrs for s in todo],
        "prepare_seconds": round(prepared, 2),
        "modes": modes,
        "cache_target": TARGET,
        "cache_target_met": "ratio" in cache and cache["ratio"] >= TARGET,
        "depth_sweep": sweep,
    }


def depth_sweep(
    setup: Setup, task: Task, groups: LayerGroups, n_trials: int, device: torch.device
) -> list[dict[str, Any]]:
    """``plain`` and ``cache`` with the first 1, 2, ... groups frozen: the cache's gain by depth."""
    cfg = setup.train
    steps = steps_per_epoch(task, cfg.batch_size)
    trained = steps * cfg.batch_size  # examples through one epoch's training steps
    evaluated = math.ceil(steps / cfg.eval_every) * _val_examples(task, cfg.eval_batch_size)
    model = task.build_model()
    rows = []
    for depth in range(1, len(groups.names)):
        frozen = groups.names[:depth]
        todo = samples(replace(setup, frozen=frozen), groups, n_trials)
        paths = staged_prefix(task, model, groups, todo[0])
        if not paths:
            continue
        print(f"  {setup.name:9s} sweep: {depth} frozen ({frozen[-1]}) ...", flush=True)
        share = forward_share(task, model, len(paths), cfg.eval_batch_size)
        plain = one_at_a_time("plain", task, groups, todo, cfg, device)
        cache = one_at_a_time("cache", task, groups, todo, cfg, device)
        p, r = share, 1.0 - share
        predicted = (trained * (p + 3 * r) + evaluated * (p + r)) / (
            trained * 3 * r + evaluated * r
        )
        rows.append(
            {
                "frozen": list(frozen),
                "prefix_stages": len(paths),
                "prefix_forward_share": round(share, 3),
                "plain_seconds_per_trial": plain["seconds_per_trial"],
                "cache_seconds_per_trial": cache["seconds_per_trial"],
                "cache_first_trial_seconds": cache["first_trial_seconds"],
                "ratio": round(plain["seconds_per_trial"] / cache["seconds_per_trial"], 3),
                "cpu_ratio": round(
                    plain["cpu_seconds_per_trial"] / cache["cpu_seconds_per_trial"], 3
                ),
                "cost_model_ratio": round(predicted, 3),
                "values_agree": _max_diff(plain["values"], cache["values"]) <= AGREE,
                **_sweep_agreement(model, paths),
            }
        )
    return rows


def _sweep_agreement(model: nn.Module, paths: Sequence[str]) -> dict[str, Any]:
    """Whether ``cache`` should give ``plain``'s values with this prefix, and if not, why."""
    if _has(model, paths, _is_dropout):
        return {"values_expected_to_agree": False, "why_values_differ": CACHE_DROPOUT}
    return {"values_expected_to_agree": True}


def forward_share(task: Task, model: nn.Module, upto: int, batch_size: int) -> float:
    """The share of a no-grad forward pass over the validation data spent in stages ``[0, upto)``.

    Timed twice, the second pass counted (the first pays for allocation).
    """
    staged = prefix.staged(task)
    assert staged is not None
    was = model.training
    model.eval()
    rest = staged.rest(model, upto)
    before = after = 0.0
    with torch.no_grad():
        for _ in range(2):
            before = after = 0.0
            for batch in task.val_batches(batch_size):
                t0 = time.perf_counter()
                mid = staged.run_prefix(model, batch, upto)
                t1 = time.perf_counter()
                task.loss(rest, mid)
                after += time.perf_counter() - t1
                before += t1 - t0
    model.train(was)
    return before / (before + after)


def _val_examples(task: Task, batch_size: int) -> int:
    return sum(prefix.rows(batch) for batch in task.val_batches(batch_size))


def staged_prefix(task: Task, model: nn.Module, groups: LayerGroups, sample: Sample) -> list[str]:
    """The stage paths of the frozen prefix that ``sample`` gives ``model`` (empty: none)."""
    staged = prefix.staged(task)
    if staged is None:
        return []
    frozen = {n for g in groups.names if sample.lrs[g] == 0 for n in groups.members(g)}
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen)
    return list(prefix.frozen_prefix(staged, model))


def _has(model: nn.Module, paths: Sequence[str], test: Callable[[nn.Module], bool]) -> bool:
    """Whether a module passing ``test`` sits in the modules at ``paths``."""
    return any(test(m) for p in paths for m in model.get_submodule(p).modules())


def _is_dropout(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0


def _is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _max_diff(a: Sequence[float], b: Sequence[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


# --- output ---------------------------------------------------------------------------------


def machine(device: torch.device, threads: int) -> dict[str, Any]:
    info = _common.machine()
    info["device"] = str(device)
    info["torch_threads"] = threads
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def print_table(results: dict[str, Any]) -> None:
    header = (
        f"{'task':10s} {'mode':13s} {'s/trial':>8s} {'median':>7s} {'trials/h':>9s} {'ratio':>6s} "
        f"{'cpu s':>7s} {'cpu ratio':>9s} {'agree':>6s} {'peak MB':>8s}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for name, res in results["tasks"].items():
        for mode, m in res["modes"].items():
            if "unsupported" in m:
                print(f"{name:10s} {mode:13s} refused: {m['unsupported']}")
                continue
            peak = f"{m['peak_gpu_memory_mb']:8.0f}" if "peak_gpu_memory_mb" in m else f"{'-':>8s}"
            agree = _agree(m["agrees_with_plain"], m["expected_to_agree"])
            print(
                f"{name:10s} {mode:13s} {m['seconds_per_trial']:8.3f} "
                f"{m['median_seconds_per_trial']:7.3f} {m['trials_per_hour']:9.0f} "
                f"{m['ratio']:6.2f} {m['cpu_seconds_per_trial']:7.3f} {m['cpu_ratio']:9.2f} "
                f"{agree:>6s} {peak}"
            )
        cache = res["modes"].get("cache", {})
        if "first_trial_seconds" in cache:
            print(
                f"{name:10s} {'':13s} cache: first trial (fills it) "
                f"{cache['first_trial_seconds']:.3f} s, "
                f"entry {cache['cache']['entry_mb']} MiB, miss == hit: {cache['miss_equals_hit']}"
            )
    print("\nno*: differs from plain, as expected (why_values_differ in the JSON)")
    print_sweep(results)


def print_sweep(results: dict[str, Any]) -> None:
    header = (
        f"{'task':10s} {'frozen up to':14s} {'fwd share':>9s} {'plain s':>8s} {'cache s':>8s} "
        f"{'ratio':>6s} {'model':>6s} {'agree':>6s}"
    )
    rows = [(n, r) for n, res in results["tasks"].items() for r in res["depth_sweep"]]
    if not rows:
        return
    print("\ncache by frozen depth\n" + header + "\n" + "-" * len(header))
    for name, r in rows:
        agree = _agree(r["values_agree"], r["values_expected_to_agree"])
        print(
            f"{name:10s} {r['frozen'][-1]:14s} {r['prefix_forward_share']:9.2f} "
            f"{r['plain_seconds_per_trial']:8.3f} {r['cache_seconds_per_trial']:8.3f} "
            f"{r['ratio']:6.2f} {r['cost_model_ratio']:6.2f} {agree:>6s}"
        )


def plot(results: dict[str, Any], path: Path) -> None:
    """The cache's ratio to plain against the frozen prefix's share of the forward pass."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, res in results["tasks"].items():
        rows = res["depth_sweep"]
        if not rows:
            continue
        x = [r["prefix_forward_share"] for r in rows]
        (line,) = ax.plot(x, [r["ratio"] for r in rows], marker="o", label=f"{name}: measured")
        ax.plot(
            x,
            [r["cost_model_ratio"] for r in rows],
            linestyle="--",
            color=line.get_color(),
            label=f"{name}: cost model",
        )
    ax.set_yscale("log")
    # The model has no fixed per-trial costs, so it runs off toward a head-only trial.
    ax.set_ylim(0.5, 100)
    ax.axhline(TARGET, color="grey", linewidth=0.8, linestyle=":")
    ax.axvline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("frozen prefix's share of the forward pass")
    ax.set_ylabel("trials per hour, cache / plain")
    ax.set_title(f"frozen-prefix cache by depth ({results['machine']['device']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _agree(agrees: bool, expected: bool) -> str:
    if agrees:
        return "yes"
    return "no*" if not expected else "NO"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks", default="mobilenet,minilm", help="comma list of: " + ", ".join(setups("tiny"))
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, ~3 minutes")
    parser.add_argument(
        "--size",
        choices=("default", "quick", "tiny", "realistic"),
        help="overrides --quick; realistic: MiniLM at 8,000 reviews, seq 128 (for a GPU)",
    )
    parser.add_argument(
        "--modes",
        default=",".join(ONE_AT_A_TIME),
        help="one-at-a-time modes to run, comma separated (batched ones come from --ks); "
        f"also {', '.join(OPTIONAL)} (not by default)",
    )
    parser.add_argument("--trials", type=int, default=8, help="samples, each trained in every mode")
    parser.add_argument("--ks", default="4,8", help="batched trial counts K, comma separated")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument(
        "--sweep-trials",
        type=int,
        default=3,
        help="samples per frozen depth in the depth sweep (0: no sweep)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    size = args.size or ("quick" if args.quick else "default")
    known = setups(size)
    names = [n.strip() for n in args.tasks.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        parser.error(f"--tasks: unknown {unknown}; choose from {', '.join(known)}")
    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if any(m not in ONE_AT_A_TIME + OPTIONAL for m in modes) or "plain" not in modes:
        parser.error(f"--modes: choose from {', '.join(ONE_AT_A_TIME + OPTIONAL)}, plain included")
    if args.trials < 1 or any(k < 1 for k in ks):
        parser.error("--trials and every K must be >= 1")
    if args.sweep_trials < 0:
        parser.error("--sweep-trials must be >= 0")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    try:
        results: dict[str, Any] = {
            "benchmark": "throughput",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python benchmarks/bench_throughput.py", *(argv or sys.argv[1:])]),
            "size": size,
            "tasks": {},
        }
        for name in names:
            results["tasks"][name] = bench_task(
                known[name],
                args.trials,
                ks,
                device,
                sweep_trials=args.sweep_trials,
                run_modes=modes,
            )
        results["machine"] = machine(device, args.threads)
        results["total_seconds"] = round(time.perf_counter() - t0, 1)
    finally:
        torch.set_num_threads(threads_before)
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=_json) + "\n")
    png = args.out.with_suffix(".png")
    plot(results, png)
    print(f"\nwrote {args.out} and {png} ({results['total_seconds']} s)")
    return results


def _json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


if __name__ == "__main__":
    main()

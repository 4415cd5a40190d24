"""Hand-written anchor: lrsearch's MiniLM trial and search against plain PyTorch and plain Optuna.

What an engine costs is judged against what a careful user would write without it. Four phases,
on the same task object (``rotten_tomatoes_minilm``), the same groups (the study files' pairs of
layers) and the same batches:

- **steps**: one trial of ``--steps`` training steps, timed twice per repeat:

  - *plain*: a PyTorch loop written here as a careful user would: ``task.build_model()``, the
    batches of ``task.train_batches(batch_size, torch.Generator().manual_seed(seed))`` moved to
    the device, AdamW with a param group per trained group (frozen groups ``requires_grad=False``
    and left out), ``fused=True`` on CUDA, bf16 autocast on CUDA and fp32 on the CPU,
    ``zero_grad(set_to_none=True)``, no host sync until the evaluation at the end;
  - *lrsearch*: ``lrsearch.train_trial`` on the same sample (``eval_every = 0``, a constant
    schedule, ``precision = "auto"``), through the public API only, so the benchmark outlives
    the trainer's move between modules.

  **Seconds per training step are differences**: each repeat trains a short trial of
  ``--warm-steps`` steps and a long one of ``--steps`` steps with each engine (interleaved, so
  that load from elsewhere falls on both alike), and a step costs ``(T_long - T_short) / (steps -
  warm_steps)``. Evaluation runs once, at the end of each trial, on the same validation data
  whatever the weights, so it cancels out with the model's set-up and the first ``warm_steps``
  steps (the warm-up); what is left is steady-state training. The plain loop also times its steps
  after the warm-up directly (``in_loop_seconds_per_step``, a check of the method) and its
  evaluation apart (``eval_seconds``). The process's CPU seconds are differenced the same way
  (``cpu_ratio``): on a CPU shared with other jobs they vary far less than wall time. Before the
  repeats each engine runs one untimed short trial (the process's first kernels, allocations,
  autotuning). CUDA is synchronised before every clock read. The figure is the median over
  repeats; ``ratio`` = lrsearch / plain in wall seconds (target <= 1.2).
- **sweep**: one learning rate for every trained group (the embeddings frozen, as in the
  searches), ``--sweep-rates`` rates log-spaced over the searched range, each trained once with
  ``lrsearch.train_trial`` and seed 0; its best validation accuracy is the *single-rate best*.
- **plain_search**: a plain Optuna script: ``optuna.create_study`` in memory,
  ``TPESampler(seed=0)``, ``trial.suggest_float(f"lr.{g}", lo, hi, log=True)`` per searched
  group, and the frozen group trained as a user's own loop trains it: in the optimizer at lr 0
  (its gradient computed, its optimizer state updated, no weight moved). Trial ``i`` trains the
  plain loop with seed ``i``.
- **lrsearch_search**: ``lrsearch run`` of the equivalent study file, in-process
  (``lrsearch.run_search`` on ``lrsearch.load_spec`` of a file written to a temporary folder,
  SQLite storage in that folder): the same task kwargs, groups, ranges, trials and sampler seed,
  ``fixed = { embeddings = 0.0 }``, ``[sampler] multivariate = false`` (plain TPE), ``[pruner]
  kind = "none"`` (the plain script prunes nothing), one evaluation at the end. Trial ``i`` trains
  with seed ``i`` there too, and both studies sample the same rates (``same_samples``).

**Trials per hour** of a search: its finished trials x 3,600 / its wall time, from before the
study is created (lrsearch: before ``run_search``, which builds the task, resolves the groups and
opens the storage) to the last trial's end.

**Time until the single-rate best is reached**: the seconds from a search's start to the end of
its first trial whose validation accuracy is at least the sweep's best (its best-so-far first
reaches it); ``None`` ("not reached") when no trial of the search did. The trial's number is
recorded beside it.

Each phase is time-boxed by ``--max-seconds``: the steps and sweep phases start no repeat or rate
that the last one's duration says would end past it, the searches start no trial after it (Optuna's
and lrsearch's ``timeout``), so a phase may overrun by one unit. A phase that stops early records
what it measured and ``"cut": true``.

Run::

    python benchmarks/bench_vs_plain.py --quick --device cpu      # ~1 minute on a 2-core CPU
    python benchmarks/bench_vs_plain.py --device cuda             # the default GPU size
    python benchmarks/bench_vs_plain.py --device cuda --n-train 8000 --seq-len 128 --steps 250 \\
        --repeats 2 --trials 5 --sweep-rates 3 --max-seconds 20   # realistic sizes, ~1.5 min

Results go to ``benchmarks/results/vs_plain_<device>.json`` (``--out``) with the commit and the
machine. Sizes default to the device's (``quick`` on a CPU, ``default`` on CUDA, see ``SIZES``);
each size flag overrides one of them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # lrsearch from this checkout when run from anywhere
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import _common  # noqa: E402

import lrsearch  # noqa: E402
from lrsearch.spec import TrainSection  # noqa: E402

ENTRY = "lrsearch.tasks.text:rotten_tomatoes_minilm"
# The study files' groups (studies/minilm_per_group.toml), bottom to top.
GROUPS: dict[str, list[str]] = {
    "embeddings": ["encoder.embeddings"],
    "layers_0_1": ["encoder.encoder.layer.[01].*"],
    "layers_2_3": ["encoder.encoder.layer.[23].*"],
    "layers_4_5": ["encoder.encoder.layer.[45].*"],
    "head": ["head"],
}
FROZEN = "embeddings"  # frozen in every phase: lr 0 (the steps phase, the sweep, both searches)
LR_RANGE = (1e-5, 3e-3)  # the study file's ranges
HEAD_RANGE = (1e-4, 3e-2)
STEP_LRS = {
    "embeddings": 0.0,
    "layers_0_1": 5e-5,
    "layers_2_3": 1e-4,
    "layers_4_5": 2e-4,
    "head": 2e-3,
}
TARGET = 1.2  # the issue's: lrsearch's step at most 1.2x the hand-written loop's
EVAL_BATCH = 256
PHASES = ("steps", "sweep", "plain_search", "lrsearch_search")


@dataclass(frozen=True)
class Sizes:
    """What every phase trains, and its time box."""

    n_train: int
    n_val: int
    seq_len: int
    batch_size: int
    steps: int  # training steps per trial, in every phase
    warm_steps: int  # the short trial of the steps phase
    repeats: int
    trials: int  # per search
    sweep_rates: int
    max_seconds: float  # per phase

    def task_kwargs(self) -> dict[str, Any]:
        # The test split is never used here; as large as validation, it costs little to tokenise.
        return {
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_test": self.n_val,
            "seq_len": self.seq_len,
        }


# quick: under ~90 s on a shared 2-core CPU (the task's set-up, tokenising and reading the
# weights, takes ~10 s of it); default: the GPU's, ~1 minute on one GPU.
SIZES = {
    "quick": Sizes(64, 32, 32, 16, 3, 1, 2, 3, 2, 30.0),
    "default": Sizes(2048, 512, 64, 32, 64, 8, 5, 8, 4, 20.0),
}


# --- the two engines ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PlainResult:
    value: float
    seconds: float  # the whole trial: model, training, evaluation
    cpu_seconds: float  # the process's CPU time over the same span
    step_seconds: float  # the steps after the first warm_steps, timed in the loop
    timed_steps: int
    eval_seconds: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _epochs(task: Any, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
    """``task``'s epochs one after another, shuffled by one generator, as lrsearch draws them."""
    while True:
        yield from task.train_batches(batch_size, generator)


def plain_trial(
    task: Any,
    groups: lrsearch.LayerGroups,
    lrs: dict[str, float],
    *,
    steps: int,
    batch_size: int,
    device: torch.device,
    seed: int,
    warm_steps: int = 0,
    frozen_in_optimizer: bool = False,
) -> PlainResult:
    """Train a fresh model ``steps`` steps with ``lrs`` in a hand-written loop; evaluate at the end.

    ``frozen_in_optimizer``: lr-0 groups stay in the optimizer at lr 0 with their gradients, as a
    user's loop that knows nothing of freezing has them, instead of ``requires_grad=False``.
    """
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    torch.manual_seed(seed)  # dropout
    generator = torch.Generator().manual_seed(seed)  # data order
    model: nn.Module = task.build_model().to(device)
    params = dict(model.named_parameters())
    param_groups = []
    for group in groups.names:
        members = [params[name] for name in groups.members(group)]
        if lrs[group] == 0 and not frozen_in_optimizer:
            for p in members:
                p.requires_grad_(False)
            continue
        param_groups.append({"params": members, "lr": lrs[group]})
    optimizer = torch.optim.AdamW(param_groups, fused=device.type == "cuda")
    model.train()
    step_start = start
    batches = _epochs(task, batch_size, generator)
    for step in range(steps):
        if step == warm_steps:
            _sync(device)
            step_start = time.perf_counter()
        batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
        with _autocast(device):
            loss = task.loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    eval_start = time.perf_counter()
    model.eval()
    with torch.no_grad(), _autocast(device):
        val = ({k: v.to(device) for k, v in b.items()} for b in task.val_batches(EVAL_BATCH))
        value = float(task.evaluate(model, val))
    _sync(device)
    end = time.perf_counter()
    return PlainResult(
        value=value,
        seconds=end - start,
        cpu_seconds=time.process_time() - cpu_start,
        step_seconds=eval_start - step_start,
        timed_steps=steps - warm_steps,
        eval_seconds=end - eval_start,
    )


def train_section(sizes: Sizes, steps: int, per_epoch: int) -> TrainSection:
    """lrsearch's ``[train]`` for a trial of ``steps`` steps: one evaluation, at the end."""
    return TrainSection(
        optimizer="adamw",
        epochs=math.ceil(steps / per_epoch),
        max_steps=steps,
        batch_size=sizes.batch_size,
        eval_batch_size=EVAL_BATCH,
        eval_every=0,
        precision="auto",
        schedule="constant",
    )


@dataclass(frozen=True)
class Timed:
    seconds: float  # wall, CUDA synchronised
    cpu_seconds: float
    result: lrsearch.TrainResult


def lrsearch_trial(
    task: Any, groups: lrsearch.LayerGroups, lrs: dict[str, float], cfg: TrainSection, **kw: Any
) -> Timed:
    """One ``lrsearch.train_trial``, timed."""
    device = kw["device"]
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = lrsearch.train_trial(
        task, groups, lrsearch.Sample(lrs=lrs, weight_decay=None), cfg, **kw
    )
    _sync(device)
    return Timed(time.perf_counter() - start, time.process_time() - cpu_start, result)


# --- the phases ---------------------------------------------------------------------------------


class Box:
    """A phase's time box: whether one more unit, as long as the last, still fits."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()
        self.last = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def fits(self) -> bool:
        return self.elapsed() + self.last <= self.seconds


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def steps_phase(task: Any, groups: Any, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Seconds per training step of both engines: (long - short trial) / extra steps, median."""
    per_epoch = len(task.train_batches(sizes.batch_size, torch.Generator().manual_seed(0)))
    short, long = (train_section(sizes, n, per_epoch) for n in (sizes.warm_steps, sizes.steps))
    common: dict[str, Any] = {"batch_size": sizes.batch_size, "device": device, "seed": 0}
    # Untimed: the first trial of a process pays for kernels, allocations and autotuning.
    plain_trial(task, groups, STEP_LRS, steps=sizes.warm_steps, **common)
    lrsearch_trial(task, groups, STEP_LRS, short, device=device, seed=0)
    box = Box(sizes.max_seconds)
    extra = sizes.steps - sizes.warm_steps
    repeats: list[dict[str, Any]] = []
    peak: dict[str, float] = {}
    values: dict[str, float] = {}
    precision = "?"

    def run_plain(n: int) -> PlainResult:
        warm = sizes.warm_steps if n > sizes.warm_steps else 0
        return plain_trial(task, groups, STEP_LRS, steps=n, warm_steps=warm, **common)

    def run_ours(n: int) -> Timed:
        cfg = long if n > sizes.warm_steps else short
        return lrsearch_trial(task, groups, STEP_LRS, cfg, device=device, seed=0)

    engines: dict[str, Callable[[int], Any]] = {"plain": run_plain, "lrsearch": run_ours}
    while len(repeats) < sizes.repeats and (not repeats or box.fits()):
        began = time.perf_counter()
        # Which engine goes first alternates, so that neither always follows the other's trial.
        order = list(engines) if len(repeats) % 2 == 0 else list(engines)[::-1]
        got: dict[tuple[str, int], Any] = {}
        for n in (sizes.warm_steps, sizes.steps):
            for name in order:
                _reset_peak(device)
                got[name, n] = engines[name](n)
                if n == sizes.steps:
                    peak[name] = max(peak.get(name, 0.0), _peak_mb(device))
        p_short, p_long = got["plain", sizes.warm_steps], got["plain", sizes.steps]
        l_short, l_long = got["lrsearch", sizes.warm_steps], got["lrsearch", sizes.steps]
        values = {"plain": p_long.value, "lrsearch": l_long.result.value}
        precision = l_long.result.precision
        repeats.append(
            {
                "plain_short_s": p_short.seconds,
                "plain_long_s": p_long.seconds,
                "lrsearch_short_s": l_short.seconds,
                "lrsearch_long_s": l_long.seconds,
                "plain_s_per_step": (p_long.seconds - p_short.seconds) / extra,
                "lrsearch_s_per_step": (l_long.seconds - l_short.seconds) / extra,
                "plain_cpu_s_per_step": (p_long.cpu_seconds - p_short.cpu_seconds) / extra,
                "lrsearch_cpu_s_per_step": (l_long.cpu_seconds - l_short.cpu_seconds) / extra,
                "plain_in_loop_s_per_step": p_long.step_seconds / p_long.timed_steps,
                "plain_eval_s": p_long.eval_seconds,
            }
        )
        box.last = time.perf_counter() - began
    plain = _median([r["plain_s_per_step"] for r in repeats])
    ours = _median([r["lrsearch_s_per_step"] for r in repeats])
    plain_cpu = _median([r["plain_cpu_s_per_step"] for r in repeats])
    our_cpu = _median([r["lrsearch_cpu_s_per_step"] for r in repeats])
    out: dict[str, Any] = {
        "lrs": STEP_LRS,
        "short_steps": sizes.warm_steps,
        "long_steps": sizes.steps,
        "lrsearch_precision": precision,
        "plain_precision": "bf16" if device.type == "cuda" else "fp32",
        "plain_seconds_per_step": plain,
        "lrsearch_seconds_per_step": ours,
        "ratio": ours / plain,
        "target": TARGET,
        "target_met": ours / plain <= TARGET,
        # The process's CPU seconds, the same way: on a CPU shared with other jobs they vary far
        # less than wall time (on a GPU they only count the host's side).
        "plain_cpu_seconds_per_step": plain_cpu,
        "lrsearch_cpu_seconds_per_step": our_cpu,
        "cpu_ratio": our_cpu / plain_cpu,
        "plain_in_loop_seconds_per_step": _median([r["plain_in_loop_s_per_step"] for r in repeats]),
        "plain_eval_seconds": _median([r["plain_eval_s"] for r in repeats]),
        # Model set-up and the final evaluation (and the warm-up steps' excess over steady state).
        "plain_fixed_seconds": _median([r["plain_short_s"] for r in repeats])
        - sizes.warm_steps * plain,
        "lrsearch_fixed_seconds": _median([r["lrsearch_short_s"] for r in repeats])
        - sizes.warm_steps * ours,
        "final_values": values,
        "repeats": repeats,
        "seconds": box.elapsed(),
        "cut": len(repeats) < sizes.repeats,
    }
    if peak and device.type == "cuda":
        out["peak_gpu_memory_mb"] = peak
    return out


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0


def sweep_phase(task: Any, groups: Any, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """One rate for every trained group, over the searched range: the single-rate best."""
    per_epoch = len(task.train_batches(sizes.batch_size, torch.Generator().manual_seed(0)))
    cfg = train_section(sizes, sizes.steps, per_epoch)
    low, high = LR_RANGE
    n = sizes.sweep_rates
    rates = [low * (high / low) ** (i / max(n - 1, 1)) for i in range(n)]
    box = Box(sizes.max_seconds)
    runs: list[dict[str, Any]] = []
    for lr in rates:
        if runs and not box.fits():
            break
        lrs = {g: 0.0 if g == FROZEN else lr for g in groups.names}
        began = time.perf_counter()
        try:
            timed = lrsearch_trial(task, groups, lrs, cfg, device=device, seed=0)
            runs.append({"lr": lr, "value": timed.result.value, "seconds": timed.seconds})
        except Exception as e:  # a rate that diverges (TrialFailure) is a result, not a crash
            print(f"  sweep: lr {lr:.2e} failed: {e}", flush=True)
            runs.append({"lr": lr, "value": None, "failed": f"{type(e).__name__}: {e}"})
        box.last = time.perf_counter() - began
    done = [r for r in runs if r["value"] is not None]
    best = max(done, key=lambda r: r["value"], default={"lr": None, "value": None})
    return {
        "rates": rates,
        "runs": runs,
        "best_lr": best["lr"],
        "best_value": best["value"],
        "seconds": box.elapsed(),
        "cut": len(runs) < len(rates),
    }


def searched() -> dict[str, tuple[float, float]]:
    """The searched groups and their ranges, bottom to top (the frozen one is not searched)."""
    return {g: HEAD_RANGE if g == "head" else LR_RANGE for g in GROUPS if g != FROZEN}


def plain_search(task: Any, groups: Any, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """A plain Optuna script of the per-group search: in memory, TPE seed 0, no pruning."""
    trials: list[dict[str, Any]] = []
    start = time.perf_counter()

    def objective(trial: optuna.Trial) -> float:
        lrs = {FROZEN: 0.0}
        for g, (low, high) in searched().items():
            lrs[g] = trial.suggest_float(f"lr.{g}", low, high, log=True)
        result = plain_trial(
            task,
            groups,
            lrs,
            steps=sizes.steps,
            batch_size=sizes.batch_size,
            device=device,
            seed=trial.number,
            frozen_in_optimizer=True,
        )
        trials.append(_trial_row(trial.number, result.value, lrs, start))
        return result.value

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, n_trials=sizes.trials, timeout=sizes.max_seconds)
    return _search_figures(trials, time.perf_counter() - start, sizes)


def study_toml(sizes: Sizes, name: str) -> str:
    """The study file equivalent to :func:`plain_search`."""
    per_epoch = math.ceil(sizes.n_train / sizes.batch_size)
    head = {g: list(r) for g, r in searched().items() if r != LR_RANGE}
    lines = [
        "[study]",
        f"name = {_toml(name)}",
        f"n_trials = {sizes.trials}",
        "seed = 0",
        "",
        "[task]",
        f"entry = {_toml(ENTRY)}",
        f"kwargs = {_toml(sizes.task_kwargs())}",
        "",
        "[groups]",
        *(f"{g} = {_toml(patterns)}" for g, patterns in GROUPS.items()),
        "",
        "[space]",
        'kind = "per_group"',
        f"lr = {_toml(list(LR_RANGE))}",
        f"lr_ranges = {_toml(head)}",
        f"fixed = {_toml({FROZEN: 0.0})}",
        "",
        "[train]",
        'optimizer = "adamw"',
        f"epochs = {math.ceil(sizes.steps / per_epoch)}",
        f"max_steps = {sizes.steps}",
        f"batch_size = {sizes.batch_size}",
        f"eval_batch_size = {EVAL_BATCH}",
        "eval_every = 0",
        'precision = "auto"',
        'schedule = "constant"',
        "",
        "[pruner]",
        'kind = "none"',
        "",
        "[sampler]",
        'kind = "tpe"',
        "n_startup_trials = 10  # Optuna's default",
        "multivariate = false",
    ]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    """``value`` as a TOML value (strings, numbers, lists, inline tables)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)  # a string, int or float reads back the same in TOML


def lrsearch_search(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """``lrsearch run`` of the equivalent study file, in-process, SQLite in a temporary folder."""
    trials: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-vs-plain-") as tmp:
        path = Path(tmp) / "study.toml"
        text = study_toml(sizes, "vs-plain")
        path.write_text(text, encoding="utf-8")
        url = f"sqlite:///{Path(tmp) / 'study.db'}"
        start = time.perf_counter()

        def on_trial(outcome: Any, summary: Any) -> None:
            # Every finished trial counts, a diverged one (no value) too.
            trials.append(_trial_row(outcome.number, outcome.value, outcome.lrs, start))

        summary = lrsearch.run_search(
            lrsearch.load_spec(path),
            storage=url,
            timeout=sizes.max_seconds,
            device=str(device),
            on_trial=on_trial,
        )
        wall = time.perf_counter() - start
    out = _search_figures(trials, wall, sizes)
    out["loop_seconds"] = summary.seconds  # run_search's own loop, without its set-up
    out["study_file"] = text
    return out


def _trial_row(
    number: int, value: float | None, lrs: dict[str, float], start: float
) -> dict[str, Any]:
    return {
        "number": number,
        "value": value,
        "lrs": dict(lrs),
        "end_seconds": time.perf_counter() - start,
    }


def _search_figures(trials: list[dict[str, Any]], wall: float, sizes: Sizes) -> dict[str, Any]:
    return {
        "trials": trials,
        "n_trials": len(trials),
        "seconds": wall,
        "trials_per_hour": len(trials) * 3600 / wall,
        "best_value": max((t["value"] for t in trials if t["value"] is not None), default=None),
        "cut": len(trials) < sizes.trials,
    }


def time_to_reach(search: dict[str, Any], threshold: float | None) -> dict[str, Any]:
    """When the search's best-so-far first reached ``threshold``: its first trial at or above it
    (never, when the sweep gave no threshold)."""
    for t in search["trials"]:
        if threshold is not None and t["value"] is not None and t["value"] >= threshold:
            return {"seconds": t["end_seconds"], "trial": t["number"]}
    return {"seconds": None, "trial": None}


# --- the whole benchmark ------------------------------------------------------------------------


def run(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Every phase; the figures and a summary, without the machine record."""
    from lrsearch.tasks.text import rotten_tomatoes_minilm

    t0 = time.perf_counter()
    task = rotten_tomatoes_minilm(**sizes.task_kwargs())
    groups = lrsearch.resolve_groups(task.build_model(), GROUPS)
    setup = time.perf_counter() - t0
    phases: dict[str, Any] = {}
    for phase, fn in (
        ("steps", lambda: steps_phase(task, groups, sizes, device)),
        ("sweep", lambda: sweep_phase(task, groups, sizes, device)),
        ("plain_search", lambda: plain_search(task, groups, sizes, device)),
        ("lrsearch_search", lambda: lrsearch_search(sizes, device)),
    ):
        print(f"  {phase} ...", flush=True)
        phases[phase] = _timed(fn)
    threshold = phases["sweep"]["best_value"]
    for name in ("plain_search", "lrsearch_search"):
        phases[name]["reached_single_rate_best"] = time_to_reach(phases[name], threshold)
    plain, ours = phases["plain_search"], phases["lrsearch_search"]
    same = [t["lrs"] for t in plain["trials"]] == [t["lrs"] for t in ours["trials"]]
    steps = phases["steps"]
    return {
        "setup_seconds": setup,
        "phases": phases,
        "summary": {
            "plain_seconds_per_step": steps["plain_seconds_per_step"],
            "lrsearch_seconds_per_step": steps["lrsearch_seconds_per_step"],
            "ratio": steps["ratio"],
            "cpu_ratio": steps["cpu_ratio"],
            "target": TARGET,
            "target_met": steps["target_met"],
            "single_rate_best": threshold,
            "plain_trials_per_hour": plain["trials_per_hour"],
            "lrsearch_trials_per_hour": ours["trials_per_hour"],
            "plain_seconds_to_single_rate_best": plain["reached_single_rate_best"]["seconds"],
            "lrsearch_seconds_to_single_rate_best": ours["reached_single_rate_best"]["seconds"],
            "same_samples": same,
            "cut": [p for p in PHASES if phases[p]["cut"]],
        },
    }


def _timed(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    start = time.perf_counter()
    out = fn()
    out["phase_seconds"] = time.perf_counter() - start
    return out


def print_table(report: dict[str, Any]) -> None:
    s, st, phases = report["summary"], report["settings"], report["phases"]
    steps = phases["steps"]
    print(
        f"\nMiniLM on {report['machine']['device']}: {st['n_train']} reviews, seq {st['seq_len']}, "
        f"batch {st['batch_size']}, {st['steps']} steps per trial ({report['size']} size)"
    )
    header = f"{'':34s} {'plain':>11s} {'lrsearch':>11s} {'ratio':>8s}"
    met = "met" if s["target_met"] else "MISSED"
    plain_rate, our_rate = s["plain_trials_per_hour"], s["lrsearch_trials_per_hour"]
    rows = [
        (
            "seconds per training step",
            _fmt(s["plain_seconds_per_step"], ".4f"),
            _fmt(s["lrsearch_seconds_per_step"], ".4f"),
            f"{_fmt(s['ratio'], '.3f')}  (target <= {TARGET}: {met})",
        ),
        (
            "CPU seconds per training step",
            _fmt(steps["plain_cpu_seconds_per_step"], ".4f"),
            _fmt(steps["lrsearch_cpu_seconds_per_step"], ".4f"),
            _fmt(s["cpu_ratio"], ".3f"),
        ),
        (
            "trials per hour",
            _fmt(plain_rate, ".0f"),
            _fmt(our_rate, ".0f"),
            _fmt(our_rate / plain_rate, ".3f"),
        ),
        (
            f"seconds to single-rate best {_fmt(s['single_rate_best'], '.3f')}",
            _fmt(s["plain_seconds_to_single_rate_best"], ".1f", "not reached"),
            _fmt(s["lrsearch_seconds_to_single_rate_best"], ".1f", "not reached"),
            "",
        ),
        (
            "best validation accuracy",
            _fmt(phases["plain_search"]["best_value"], ".3f"),
            _fmt(phases["lrsearch_search"]["best_value"], ".3f"),
            "",
        ),
    ]
    print(header + "\n" + "-" * len(header))
    for label, plain, ours, ratio in rows:
        print(f"{label:34s} {plain:>11s} {ours:>11s} {ratio:>8s}")
    if s["cut"]:
        print(f"cut by --max-seconds: {', '.join(s['cut'])}")


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, ~1 minute on a CPU")
    for field, help_ in (
        ("n_train", "training reviews"),
        ("n_val", "validation reviews"),
        ("seq_len", "tokens per review"),
        ("batch_size", "training batch"),
        ("steps", "training steps per trial, in every phase"),
        ("warm_steps", "steps of the short trial the steps phase subtracts"),
        ("repeats", "repeats of the steps phase (median)"),
        ("trials", "trials per search"),
        ("sweep_rates", "rates of the single-rate sweep"),
    ):
        parser.add_argument("--" + field.replace("_", "-"), type=int, help=help_)
    parser.add_argument("--max-seconds", type=float, help="time box of each phase")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--out", type=Path, help="default benchmarks/results/vs_plain_<device>.json"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    size = "quick" if args.quick or device.type == "cpu" else "default"
    given = {
        k: v for k, v in vars(args).items() if k in Sizes.__dataclass_fields__ and v is not None
    }
    sizes = replace(SIZES[size], **given)
    problems = [k for k, v in asdict(sizes).items() if v <= 0]
    if problems or sizes.warm_steps >= sizes.steps:
        sys.exit(f"bench_vs_plain: sizes must be > 0 and --warm-steps < --steps, got {sizes}")
    out = args.out or _HERE / "results" / f"vs_plain_{device.type}.json"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    source = _common.source()  # the code as the run starts
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        figures = run(sizes, device)
    finally:
        torch.set_num_threads(threads)  # main may run inside another process (the tests)
    info = _common.machine()
    info["device"] = str(device)
    info["torch_threads"] = args.threads
    info["gpu"] = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    report = {
        "benchmark": "vs_plain",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/bench_vs_plain.py", *(argv or sys.argv[1:])]),
        "size": size,
        "overrides": given,  # the size flags given, over the size's defaults
        "settings": {
            **asdict(sizes),
            "task": ENTRY,
            "task_kwargs": sizes.task_kwargs(),
            "groups": GROUPS,
            "frozen": FROZEN,
            "lr_range": LR_RANGE,
            "head_range": HEAD_RANGE,
            "eval_batch_size": EVAL_BATCH,
        },
        "source": source,
        "machine": info,
        **figures,
        "total_seconds": time.perf_counter() - start,
    }
    report = _common.clean(report)
    print_table(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out} ({report['total_seconds']:.0f} s)")
    return report


if __name__ == "__main__":
    main()

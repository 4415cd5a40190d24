"""Where a trial's time goes: set-up, steps and evaluation, on the host and on the device.

Runs the throughput benchmark's MiniLM set-up (any ``--size``) under ``torch.profiler``: warm
one-at-a-time trials, then warm batched chunks of ``--k`` trials, each phase labelled by wrapping
the trainer's own methods (the package is not changed to be measured). For each run it prints and
saves the wall seconds of each phase, the device's busy time (the sum of its kernels' times) and
so the share of the wall time the device idles, and the host operators that cost the most.

    python benchmarks/profile_trial.py --device cuda --size default --trials 4 --k 8

Timings under a profiler are slower than without one; compare phases with each other, and take
throughput figures from ``bench_throughput.py``.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import clean, source
from bench_throughput import samples, setups

from lrsearch.groups import resolve_groups
from lrsearch.training import Trainer
from lrsearch.training import single as _single
from lrsearch.training import stacked as _stacked

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "profile_trial.json"
PHASES = "lrsearch."
"""The prefix of the labels this script puts on the trainer's phases."""


def _labelled(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with record_function(PHASES + label):
            return fn(*args, **kwargs)

    return wrapper


@contextmanager
def phases() -> Iterator[None]:
    """The trainer's set-up, step, evaluation and batch preparation, labelled for the profiler."""
    targets = [
        (_single.Trial, "__init__", "setup"),
        (_single.Trial, "step", "step"),
        (_single.Trial, "evaluate", "evaluate"),
        (_stacked._Batch, "__init__", "setup"),
        (_stacked._Batch, "step", "step"),
        (_stacked._Batch, "next_batches", "batches"),
        (_stacked._Batch, "evaluate_all", "evaluate"),
        (_stacked, "can_batch", "can_batch"),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]
    try:
        for owner, name, label in targets:
            setattr(owner, name, _labelled(getattr(owner, name), label))
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def _device_seconds(events: Any) -> float:
    """The sum of the device kernels' own times (0 on the CPU)."""
    total = 0.0
    for e in events:
        t = getattr(e, "self_device_time_total", None)
        if t is None:
            t = getattr(e, "self_cuda_time_total", 0.0)
        total += t
    return total / 1e6


def summarise(prof: Any, wall: float, runs: int, top: int) -> dict[str, Any]:
    averages = prof.key_averages()
    phase: dict[str, dict[str, float]] = {}
    for e in averages:
        # On CUDA a label also appears as a device annotation with no host time: keep the host's.
        if e.key.startswith(PHASES) and e.cpu_time_total > 0:
            phase[e.key[len(PHASES) :]] = {
                "seconds_per_run": round(e.cpu_time_total / 1e6 / runs, 4),
                "calls_per_run": round(e.count / runs, 1),
            }
    busy = _device_seconds([e for e in averages if not e.key.startswith(PHASES)])
    ops = sorted(
        (e for e in averages if not e.key.startswith(PHASES)),
        key=lambda e: e.self_cpu_time_total,
        reverse=True,
    )[:top]
    return {
        "wall_seconds_per_run": round(wall / runs, 4),
        "phases": phase,
        "device_busy_seconds_per_run": round(busy / runs, 4),
        "device_idle_share": round(1 - busy / wall, 3) if busy else None,
        "top_host_ops": [
            {
                "op": e.key,
                "self_cpu_seconds_per_run": round(e.self_cpu_time_total / 1e6 / runs, 4),
                "calls_per_run": round(e.count / runs, 1),
            }
            for e in ops
        ],
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    sizes = ("tiny", "quick", "default", "realistic")
    parser.add_argument("--size", default="quick", choices=sizes)
    parser.add_argument("--trials", type=int, default=3, help="warm one-at-a-time trials profiled")
    parser.add_argument("--k", type=int, default=8, help="trials per batched chunk (0: none)")
    parser.add_argument("--chunks", type=int, default=1, help="warm batched chunks profiled")
    parser.add_argument("--top", type=int, default=15, help="host operators listed")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    setup = setups(args.size)["minilm"]
    task = setup.task()
    groups = resolve_groups(task.build_model(), setup.groups)
    n = max(args.trials, args.k * (args.chunks + 1), 2)
    todo = samples(setup, groups, n)
    cfg = setup.train
    trainer = Trainer()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    results: dict[str, Any] = {
        "benchmark": "profile_trial",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "source": source(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "size": args.size,
        "train": {"batch_size": cfg.batch_size, "max_steps": cfg.max_steps},
    }

    # Warm: a whole trial first, so no profiled run pays for first-call set-up.
    trainer.train_one(task, groups, todo[0], cfg, device=device, seed=0)
    _sync(device)
    with phases(), profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for i in range(1, args.trials + 1):
            trainer.train_one(task, groups, todo[i], cfg, device=device, seed=i)
        _sync(device)
        wall = time.perf_counter() - t0
    results["one_at_a_time"] = summarise(prof, wall, args.trials, args.top)

    if args.k:
        batched_task = setup.task(batched=True) if setup.batched_kwargs else task
        chunk = todo[: args.k]
        trainer.train_many(
            batched_task,
            groups,
            chunk,
            cfg,
            device=device,
            seeds=list(range(args.k)),
            reports=[None] * args.k,
        )
        _sync(device)
        with phases(), profile(activities=activities) as prof:
            t0 = time.perf_counter()
            for c in range(1, args.chunks + 1):
                part = todo[c * args.k : (c + 1) * args.k]
                trainer.train_many(
                    batched_task,
                    groups,
                    part,
                    cfg,
                    device=device,
                    seeds=list(range(c * args.k, (c + 1) * args.k)),
                    reports=[None] * args.k,
                )
            _sync(device)
            wall = time.perf_counter() - t0
        results[f"batched_k{args.k}"] = summarise(prof, wall, args.chunks, args.top)
        results[f"batched_k{args.k}"]["seconds_per_trial"] = round(wall / args.chunks / args.k, 4)

    # Unprofiled: the same warm runs timed plainly, for the overhead of profiling itself.
    t0 = time.perf_counter()
    for i in range(1, args.trials + 1):
        trainer.train_one(task, groups, todo[i], replace(cfg), device=device, seed=i)
    _sync(device)
    results["one_at_a_time"]["unprofiled_wall_seconds_per_run"] = round(
        (time.perf_counter() - t0) / args.trials, 4
    )
    for name in ("one_at_a_time", f"batched_k{args.k}"):
        if name not in results:
            continue
        r = results[name]
        print(f"\n{name}: {r['wall_seconds_per_run']:.3f} s a run (profiled)")
        for label, p in r["phases"].items():
            print(f"  {label:10s} {p['seconds_per_run']:.4f} s  ({p['calls_per_run']} calls)")
        if r["device_idle_share"] is not None:
            print(
                f"  device busy {r['device_busy_seconds_per_run']:.4f} s: idle "
                f"{100 * r['device_idle_share']:.0f}% of the wall time"
            )
        for op in r["top_host_ops"][:8]:
            print(f"    {op['self_cpu_seconds_per_run']:.4f} s  {op['op']} x{op['calls_per_run']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(clean(results), indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()

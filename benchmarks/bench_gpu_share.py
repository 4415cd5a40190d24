"""One device shared three ways: one worker, K trials batched in one worker, N workers on it.

The baseline batched trials must beat is the one a user gets without them: several worker
processes on one GPU (``lrsearch launch --workers 4 --devices 0,0,0,0``). Each mode runs the same
MiniLM study (``bench_vs_plain``'s study file at its sizes, no pruner, TPE) with the real CLI in a
fresh SQLite file:

- ``run``: ``lrsearch run``, one trial at a time;
- ``batched``: ``lrsearch run`` with ``[train] batch_trials = K``;
- ``launch``: ``lrsearch launch --workers N`` (on CUDA with ``--devices 0,0,...``: N processes on
  one GPU; on the CPU the cores are shared out as ``launch`` does).

Measured per mode: the command's wall time (process start-up, imports, CUDA and the task's set-up
included), the span from the storage's own timestamps (first trial start to last trial end:
start-up excluded), finished trials per hour over that span, and the best value. Run::

    python benchmarks/bench_gpu_share.py --device cuda --trials 32 --k 8 --workers 4
    python benchmarks/bench_gpu_share.py --quick      # a CPU smoke run, ~2 minutes

Results go to ``benchmarks/results/gpu_share_<device>.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))

import _common  # noqa: E402
from bench_vs_plain import SIZES, study_toml  # noqa: E402

MODES = ("run", "batched", "launch")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lrsearch.cli", *args]


def spec_text(base: str, batch_trials: int) -> str:
    """``base`` (a study file) with ``[train] batch_trials`` set."""
    if batch_trials == 1:
        return base
    return base.replace("[train]\n", f"[train]\nbatch_trials = {batch_trials}\n", 1)


def study_figures(url: str, study: str) -> dict[str, Any]:
    """Span, throughput and best value from the study's own records."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=study, storage=url).trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    span = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    values = [t.value for t in done if t.value is not None]
    return {
        "trials": len(trials),
        "complete": len(done),
        "states": sorted({t.state.name for t in trials}),
        "span_seconds": round(span, 2) if span else None,
        "trials_per_hour": round(3600 * len(done) / span, 1) if span else None,
        "best_value": max(values) if values else None,
    }


def run_mode(
    mode: str, base: str, tmp: Path, *, device: str, trials: int, k: int, workers: int
) -> dict[str, Any]:
    spec = tmp / f"{mode}.toml"
    spec.write_text(spec_text(base, k if mode == "batched" else 1), encoding="utf-8")
    url = f"sqlite:///{tmp / (mode + '.db')}"
    common = ["--storage", url, "--n-trials", str(trials)]
    env = dict(os.environ)
    if mode == "launch":
        argv = _cli("launch", str(spec), *common, "--workers", str(workers))
        if device == "cuda":
            argv += ["--devices", ",".join(["0"] * workers)]
    else:
        argv = _cli("run", str(spec), *common, "--device", device)
        env.setdefault("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    out: dict[str, Any] = {
        "command": " ".join(argv[3:]),
        "exit_code": done.returncode,
        "wall_seconds": round(wall, 2),
    }
    if done.returncode != 0:
        out["error"] = (done.stderr or done.stdout).strip().splitlines()[-5:]
        return out
    return out | study_figures(url, "gpu-share")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="bench_vs_plain's quick sizes")
    parser.add_argument("--trials", type=int, default=None, help="per mode (default 32; quick 4)")
    parser.add_argument("--k", type=int, default=8, help="batch_trials of the batched mode")
    parser.add_argument("--workers", type=int, default=4, help="workers of the launch mode")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
    trials = args.trials or (4 if args.quick else 32)
    sizes = replace(SIZES["quick" if args.quick else "default"], trials=trials)
    base = study_toml(sizes, "gpu-share")
    out_path = args.out or _HERE / "results" / f"gpu_share_{args.device}.json"
    results: dict[str, Any] = {
        "benchmark": "gpu_share",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/bench_gpu_share.py", *(argv or sys.argv[1:])]),
        "source": _common.source(),
        "settings": {"trials": trials, "k": args.k, "workers": args.workers},
        "study_file": base,
        "modes": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-gpu-share-") as tmp:
        for mode in modes:
            print(f"  {mode} ...", flush=True)
            results["modes"][mode] = run_mode(
                mode,
                base,
                Path(tmp),
                device=args.device,
                trials=trials,
                k=args.k,
                workers=args.workers,
            )
    info = _common.machine()
    if args.device == "cuda":
        import torch

        info["gpu"] = torch.cuda.get_device_name(0)
    results["machine"] = info
    header = f"{'mode':8s} {'wall s':>7s} {'span s':>7s} {'trials/h':>9s} {'done':>5s} {'best':>7s}"
    print("\n" + header + "\n" + "-" * len(header))
    for mode, r in results["modes"].items():
        if r["exit_code"] != 0:
            print(f"{mode:8s} failed (exit {r['exit_code']}): {' / '.join(r['error'])}")
            continue
        print(
            f"{mode:8s} {r['wall_seconds']:7.1f} {r['span_seconds'] or 0:7.1f} "
            f"{r['trials_per_hour'] or 0:9.0f} {r['complete']:5d} {r['best_value'] or 0:7.4f}"
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(_common.clean(results), indent=2) + "\n")
    print(f"\nwrote {out_path}")
    return results


if __name__ == "__main__":
    main()

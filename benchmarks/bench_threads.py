"""``lrsearch run`` with its default threads against one torch thread, while a core is kept busy.

Issue 14's target: the quickstart study (``studies/quickstart.toml``) run with default settings
takes at most 1.3x the time it takes with ``OMP_NUM_THREADS=1``, on the 2-core machine, while
another process keeps one core busy. Before ``run`` chose its threads, torch's default (a thread
per core) made it 7x slower there.

Each run is ``lrsearch run studies/quickstart.toml`` as a user types it, in a subprocess with a
fresh SQLite file, timed from start to exit (``wall_s``: start-up included) and by the run's own
summary line (``search_s``: "this run: N trial(s) in X s"). The two settings alternate (default,
one thread, default, ...), ``--repeats`` times each, so a change of load hits both; the ratio is
of the medians. Meanwhile one busy-loop process (a Python ``while True``) runs the whole time,
started before the first run and stopped after the last.

``default`` leaves ``OMP_NUM_THREADS`` unset (lrsearch then takes a thread per physical core it
may run on); ``one_thread`` sets ``OMP_NUM_THREADS=1``. Results: printed, and saved as JSON
(default ``benchmarks/results/threads.json``).

Usage:
    python benchmarks/bench_threads.py                 # 2 repeats: ~2 minutes on 2 cores
    python benchmarks/bench_threads.py --repeats 1 --n-trials 10 --out /tmp/threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, clean, machine, source

STUDY_FILE = ROOT / "studies" / "quickstart.toml"
TARGET = 1.3
SETTINGS = ("default", "one_thread")
_SEARCH_LINE = re.compile(r"this run: (\d+) trial\(s\) in ([0-9.]+) s")


def run_once(setting: str, n_trials: int | None, folder: Path) -> dict[str, Any]:
    """One ``lrsearch run`` of the quickstart under ``setting``; its times and trial count."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.pop("LRSEARCH_STORAGE_FILE", None)
    if setting == "one_thread":
        env["OMP_NUM_THREADS"] = "1"
    db = folder / f"{setting}-{time.monotonic_ns()}.db"
    argv = [sys.executable, "-m", "lrsearch.cli", "run", str(STUDY_FILE)]
    argv += ["--storage", f"sqlite:///{db}", "--device", "cpu"]
    if n_trials is not None:
        argv += ["--n-trials", str(n_trials)]
    env["TQDM_DISABLE"] = "1"
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"lrsearch run ({setting}) failed: {done.stderr.strip()[-500:]}")
    found = _SEARCH_LINE.search(done.stdout)
    return {
        "setting": setting,
        "wall_s": round(wall, 3),
        "search_s": float(found.group(2)) if found else None,
        "trials": int(found.group(1)) if found else None,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per setting and the default / one-thread ratios, judged against the target."""
    out: dict[str, Any] = {}
    for setting in SETTINGS:
        mine = [r for r in runs if r["setting"] == setting]
        out[setting] = {
            "wall_s_median": statistics.median(r["wall_s"] for r in mine),
            "search_s_median": statistics.median(
                r["search_s"] for r in mine if r["search_s"] is not None
            ),
        }
    for key in ("wall_s", "search_s"):
        ratio = out["default"][f"{key}_median"] / out["one_thread"][f"{key}_median"]
        out[f"ratio_{key}"] = round(ratio, 3)
    out["target"] = TARGET
    out["met"] = out["ratio_wall_s"] <= TARGET
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each setting")
    parser.add_argument(
        "--n-trials", type=int, default=None, help="budget (default: the file's, 40)"
    )
    parser.add_argument("--no-busy", action="store_true", help="no busy process (a control)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "threads.json"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    busy: subprocess.Popen[bytes] | None = None
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_busy:  # one core kept busy by another process, as the target says
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            for i in range(args.repeats):
                for setting in SETTINGS:
                    run = {**run_once(setting, args.n_trials, Path(tmp)), "repeat": i}
                    runs.append(run)
                    print(
                        f"{setting:<10} repeat {i}: {run['wall_s']:.1f} s wall, "
                        f"{run['search_s']} s search, {run['trials']} trials",
                        flush=True,
                    )
        finally:
            if busy is not None:
                busy.terminate()
                busy.wait()
    summary = summarize(runs)
    report = {
        "benchmark": "threads",
        "config": {
            "study_file": str(STUDY_FILE.relative_to(ROOT)),
            "n_trials": args.n_trials,
            "repeats": args.repeats,
            "busy_process": not args.no_busy,
        },
        "source": source(),
        "machine": machine(),
        "seconds": round(time.perf_counter() - started, 1),
        "runs": runs,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(clean(report), indent=2) + "\n", encoding="utf-8")
    print(
        f"default / one thread: {summary['ratio_wall_s']}x wall, {summary['ratio_search_s']}x "
        f"search (target <= {TARGET}: {'met' if summary['met'] else 'missed'}); "
        f"wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

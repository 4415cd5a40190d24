"""Trials per second with 1, 2, 4 and 8 ``lrsearch worker`` processes on one study.

Each trial trains one tiny batch whose loss sleeps a fixed time (``--sleep``, 1 s), so a trial costs
that sleep plus what lrsearch and the database add around it; the figure measures coordination
(asking, telling, the shared budget, the storage under concurrent writers), not this machine's
cores. A 2-core machine runs 8 such workers as well as a big one: they mostly sleep.

How it is run. For each backend (SQLite file, PostgreSQL) and each worker count ``N``: a fresh study
is created with ``lrsearch create``, then ``N`` real ``lrsearch worker`` processes are started on it
with a budget of ``N x --trials-per-worker`` trials (the storage URL in ``$LRSEARCH_STORAGE``, this
folder on ``PYTHONPATH`` for the task below). Process start-up (importing torch, building the task)
is kept out of the figure: the task factory waits at a barrier (files in a folder named by
``$BENCH_WORKERS_BARRIER``) until all ``N`` workers have built it, so their first trials start
together.

How it is measured, from the storage's own trial timestamps (no clock of ours):

- **span**: first trial start to last trial end; **throughput**: finished trials / span.
- **scaling**: throughput with ``N`` workers / throughput with one worker on the same backend;
  **efficiency**: scaling / ``N``. Target: scaling >= 0.9 x N up to 8 workers on PostgreSQL.
- beside them: trials run against the budget (the overshoot the shared budget allows), duplicate
  trial numbers, trials left RUNNING, and the mean trial duration less the sleep (what a trial's own
  database writes and sampling cost, under that many writers).

Run (a full run takes about 5 minutes; PostgreSQL is skipped with a note when unreachable)::

    python benchmarks/bench_workers.py
    python benchmarks/bench_workers.py --quick          # 1, 2, 4 workers, shorter trials
    python benchmarks/bench_workers.py --workers 1 8 --storage postgres --sleep 2

Results go to ``benchmarks/results/workers.json`` (``--out``) and a plot beside it (``--plot``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import _common  # noqa: E402

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_OUT = _HERE / "results" / "workers.json"
TARGET_EFFICIENCY = 0.9
BARRIER_ENV = "BENCH_WORKERS_BARRIER"
PARTIES_ENV = "BENCH_WORKERS_PARTIES"
BARRIER_TIMEOUT_S = 300.0
RUN_TIMEOUT_S = 600.0


# --- the task the workers import ("bench_workers:sleep_task") -------------------------------------
# Kept free of heavy module-level imports: every worker imports this module.


def _barrier() -> None:
    """Wait until every worker of a run has built its task (so trials start together)."""
    folder = os.environ.get(BARRIER_ENV)
    if not folder:  # `lrsearch create` builds the task too, and must not wait
        return
    parties = int(os.environ.get(PARTIES_ENV, "1"))
    Path(folder, str(os.getpid())).touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while len(os.listdir(folder)) < parties:
        if time.monotonic() > deadline:
            raise RuntimeError(f"barrier: only {len(os.listdir(folder))}/{parties} workers came")
        time.sleep(0.01)


def sleep_task(sleep_s: float = 1.0, n: int = 8) -> Any:
    """A task whose one training step sleeps ``sleep_s`` seconds; the rest is a tiny real model.

    Args:
        sleep_s: Seconds each training step (one per trial) sleeps.
        n: Examples in the one batch (set ``[train] batch_size`` to the same).
    """
    import torch
    from torch import nn

    from lrsearch.tasks import TensorClassificationTask

    class SleepingTask(TensorClassificationTask):
        def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
            time.sleep(sleep_s)
            return super().loss(model, batch)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long()

    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    # Warm up before the barrier: a process's first optimizer step imports torch._dynamo (over a
    # second here), a start-up cost that would otherwise land in the first trial.
    warm = model()
    opt = torch.optim.AdamW(warm.parameters(), lr=1e-3)
    nn.functional.cross_entropy(warm(x), y).backward()
    opt.step()
    task = SleepingTask(model, x, y, x, y)
    _barrier()
    return task


def spec_text(name: str, *, budget: int, sleep_s: float, sampler: str) -> str:
    """The study file of one run."""
    return f"""
[study]
name = "{name}"
n_trials = {budget}
seed = 0

[task]
entry = "bench_workers:sleep_task"
kwargs = {{ sleep_s = {sleep_s!r}, n = 8 }}

[groups]
body = ["0"]
head = ["2"]

[space]
lr = [1e-4, 1e-1]
freeze = ["body"]

[train]
epochs = 1
batch_size = 8
eval_every = 0

[pruner]
kind = "none"

[sampler]
kind = "{sampler}"
"""


# --- running one configuration --------------------------------------------------------------------


def _env(url: str, barrier: Path | None, parties: int) -> dict[str, str]:
    env = dict(os.environ)
    env["LRSEARCH_STORAGE"] = url  # the URL stays off the command lines
    env.pop("LRSEARCH_STORAGE_FILE", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_HERE), env.get("PYTHONPATH", "")) if p)
    env["TQDM_DISABLE"] = "1"
    # Eight processes on two cores: one thread each (a tiny model has nothing to parallelize).
    env["OMP_NUM_THREADS"] = "1"
    env.pop(BARRIER_ENV, None)
    if barrier is not None:
        env[BARRIER_ENV] = str(barrier)
        env[PARTIES_ENV] = str(parties)
    return env


def _lrsearch(*args: str) -> list[str]:
    return [sys.executable, "-m", "lrsearch.cli", *args]


def run_config(
    url: str,
    *,
    workers: int,
    trials_per_worker: int,
    sleep_s: float,
    sampler: str,
    prefix: str,
    via: str = "worker",
    device: str = "cpu",
) -> dict[str, Any]:
    """Create a study, run ``workers`` worker processes on it, and measure from its trials.

    ``via="run"`` runs independent ``lrsearch run`` processes instead (no shared budget).
    """
    name = f"{prefix}-{workers}w-{uuid.uuid4().hex[:6]}"
    budget = workers * trials_per_worker
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        spec = Path(tmp, "study.toml")
        spec.write_text(
            spec_text(name, budget=budget, sleep_s=sleep_s, sampler=sampler), encoding="utf-8"
        )
        if via == "worker":
            created = subprocess.run(
                _lrsearch("create", str(spec), "--study", name),
                env=_env(url, None, 0),
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT_S,
            )
            if created.returncode != 0:
                raise RuntimeError(f"lrsearch create failed: {created.stderr.strip()[-2000:]}")
            argv = _lrsearch("worker", "--study", name, "--n-trials", str(budget))
            argv += ["--device", device]
        else:
            # Independent `lrsearch run`s on one study, each with its own share of the budget.
            argv = _lrsearch("run", str(spec), "--n-trials", str(trials_per_worker))
            argv += ["--device", device]
        barrier = Path(tmp, "barrier")
        barrier.mkdir()
        env = _env(url, barrier, workers)
        t0 = time.monotonic()
        procs = [
            subprocess.Popen(
                argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            for _ in range(workers)
        ]
        outputs, codes = [], []
        try:
            for p in procs:
                remaining = max(1.0, RUN_TIMEOUT_S - (time.monotonic() - t0))
                out, _ = p.communicate(timeout=remaining)
                outputs.append(out)
                codes.append(p.returncode)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        wall = time.monotonic() - t0
    if any(codes):
        bad = next(i for i, c in enumerate(codes) if c)
        raise RuntimeError(f"worker {bad} exited with {codes[bad]}: {outputs[bad][-2000:]}")
    return measure(url, name, budget=budget, sleep_s=sleep_s) | {
        "workers": workers,
        "budget": budget,
        "wall_s_with_startup": round(wall, 2),
    }


def measure(url: str, name: str, *, budget: int, sleep_s: float) -> dict[str, Any]:
    """Throughput and bookkeeping of study ``name``, from its stored trial timestamps."""
    import optuna

    from lrsearch.storage import open_storage

    storage = open_storage(url, create=False)
    try:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()
    states = Counter(t.state.name for t in trials)
    done = [t for t in trials if t.datetime_start and t.datetime_complete and t.state.is_finished()]
    if not done:
        raise RuntimeError(f"study {name!r} has no finished trial")
    start = min(t.datetime_start for t in done if t.datetime_start is not None)
    end = max(t.datetime_complete for t in done if t.datetime_complete is not None)
    span = (end - start).total_seconds()
    durations = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in done
        if t.datetime_complete is not None and t.datetime_start is not None
    ]
    numbers = [t.number for t in trials]
    return {
        "trials": len(done),
        "overshoot": len(done) - budget,
        "states": dict(sorted(states.items())),
        "duplicate_numbers": len(numbers) - len(set(numbers)),
        "left_running": states.get("RUNNING", 0),
        "span_s": round(span, 3),
        "trials_per_s": round(len(done) / span, 4),
        "mean_trial_s": round(sum(durations) / len(durations), 4),
        "mean_trial_overhead_ms": round(1000 * (sum(durations) / len(durations) - sleep_s), 1),
    }


# --- the whole benchmark --------------------------------------------------------------------------


def postgres_reachable(url: str) -> tuple[bool, str]:
    from lrsearch.errors import LrsearchError
    from lrsearch.storage import open_storage

    try:
        open_storage(url).engine.dispose()
    except LrsearchError as e:
        return False, str(e)
    return True, ""


def cleanup(url: str, prefix: str) -> None:
    """Delete this run's studies (PostgreSQL is shared; the SQLite file is temporary anyway)."""
    import optuna

    from lrsearch.storage import open_storage

    storage = open_storage(url)
    try:
        for s in storage.get_all_studies():
            if s.study_name.startswith(prefix):
                optuna.delete_study(study_name=s.study_name, storage=storage)
    finally:
        storage.engine.dispose()


def bench_backend(url: str, args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    runs = []
    for n in args.workers:
        r = run_config(
            url,
            workers=n,
            trials_per_worker=args.trials_per_worker,
            sleep_s=args.sleep,
            sampler=args.sampler,
            prefix=prefix,
            via=args.via,
            device=args.device,
        )
        runs.append(r)
        print(
            f"  {n} worker(s): {r['trials']} trials in {r['span_s']:.2f} s = "
            f"{r['trials_per_s']:.3f}/s ({r['wall_s_with_startup']:.1f} s with start-up)",
            flush=True,
        )
    base = next((r["trials_per_s"] for r in runs if r["workers"] == 1), None)
    for r in runs:
        if base is None:
            continue
        r["scaling"] = round(r["trials_per_s"] / base, 3)
        r["efficiency"] = round(r["scaling"] / r["workers"], 3)
        r["meets_target"] = r["efficiency"] >= TARGET_EFFICIENCY
    return {"runs": runs}


def machine(postgres_url: str | None) -> dict[str, Any]:
    import sqlalchemy

    info = _common.machine()
    info["sqlite"] = __import__("sqlite3").sqlite_version
    try:
        import psycopg

        info["psycopg"] = psycopg.__version__
    except ImportError:
        pass
    if postgres_url:
        engine = sqlalchemy.create_engine(postgres_url)
        try:
            with engine.connect() as conn:
                info["postgresql"] = conn.execute(sqlalchemy.text("SHOW server_version")).scalar()
                info["postgresql_max_connections"] = conn.execute(
                    sqlalchemy.text("SHOW max_connections")
                ).scalar()
        except sqlalchemy.exc.SQLAlchemyError:
            pass
        finally:
            engine.dispose()
    return info


def print_table(results: dict[str, Any]) -> None:
    head = (
        f"{'storage':9s} {'workers':>7s} {'trials':>6s} {'span s':>7s} {'trials/s':>9s} "
        f"{'scaling':>8s} {'x N':>5s} {'>=' + str(TARGET_EFFICIENCY):>6s} {'ovh ms':>7s} "
        f"{'over':>5s}"
    )
    print("\n" + head)
    print("-" * len(head))
    for kind, r in results.items():
        if "skipped" in r:
            print(f"{kind:9s} {r['skipped']}")
            continue
        for run in r["runs"]:
            scaling = run.get("scaling")
            if scaling is None:
                judged = f"{'-':>8s} {'-':>5s} {'-':>6s}"
            else:
                ok = "yes" if run["meets_target"] else "NO"
                judged = f"{scaling:8.2f} {run['efficiency']:5.2f} {ok:>6s}"
            print(
                f"{kind:9s} {run['workers']:7d} {run['trials']:6d} {run['span_s']:7.2f} "
                f"{run['trials_per_s']:9.3f} {judged} "
                f"{run['mean_trial_overhead_ms']:7.1f} {run['overshoot']:5d}"
            )


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    top = 1
    for kind, r in results.items():
        runs = [run for run in r.get("runs", []) if "scaling" in run]
        if runs:
            xs = [run["workers"] for run in runs]
            ax.plot(xs, [run["scaling"] for run in runs], marker="o", label=kind)
            top = max(top, *xs)
    xs = list(range(1, top + 1))
    ax.plot(xs, xs, "k:", label="ideal (N)")
    ax.plot(
        xs,
        [TARGET_EFFICIENCY * x for x in xs],
        "k--",
        lw=0.8,
        label=f"target ({TARGET_EFFICIENCY} N)",
    )
    ax.set_xlabel("worker processes")
    ax.set_ylabel("throughput / one worker's")
    ax.set_title("lrsearch worker scaling (trials sleep a fixed time)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--workers", type=int, nargs="+", default=None, help="default: 1 2 4 8")
    p.add_argument("--trials-per-worker", type=int, default=None, help="default 8 (quick: 4)")
    p.add_argument("--sleep", type=float, default=None, help="seconds per trial (default 1.0)")
    p.add_argument("--storage", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--sampler", choices=("tpe", "random"), default="tpe")
    p.add_argument(
        "--via",
        choices=("worker", "run"),
        default="worker",
        help="worker: lrsearch worker on one shared budget (default); run: independent "
        "`lrsearch run` processes on the same study, each with its own share",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="the workers' --device (default cpu: a GPU's start-up would land in first trials)",
    )
    p.add_argument("--postgres-url", default=None, help="default: $LRSEARCH_TEST_POSTGRES_URL")
    p.add_argument("--quick", action="store_true", help="1, 2, 4 workers, 4 trials of 0.5 s")
    p.add_argument(
        "--note", default=None, help="a line about where and how it ran, kept in the JSON"
    )
    p.add_argument("--plot", action="store_true", help="also write a PNG beside --out")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    args = p.parse_args(argv)
    args.workers = args.workers or ([1, 2, 4] if args.quick else [1, 2, 4, 8])
    args.trials_per_worker = args.trials_per_worker or (4 if args.quick else 8)
    args.sleep = args.sleep if args.sleep is not None else (0.5 if args.quick else 1.0)
    if min(args.workers) < 1 or args.trials_per_worker < 1 or args.sleep <= 0:
        p.error("need --workers >= 1, --trials-per-worker >= 1, --sleep > 0")
    if 1 not in args.workers:
        args.workers = [1, *args.workers]  # scaling is relative to one worker
    args.workers = sorted(set(args.workers))
    args.postgres_url = (
        args.postgres_url or os.environ.get("LRSEARCH_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL
    )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))  # lrsearch from this checkout when run from anywhere
    from lrsearch.storage import mask_url

    prefix = f"bench-workers-{uuid.uuid4().hex[:8]}"
    results: dict[str, Any] = {}
    pg_used: str | None = None
    tmp = Path(tempfile.mkdtemp(prefix="bench-workers-db-"))
    try:
        backends = []
        if args.storage in ("sqlite", "both"):
            backends.append(("sqlite", f"sqlite:///{tmp / 'bench_workers.db'}"))
        if args.storage in ("postgres", "both"):
            ok, why = postgres_reachable(args.postgres_url)
            if ok:
                backends.append(("postgres", args.postgres_url))
                pg_used = args.postgres_url
            else:
                print(f"postgres: skipped ({why})")
                results["postgres"] = {"skipped": why}
        for kind, url in backends:
            print(f"{kind}: {mask_url(url)}", flush=True)
            try:
                results[kind] = bench_backend(url, args, prefix)
            finally:
                if kind == "postgres":
                    cleanup(url, prefix)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(results)
    pg = results.get("postgres", {}).get("runs", [])
    report = {
        "benchmark": "trials per second with N lrsearch worker processes (bench_workers.py)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "note": args.note,
        "machine": machine(pg_used),
        "source": _common.source(),
        "config": {
            "workers": args.workers,
            "trials_per_worker": args.trials_per_worker,
            "budget": "workers x trials_per_worker (the study's shared n_trials)",
            "sleep_s_per_trial": args.sleep,
            "task": "bench_workers:sleep_task (one batch of 8, a 4-8-2 MLP; the loss sleeps)",
            "sampler": f"{args.sampler} (lrsearch.search.make_sampler, constant_liar for tpe)",
            "pruner": "none",
            "processes": f"lrsearch {args.via} --device {args.device}",
            "quick": args.quick,
        },
        "timing": (
            "span = first trial start to last trial end (the storage's datetime_start / "
            "datetime_complete); trials_per_s = finished trials / span; process start-up is "
            "excluded by a barrier in the task factory; scaling = trials_per_s / one worker's on "
            "the same backend; efficiency = scaling / N; mean_trial_overhead_ms = mean trial "
            "duration - sleep"
        ),
        "target": f"scaling >= {TARGET_EFFICIENCY} x N up to 8 workers on PostgreSQL",
        "meets_target_postgres": (all(r.get("meets_target", False) for r in pg) if pg else None),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")
    if args.plot:
        png = args.out.with_suffix(".png")
        plot(results, png)
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

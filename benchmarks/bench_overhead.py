"""The engine's own cost per trial, against raw Optuna doing the same search.

Both sides run the same study side by side in one process: the same sampler (built by
``lrsearch.search.make_sampler``, seeded), the same pruner (none), the same storage URL and engine
options (``lrsearch.storage.open_storage``) and the same trivial objective, so what differs is only
what lrsearch does around each trial.

- **engine**: ``lrsearch.search.run_search`` over a tiny task (``G`` one-layer groups
  ``g0..g{G-1}``, ``g0`` freezable) with a ``train_fn`` that trains nothing and scores the rates.
- **raw**: ``optuna.create_study`` + ``study.optimize`` with an objective that suggests exactly the
  parameters lrsearch's ``per_group`` space suggests (``freeze.g0``, then ``lr.g<i>`` for the groups
  that train; same ranges, log scale) and returns the same value.

How it is timed. The two sides run in lockstep, in two threads that take turns: one trial cycle of
one side, then one of the other, never both at once, so load from elsewhere on the machine falls on
both alike. Each objective (raw's, and the engine's ``train_fn``) marks the end of a cycle once
sampling is done; a cycle is everything a side does from getting its turn back to its next objective
call: tell, bookkeeping, ask, sampling, attribute writes. A run of ``trials`` trials holds
``trials - 1`` such cycles; study creation, task preparation and opening the storage are outside
them on both sides.

- **ms per trial**: wall time per cycle, the median over repeats. **ratio** (judged, target
  <= 1.05): engine / raw within each repeat (both ran under the same load), the median over
  repeats. Beside them: the thread's CPU time (misses the PostgreSQL server's share), and "best":
  every run samples the very same trials (same seed, same values; checked), so cycle ``i`` does the
  same work in every repeat, and the mean over cycles of each cycle's fastest repeat is the cost
  with the least interference.
- **whole**: the whole call (storage opened, study created, task prepared) less the time spent
  waiting for the other side's turns; reported, not judged.

An untimed extra pass per side counts SQL statements and commits per trial (a SQLAlchemy event
listener, whole call minus a one-trial call), which shows where a difference comes from.

Optuna's log level is WARNING on both sides, as the ``lrsearch`` CLI sets it (at INFO, raw
``optimize`` would also query the best trial after every trial to log it).

Run (a few minutes with the defaults; PostgreSQL is skipped with a note when unreachable)::

    python benchmarks/bench_overhead.py
    python benchmarks/bench_overhead.py --trials 50 --repeats 5 --storage sqlite --groups 8

Results go to ``benchmarks/results/overhead.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# The task entry "bench_overhead:tiny_task" must be importable by lrsearch.tasks.load_task.
_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import optuna  # noqa: E402
import sqlalchemy  # noqa: E402
import torch  # noqa: E402
from _common import machine, source  # noqa: E402
from torch import nn  # noqa: E402

from lrsearch.errors import LrsearchError  # noqa: E402
from lrsearch.groups import LayerGroups  # noqa: E402
from lrsearch.search import make_pruner, make_sampler, run_search  # noqa: E402
from lrsearch.space import Sample  # noqa: E402
from lrsearch.spec import StudySpec, TrainSection  # noqa: E402
from lrsearch.storage import mask_url, open_storage  # noqa: E402
from lrsearch.tasks import TensorClassificationTask  # noqa: E402
from lrsearch.training import TrainResult  # noqa: E402

TARGET = 1.05
SIDES = ("raw", "engine")
LR_RANGE = (1e-5, 1e-1)
FREEZABLE = ("g0",)
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_OUT = _HERE / "results" / "overhead.json"


# --- taking turns ---------------------------------------------------------------------------


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.thread_time()


@dataclass
class Lockstep:
    """Two sides, one thread each, that run one trial cycle at a time in turn."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    turn: str = SIDES[0]
    done: set[str] = field(default_factory=set)
    resumed: dict[str, tuple[float, float]] = field(default_factory=dict)
    waited: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SIDES, 0.0))
    cycles: dict[str, list[tuple[float, float]]] = field(
        default_factory=lambda: {s: [] for s in SIDES}
    )

    def _pass(self, side: str) -> None:
        """Hand the turn to the other side (unless it has finished) and wait for it back."""
        other = SIDES[1 - SIDES.index(side)]
        t0 = time.perf_counter()
        with self.cond:
            if other not in self.done:
                self.turn = other
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.turn == side or other in self.done)
        self.waited[side] += time.perf_counter() - t0
        self.resumed[side] = _clock()

    def start(self, side: str) -> None:
        t0 = time.perf_counter()
        with self.cond:
            self.cond.wait_for(lambda: self.turn == side)
        self.waited[side] += time.perf_counter() - t0

    def checkpoint(self, side: str) -> None:
        """End of a cycle: its objective was called with its parameters sampled."""
        if side in self.resumed:
            (w0, c0), (w1, c1) = self.resumed[side], _clock()
            self.cycles[side].append((w1 - w0, c1 - c0))
        self._pass(side)

    def finish(self, side: str) -> None:
        with self.cond:
            self.done.add(side)
            self.turn = SIDES[1 - SIDES.index(side)]
            self.cond.notify_all()


_LOCKSTEP: Lockstep | None = None
_SIDE = threading.local()


def _checkpoint() -> None:
    if _LOCKSTEP is not None:
        _LOCKSTEP.checkpoint(_SIDE.name)


# --- the trivial task and objective ---------------------------------------------------------


def tiny_task(groups: int = 4) -> TensorClassificationTask:
    """A task whose model is ``groups`` stacked ``Linear(2, 2)``; group ``g<i>`` is layer ``i``."""
    x = torch.zeros(4, 2)
    y = torch.zeros(4, dtype=torch.long)
    return TensorClassificationTask(
        model_fn=lambda: nn.Sequential(*(nn.Linear(2, 2) for _ in range(groups))),
        x_train=x,
        y_train=y,
        x_val=x,
        y_val=y,
    )


def score(lrs: dict[str, float]) -> float:
    """A cheap deterministic value with its optimum at lr = 1e-3 everywhere; frozen costs 0.5."""
    return -sum(0.5 if lr == 0 else (math.log10(lr) + 3.0) ** 2 for lr in lrs.values())


def trivial_train(
    task: Any,
    groups: LayerGroups,
    sample: Sample,
    cfg: TrainSection,
    *,
    device: Any = None,
    seed: int = 0,
    report: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """``train_trial``'s signature, no training and no reports (so nothing to prune)."""
    _checkpoint()
    return TrainResult(
        value=score(sample.lrs),
        steps=0,
        evaluations=0,
        seconds=0.0,
        device="cpu",
        precision="fp32",
    )


def raw_objective(n_groups: int) -> Callable[[optuna.Trial], float]:
    """Raw Optuna's objective: the suggests of lrsearch's ``per_group`` space, in its order."""
    names = [f"g{i}" for i in range(n_groups)]

    def objective(trial: optuna.Trial) -> float:
        frozen = {
            g
            for g in names
            if g in FREEZABLE and trial.suggest_categorical(f"freeze.{g}", [False, True])
        }
        lrs = {
            g: 0.0 if g in frozen else trial.suggest_float(f"lr.{g}", *LR_RANGE, log=True)
            for g in names
        }
        _checkpoint()  # after sampling, where the engine calls its train_fn
        return score(lrs)

    return objective


def make_spec(n_groups: int, trials: int, sampler: str) -> StudySpec:
    return StudySpec.from_dict(
        {
            "study": {
                "name": "bench-overhead",
                "direction": "maximize",
                "n_trials": trials,
                "seed": 0,
            },
            "task": {"entry": "bench_overhead:tiny_task", "kwargs": {"groups": n_groups}},
            "groups": {f"g{i}": [str(i)] for i in range(n_groups)},
            "space": {"kind": "per_group", "lr": list(LR_RANGE), "freeze": list(FREEZABLE)},
            "pruner": {"kind": "none"},
            "sampler": {"kind": sampler},
        },
        source="bench_overhead",
    )


# --- running the sides ----------------------------------------------------------------------


def _call(side: str, spec: StudySpec, url: str, name: str) -> float:
    """One study on one side; returns the seconds of the whole call."""
    t0 = time.perf_counter()
    if side == "raw":
        study = optuna.create_study(
            study_name=name,
            storage=open_storage(url),
            sampler=make_sampler(spec),
            pruner=make_pruner(spec),
            direction="maximize",
        )
        study.optimize(raw_objective(len(spec.groups.patterns)), n_trials=spec.study.n_trials)
    else:
        run_search(spec, storage=url, study_name=name, device="cpu", train_fn=trivial_train)
    return time.perf_counter() - t0


def _params(url: str, name: str) -> list[dict[str, Any]]:
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    return [t.params for t in study.get_trials(deepcopy=False)]


def run_pair(spec: StudySpec, url: str, names: dict[str, str], first: str) -> dict[str, Any]:
    """Both sides in lockstep; per side: cycles (wall, cpu), whole seconds, trial params."""
    global _LOCKSTEP
    lock = Lockstep(turn=first)
    whole: dict[str, float] = {}
    errors: list[BaseException] = []

    def work(side: str) -> None:
        _SIDE.name = side
        try:
            lock.start(side)
            whole[side] = _call(side, spec, url, names[side])
        except BaseException as e:  # re-raised in the main thread
            errors.append(e)
        finally:
            lock.finish(side)

    _LOCKSTEP = lock
    try:
        threads = [threading.Thread(target=work, args=(s,), name=f"bench-{s}") for s in SIDES]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        _LOCKSTEP = None
    if errors:
        raise errors[0]
    return {
        s: {
            "cycles": lock.cycles[s],
            "whole": whole[s] - lock.waited[s],
            "params": _params(url, names[s]),
        }
        for s in SIDES
    }


@contextmanager
def sql_counter() -> Iterator[Counter[str]]:
    """Counts SQL statements (by first word) and commits on every SQLAlchemy engine meanwhile."""
    counts: Counter[str] = Counter()

    def on_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        counts[statement.lstrip().split(None, 1)[0].upper()] += 1

    def on_commit(conn: Any) -> None:
        counts["COMMIT"] += 1

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", on_execute)
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "commit", on_commit)
    try:
        yield counts
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", on_execute)
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "commit", on_commit)


def count_loop_sql(spec: StudySpec, url: str, prefix: str) -> dict[str, Any]:
    """SQL per trial of each side, from the count of a whole call minus a one-trial call."""
    out: dict[str, Any] = {}
    n = spec.study.n_trials
    one = replace(spec, study=replace(spec.study, n_trials=1))
    for side in SIDES:
        counted: dict[int, Counter[str]] = {}
        for s in (spec, one):
            with sql_counter() as counts:
                _call(side, s, url, f"{prefix}-count-{side}-{s.study.n_trials}")
            counted[s.study.n_trials] = counts
        # Differencing cancels the one-time statements (schema checks, study creation).
        keys = sorted(set(counted[n]) | set(counted[1]))
        diff = {k: round((counted[n][k] - counted[1][k]) / (n - 1), 2) for k in keys}
        diff = {k: v for k, v in diff.items() if v}
        diff["total"] = round(sum(v for k, v in diff.items() if k != "COMMIT"), 2)
        out[side] = diff
    return out


# --- the benchmark --------------------------------------------------------------------------


def bench_storage(
    kind: str, url: str, args: argparse.Namespace, spec: StudySpec, prefix: str
) -> dict[str, Any]:
    # Untimed: creates the schema, imports the task, warms both code paths and connection pools.
    short = replace(spec, study=replace(spec.study, n_trials=3))
    run_pair(short, url, {s: f"{prefix}-warmup-{s}" for s in SIDES}, SIDES[0])
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
    same_params = True
    for r in range(args.repeats):
        pair = run_pair(spec, url, {s: f"{prefix}-{s}-{r}" for s in SIDES}, SIDES[r % 2])
        for side, run in pair.items():
            run["wall"] = statistics.fmean(w for w, _ in run["cycles"])
            run["cpu"] = statistics.fmean(c for _, c in run["cycles"])
            runs[side].append(run)
        same_params = same_params and pair["raw"]["params"] == pair["engine"]["params"]
        raw, eng = pair["raw"], pair["engine"]
        print(
            f"  {kind:8s} repeat {r}  ms/trial wall raw {1e3 * raw['wall']:7.2f} engine "
            f"{1e3 * eng['wall']:7.2f} ({eng['wall'] / raw['wall']:.3f}x)  cpu raw "
            f"{1e3 * raw['cpu']:7.2f} engine {1e3 * eng['cpu']:7.2f} "
            f"({eng['cpu'] / raw['cpu']:.3f}x)",
            flush=True,
        )

    def median(side: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[side])

    def best(side: str, col: int) -> float:
        # Cycle i does the same work in every repeat; its fastest repeat had the least interference.
        per_cycle = zip(*(run["cycles"] for run in runs[side]), strict=True)
        return statistics.fmean(min(c[col] for c in cycle) for cycle in per_cycle)

    wall = {s: median(s, "wall") for s in SIDES}
    cpu = {s: median(s, "cpu") for s in SIDES}
    wall_best = {s: best(s, 0) for s in SIDES}
    cpu_best = {s: best(s, 1) for s in SIDES}
    whole = {s: median(s, "whole") for s in SIDES}
    pairs = list(zip(runs["raw"], runs["engine"], strict=True))
    # The sides of a repeat ran interleaved under the same load: judge the pairs, not the medians.
    ratio = statistics.median(e["wall"] / r["wall"] for r, e in pairs)

    def ms(values: dict[str, float]) -> dict[str, float]:
        return {s: round(1e3 * v, 3) for s, v in values.items()}

    result: dict[str, Any] = {
        "url": mask_url(url),
        "ms_per_trial_wall": ms(wall),
        "ratio": round(ratio, 4),
        "meets_target": ratio <= TARGET,
        "ratio_per_repeat": [round(e["wall"] / r["wall"], 4) for r, e in pairs],
        "overhead_ms_per_trial": round(
            1e3 * statistics.median(e["wall"] - r["wall"] for r, e in pairs), 3
        ),
        "ms_per_trial_cpu": ms(cpu),
        "ratio_cpu": round(statistics.median(e["cpu"] / r["cpu"] for r, e in pairs), 4),
        "ms_per_trial_wall_best": ms(wall_best),
        "ratio_best": round(wall_best["engine"] / wall_best["raw"], 4),
        "ms_per_trial_cpu_best": ms(cpu_best),
        "ratio_cpu_best": round(cpu_best["engine"] / cpu_best["raw"], 4),
        "same_params": same_params,
        "whole_s": {s: round(v, 3) for s, v in whole.items()},
        "ratio_whole": round(whole["engine"] / whole["raw"], 4),
        "repeats": {
            s: {
                "ms_per_trial_wall": [round(1e3 * run["wall"], 3) for run in runs[s]],
                "ms_per_trial_cpu": [round(1e3 * run["cpu"], 3) for run in runs[s]],
                "whole_s": [round(run["whole"], 3) for run in runs[s]],
            }
            for s in SIDES
        },
    }
    if not args.no_sql_count:
        result["sql_per_trial"] = count_loop_sql(spec, url, prefix)
    return result


def storages(args: argparse.Namespace, tmp: Path) -> Iterator[tuple[str, str | None, str]]:
    """(kind, url or None when unusable, note)."""
    if args.storage in ("sqlite", "both"):
        yield "sqlite", f"sqlite:///{tmp / 'bench_overhead.db'}", ""
    if args.storage in ("postgres", "both"):
        try:
            open_storage(args.postgres_url).remove_session()
        except LrsearchError as e:
            yield "postgres", None, f"skipped: {e}"
        else:
            yield "postgres", args.postgres_url, ""


def cleanup(url: str, prefix: str) -> None:
    """Delete this run's studies (PostgreSQL is shared; the SQLite file is temporary anyway)."""
    storage = open_storage(url)
    for s in storage.get_all_studies():
        if s.study_name.startswith(prefix):
            optuna.delete_study(study_name=s.study_name, storage=storage)


def print_table(results: dict[str, Any]) -> None:
    print(
        f"\n{'':9s} {'ms/trial wall (median)':^31s} | {'cpu':^6s} | "
        f"{'ms/trial wall (best)':^22s} | {'SQL/trial':^12s}"
    )
    print(
        f"{'storage':9s} {'raw':>8s} {'engine':>8s} {'ratio':>6s} {'<=' + str(TARGET):>6s} | "
        f"{'ratio':>6s} | {'raw':>7s} {'engine':>7s} {'ratio':>6s} | {'raw':>5s} {'engine':>6s}"
    )
    for kind, r in results.items():
        if "skipped" in r:
            print(f"{kind:9s} {r['skipped']}")
            continue
        wall, best = r["ms_per_trial_wall"], r["ms_per_trial_wall_best"]
        sql = r.get("sql_per_trial", {})
        print(
            f"{kind:9s} {wall['raw']:8.2f} {wall['engine']:8.2f} {r['ratio']:6.3f} "
            f"{'yes' if r['meets_target'] else 'NO':>6s} | {r['ratio_cpu']:6.3f} | "
            f"{best['raw']:7.2f} {best['engine']:7.2f} {r['ratio_best']:6.3f} | "
            f"{sql.get('raw', {}).get('total', math.nan):5.1f} "
            f"{sql.get('engine', {}).get('total', math.nan):6.1f}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--trials", type=int, default=100, help="trials per study (default 100)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side (default 3)")
    p.add_argument("--storage", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--groups", type=int, default=4, help="layer groups (default 4)")
    p.add_argument("--sampler", choices=("tpe", "random"), default="tpe")
    p.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    p.add_argument("--no-sql-count", action="store_true", help="skip the SQL counting pass")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    args = p.parse_args(argv)
    if args.trials < 2 or args.repeats < 1 or args.groups < 1:
        p.error("need --trials >= 2, --repeats >= 1, --groups >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = make_spec(args.groups, args.trials, args.sampler)
    prefix = f"bench-overhead-{uuid.uuid4().hex[:8]}"
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, url, note in storages(args, Path(tmp)):
            if url is None:
                print(f"{kind}: {note}")
                results[kind] = {"skipped": note}
                continue
            try:
                results[kind] = bench_storage(kind, url, args, spec, prefix)
            finally:
                if kind == "postgres":
                    cleanup(url, prefix)
    print_table(results)
    report = {
        "benchmark": "engine overhead per trial vs raw Optuna (benchmarks/bench_overhead.py)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "source": source(),
        "config": {
            "trials": args.trials,
            "repeats": args.repeats,
            "groups": args.groups,
            "space": f"per_group, lr {list(LR_RANGE)} log, freezable {list(FREEZABLE)}",
            "sampler": (
                f"{args.sampler} via lrsearch.search.make_sampler (seed 0, n_startup_trials "
                f"{spec.sampler.n_startup_trials}, multivariate {spec.sampler.multivariate})"
            ),
            "pruner": "none",
            "optuna_log_level": "WARNING",
        },
        "timing": (
            "raw and engine run in lockstep threads, one trial cycle each in turn; a cycle = from "
            "getting the turn back to the next objective call (tell, bookkeeping, ask, sampling), "
            "trials - 1 per run; ms_per_trial = mean cycle, median over repeats; ratio (judged, "
            "wall) = median over repeats of engine / raw in the same repeat; cpu = the side's "
            "thread CPU time; *_best = mean over cycles of each cycle's fastest repeat; whole_s = "
            "the whole call less waiting for the other side"
        ),
        "target": TARGET,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

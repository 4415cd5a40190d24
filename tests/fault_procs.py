"""Processes that tests/test_faults.py starts and hurts: ``python fault_procs.py WHAT ARGS...``.

- ``create URL NAME SPEC_JSON START_AT``: open the storage and create (or resume) study NAME at
  the wall-clock time START_AT, so that several processes race on a fresh database.
- ``die URL NAME POINT``: a worker on study NAME that kills itself with SIGKILL at POINT of its
  first trial's life: ``before_sample`` (asked, heartbeat written, no rates yet), ``mid_train``
  (after its first report), ``before_tell`` (trained, its result not stored).
- ``search URL SPEC_JSON``: ``run_search`` in-process, as a program embedding lrsearch does; prints
  ``returned`` if it returns.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any


def _die(*args: Any, **kwargs: Any) -> Any:
    os.kill(os.getpid(), signal.SIGKILL)


def create(url: str, name: str, spec_json: str, start_at: str) -> None:
    import optuna

    from lrsearch.spec import StudySpec
    from lrsearch.storage import create_or_resume, open_storage

    spec = StudySpec.from_dict(json.loads(spec_json))
    time.sleep(max(0.0, float(start_at) - time.time()))
    storage = open_storage(url, wait=30)
    _, existed = create_or_resume(
        storage,
        name,
        spec,
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(),
        pruner=optuna.pruners.NopPruner(),
    )
    print("lrsearch-resumed" if existed else "lrsearch-created")


def die(url: str, name: str, point: str) -> None:
    from lrsearch import _optuna_compat
    from lrsearch.search import run_worker, trial

    if point == "before_sample":
        trial._sample = _die  # type: ignore[assignment]
    elif point == "mid_train":
        reporter = trial._reporter

        def dying_reporter(*args: Any) -> Any:
            report = reporter(*args)

            def dying(step: int, value: float) -> None:
                report(step, value)
                _die()

            return dying

        trial._reporter = dying_reporter  # type: ignore[assignment]
    elif point == "before_tell":
        _optuna_compat.tell = _die  # type: ignore[assignment]
    else:
        raise SystemExit(f"unknown point {point!r}")
    run_worker(url, name, device="cpu")
    raise SystemExit("the worker was not killed")


def run(url: str, spec_json: str) -> None:
    from lrsearch.search import run_search
    from lrsearch.spec import StudySpec

    run_search(StudySpec.from_dict(json.loads(spec_json)), storage=url, device="cpu")
    print("returned", flush=True)


if __name__ == "__main__":
    what, *args = sys.argv[1:]
    {"create": create, "die": die, "search": run}[what](*args)

"""optuna-dashboard opens an lrsearch study database as it is, through its WSGI app, in-process.

The optional extra ``lrsearch[dashboard]`` (in ``dev`` too) installs it; without it these tests
are skipped.
"""

from __future__ import annotations

import io
import json
from typing import Any

import optuna
import pytest
from conftest import snapshot_trials

from lrsearch.errors import TrialFailure
from lrsearch.schema import GROUPS_ATTR, OUTCOME_ATTR, SPEC_ATTR, TRIAL_ATTR
from lrsearch.search import run_search
from lrsearch.storage import open_storage, trial_lrs
from lrsearch.training import TrainResult
from lrsearch.verify import verify_attr, verify_trial

optuna_dashboard = pytest.importorskip(
    "optuna_dashboard",
    reason="optuna-dashboard is not installed (pip install 'lrsearch[dashboard]')",
)

N_TRIALS = 4
DIVERGED = 2  # the trial (and seed: the study's seed is 0) that diverges


def _train(task: Any, groups: Any, sample: Any, cfg: Any, **kwargs: Any) -> TrainResult:
    if kwargs["seed"] == DIVERGED:
        raise TrialFailure("diverged: loss is nan at step 1 (scripted)", diverged=True)
    return TrainResult(0.5 + sum(sample.lrs.values()), 4, 1, 0.01, "cpu", "fp32")


def get(app: Any, path: str) -> tuple[str, Any]:
    """``GET path`` on a WSGI app: the status line and the JSON body."""
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    return status[0], json.loads(body)


def test_the_dashboard_lists_our_study_with_its_parameters_and_attributes(
    storage_url: str, study_name: str, toy_spec: Any
) -> None:
    spec = toy_spec(study_name, study={"n_trials": N_TRIALS})
    run_search(spec, storage=storage_url, device="cpu", train_fn=_train)
    verify_trial(open_storage(storage_url), study_name, seeds=1, train_fn=_train)
    storage = open_storage(storage_url)
    study = optuna.load_study(study_name=study_name, storage=storage)
    # repr: a diverged trial's NaN intermediate value is never == itself.
    before = repr((snapshot_trials(storage, study_name), study.user_attrs))

    # As a user starts it: `optuna-dashboard URL`, the URL as lrsearch was given it.
    app = optuna_dashboard.wsgi(storage_url)
    status, listing = get(app, "/api/studies")

    assert status.startswith("200"), listing
    ours = [s for s in listing["study_summaries"] if s["study_name"] == study_name]
    assert len(ours) == 1
    assert ours[0]["directions"] == ["maximize"]
    study_keys = {a["key"] for a in ours[0]["user_attrs"]}
    assert {SPEC_ATTR, GROUPS_ATTR, verify_attr(study.best_trial.number)} <= study_keys

    status, detail = get(app, f"/api/studies/{ours[0]['study_id']}")

    assert status.startswith("200"), detail
    assert detail["name"] == study_name
    trials = {t["number"]: t for t in detail["trials"]}
    assert sorted(trials) == list(range(N_TRIALS))
    space = {p["name"] for p in detail["union_search_space"]}
    assert {"freeze.embed", "lr.body", "lr.head"} <= space
    for frozen in study.get_trials():
        shown = trials[frozen.number]
        assert shown["state"] == frozen.state.name.capitalize()
        params = {p["name"]: p["param_external_value"] for p in shown["params"]}
        assert params == {k: str(v) for k, v in frozen.params.items()}
        assert {k for k in params if k.startswith("lr.")} == {
            f"lr.{g}" for g, lr in trial_lrs(frozen).items() if lr > 0
        }
        attrs = {a["key"]: a["value"] for a in shown["user_attrs"]}
        assert json.loads(attrs[TRIAL_ATTR])["lrs"] == trial_lrs(frozen)
        if frozen.number == DIVERGED:
            assert attrs[OUTCOME_ATTR] == "diverged"
    # Reading changed nothing.
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url))
    after = repr((snapshot_trials(storage, study_name), study.user_attrs))
    assert after == before

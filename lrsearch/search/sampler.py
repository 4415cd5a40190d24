"""The study's sampler, from ``[sampler]``: TPE, a Gaussian process, random, or ``auto``.

- ``tpe``: Optuna's TPE, multivariate with group decomposition by default, so that a group's rate
  is modelled only in the trials where that group trained (the freeze choice makes the space
  conditional). ``multivariate = false`` makes it independent per parameter.
- ``gp``: Optuna's ``GPSampler`` (a Gaussian process, log expected improvement), which tends to
  need fewer trials than TPE in a small continuous space. It models only the parameters every
  trial has: in a space with freezable groups the conditional rates are sampled at random. It
  needs SciPy (``pip install "lrsearch[gp]"``); torch it shares with the trainer.
- ``random``: uniform (log-uniform for rates) sampling, the floor any model must beat.
- ``auto``: :func:`choose_kind`, by the space's dimension and the budget.
"""

from __future__ import annotations

import importlib.util
import warnings

import optuna

from lrsearch.errors import LrsearchError
from lrsearch.spec import StudySpec

# auto: a GP where it pays and stays cheap. Its fit grows as trials^3 and its edge over TPE is at
# small budgets; a space with conditional parameters it cannot model (they would go random).
GP_MAX_DIMENSIONS = 12
GP_MAX_TRIALS = 100


def choose_kind(spec: StudySpec, *, dimensions: int, conditional: bool) -> str:
    """The sampler ``[sampler] kind`` names; for ``auto``, the rule below.

    ``auto`` is ``gp`` when the space has no conditional parameter (no freezable group in a
    per_group space), at most :data:`GP_MAX_DIMENSIONS` parameters and a budget (``[study]
    n_trials``) of at most :data:`GP_MAX_TRIALS`; else ``tpe``.

    Example:
        >>> from lrsearch.spec import StudySpec
        >>> spec = StudySpec.from_dict({"study": {"name": "s"}, "task": {"entry": "a.b:c"},
        ...     "groups": {"all": ["*"]}, "sampler": {"kind": "auto"}})
        >>> choose_kind(spec, dimensions=5, conditional=False)
        'gp'
        >>> choose_kind(spec, dimensions=5, conditional=True)
        'tpe'
    """
    kind = spec.sampler.kind
    if kind != "auto":
        return kind
    small = dimensions <= GP_MAX_DIMENSIONS and spec.study.n_trials <= GP_MAX_TRIALS
    return "gp" if small and not conditional else "tpe"


def build_sampler(
    spec: StudySpec, *, seed: int | None, dimensions: int, conditional: bool
) -> optuna.samplers.BaseSampler:
    """The sampler of ``spec`` (``auto`` resolved by :func:`choose_kind`), seeded with ``seed``.

    Raises:
        LrsearchError: ``gp`` was chosen and SciPy is not installed.
    """
    s = spec.sampler
    kind = choose_kind(spec, dimensions=dimensions, conditional=conditional)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        # `multivariate`, `group` and GPSampler are flagged experimental, yet they are what we
        # need; the warning would print on every worker start.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind == "gp":
            _require_scipy(auto=s.kind == "auto")
            return optuna.samplers.GPSampler(
                seed=seed,
                n_startup_trials=s.n_startup_trials,
                # Conditional rates are sampled at random by design; a warning per trial and
                # parameter would drown the log.
                warn_independent_sampling=False,
            )
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=s.n_startup_trials,
            multivariate=s.multivariate,
            group=s.multivariate if s.group is None else s.group,
            constant_liar=True,
        )


def _require_scipy(*, auto: bool) -> None:
    if importlib.util.find_spec("scipy") is None:
        why = '[sampler] kind = "auto" chose "gp"' if auto else '[sampler] kind = "gp"'
        raise LrsearchError(
            f"{why} (Optuna's GPSampler), which needs SciPy, and SciPy is not installed; "
            'pip install "lrsearch[gp]" (or scipy), or set [sampler] kind = "tpe"'
        )

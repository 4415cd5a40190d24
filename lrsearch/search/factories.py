"""The study's sampler and pruner from its spec (:mod:`~lrsearch.search.sampler` picks the kind)."""

from __future__ import annotations

import optuna

from lrsearch.limits import SEED_RANGE
from lrsearch.search.sampler import build_sampler
from lrsearch.space import SearchSpace
from lrsearch.spec import StudySpec

__all__ = ["make_pruner", "make_sampler"]


def make_sampler(
    spec: StudySpec, *, space: SearchSpace | None = None, offset: int = 0, seeded: bool = True
) -> optuna.samplers.BaseSampler:
    """The study's sampler (:mod:`lrsearch.search.sampler` says which and why).

    Args:
        spec: The study's spec; ``[study] seed`` seeds the sampler.
        space: The resolved space, whose dimension ``[sampler] kind = "auto"`` weighs; default:
            the spec's named groups.
        offset: Trials the study already has. A resumed seeded study adds it to the seed: the same
            seed again would sample the same random start-up points as the first run did.
        seeded: ``False`` ignores the seed. Workers do: workers that start together see the same
            number of trials, so one seed would have them all sample the same start-up points.

    Raises:
        LrsearchError: The chosen sampler's package is not installed.
    """
    seed = None
    if spec.study.seed is not None and seeded:
        # Wrapped: NumPy, under Optuna's samplers, takes seeds below 2**32 only, and a study
        # seeded near the top would fail on resume.
        seed = (spec.study.seed + offset) % SEED_RANGE
    space = space or SearchSpace(spec.space, spec.groups.names)
    dimensions, conditional = space.dimensions()
    return build_sampler(spec, seed=seed, dimensions=dimensions, conditional=conditional)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The study's pruner; each evaluation (every ``eval_every`` steps) is a pruning point."""
    p = spec.pruner
    if p.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource, reduction_factor=p.reduction_factor
        )
    if p.kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=p.min_resource, reduction_factor=p.reduction_factor
        )
    if p.kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    return optuna.pruners.NopPruner()

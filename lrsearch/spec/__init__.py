"""Study files: TOML in, frozen dataclasses out, every problem reported at once.

A study file has the sections ``study``, ``task``, ``groups``, ``space``, ``train``, ``pruner``,
``sampler`` and ``winner`` (docs/study-file.md, "Study file reference", lists every key). Unknown
keys are errors, because a typo in a learning-rate search silently searches the wrong thing. The
same reader checks a spec stored inside a study (``StudySpec.from_dict``), so a worker rebuilding a
study from the database gets the same checks.

Who owns what (each imports only those above it):

- ``validate``: reading TOML tables into dataclasses, driven by their fields (type, default,
  ``metadata`` for bounds and rules), every problem collected; it declares no section.
- ``checks``: the study file's rules a field's type cannot say (a range per group, a name
  Optuna can store, a key that needs another), cited in the fields' metadata.
- ``model``: the sections as frozen dataclasses (``StudySection`` ... ``WinnerSection``), each
  key written once, and the words keys may take (``OPTIMIZERS`` ...).
- ``rules``: ``[groups]`` (its keys are the group names) and rules between sections: what
  ``[space]`` names (``group_ref_problems``, ``fixed_rate``, also used by ``lrsearch.space`` and
  ``lrsearch.init``), ``cost`` against pruning, the trial budget.
- ``load``: the whole file, ``StudySpec`` (``from_dict``, ``to_dict``, ``search_dict``) and its
  ``SECTIONS``, and ``load_spec``, which reads it from disk.
"""

from __future__ import annotations

from lrsearch.spec.load import SECTIONS, StudySpec, load_spec, tomllib
from lrsearch.spec.model import (
    FREEZE_MODES,
    OPTIMIZERS,
    PRECISIONS,
    PRUNERS,
    SAMPLERS,
    SCHEDULES,
    SPACE_KINDS,
    STARTS,
    GroupsSection,
    PrunerSection,
    SamplerSection,
    SpaceSection,
    StudySection,
    TaskSection,
    TrainSection,
    WinnerSection,
)
from lrsearch.spec.rules import fixed_rate, group_ref_problems

__all__ = [
    "FREEZE_MODES",
    "OPTIMIZERS",
    "PRECISIONS",
    "PRUNERS",
    "SAMPLERS",
    "SCHEDULES",
    "SECTIONS",
    "SPACE_KINDS",
    "STARTS",
    "GroupsSection",
    "PrunerSection",
    "SamplerSection",
    "SpaceSection",
    "StudySection",
    "StudySpec",
    "TaskSection",
    "TrainSection",
    "WinnerSection",
    "fixed_rate",
    "group_ref_problems",
    "load_spec",
    "tomllib",
]

"""Study files: TOML in, frozen dataclasses out, every problem reported at once.

A study file has the sections ``study``, ``task``, ``groups``, ``space``, ``train``, ``pruner``,
``sampler`` and ``winner`` (docs/study-file.md, "Study file reference", lists every key). Unknown
keys are errors, because a typo in a learning-rate search silently searches the wrong thing. The
same reader checks a spec stored inside a study (``StudySpec.from_dict``), so a worker rebuilding a
study from the database gets the same checks.

Who owns what (imports flow down this list):

- ``model``: the sections as frozen dataclasses (``StudySection`` ... ``WinnerSection``) and the
  words their keys may take (``OPTIMIZERS``, ``SECTIONS`` ...).
- ``rules``: rules between ``[space]`` and the group names (``group_ref_problems``,
  ``fixed_rate``), also used by ``lrsearch.space`` and ``lrsearch.init``.
- ``validate``: reading TOML tables into sections, collecting every problem.
- ``load``: the whole file, ``StudySpec`` (``from_dict``, ``to_dict``, ``search_dict``), and
  ``load_spec``, which reads it from disk.
"""

from __future__ import annotations

from lrsearch.spec.load import StudySpec, load_spec, tomllib
from lrsearch.spec.model import (
    FREEZE_MODES,
    OPTIMIZERS,
    PRECISIONS,
    PRUNERS,
    SAMPLERS,
    SCHEDULES,
    SECTIONS,
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

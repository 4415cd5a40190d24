"""A whole study file: ``StudySpec``, read from TOML (``load_spec``) or a dict, written back."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from lrsearch.errors import SpecError
from lrsearch.spec.model import (
    GroupsSection,
    PrunerSection,
    SamplerSection,
    SpaceSection,
    StudySection,
    TaskSection,
    TrainSection,
    WinnerSection,
    execution_keys,
    ignored_by_kind,
)
from lrsearch.spec.rules import between_sections, read_groups
from lrsearch.spec.validate import Reader

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class StudySpec:
    """A whole study file, checked."""

    study: StudySection
    task: TaskSection = field(
        metadata={"absent": 'section is required (entry = "package.module:function")'}
    )
    groups: GroupsSection = field(metadata={"read": read_groups})
    space: SpaceSection
    train: TrainSection
    pruner: PrunerSection
    sampler: SamplerSection
    winner: WinnerSection = field(default_factory=WinnerSection)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that :meth:`from_dict` reads back to an equal spec."""
        # TOML has no null: an unset optional key is left out, as it was in the file.
        data = {
            section: {k: v for k, v in values.items() if v is not None}
            for section, values in asdict(self).items()
        }
        for key in ignored_by_kind(self.space.kind):
            data["space"].pop(key, None)
        for table in fields(self):
            for f in fields(getattr(self, table.name)):
                if not f.metadata.get("in_file", True):
                    data[table.name].pop(f.name, None)
        data["groups"] = (
            {"auto_depth": self.groups.auto_depth}
            if self.groups.auto_depth
            else {name: list(patterns) for name, patterns in self.groups.patterns}
        )
        return _jsonable(data)

    def search_dict(self) -> dict[str, Any]:
        """The parts that define what a study searches: all but its name and budget."""
        data = self.to_dict()
        data["study"] = {
            k: v for k, v in data["study"].items() if k in ("direction", "seed", "cost")
        }
        # How a machine executes trials, not what they compute: a worker may differ (its own
        # cache folder, memory, batching, which gives the same results within rounding).
        for key in execution_keys():
            data["train"].pop(key, None)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<spec>") -> StudySpec:
        """Check ``data`` (the TOML's tables) and build a spec.

        Raises:
            SpecError: Listing every problem found, not only the first.
        """
        reader = Reader(source)
        spec = reader.read(cls, data)
        group_table = data.get("groups", {})
        reader.problems += between_sections(
            study=spec.study,
            groups=spec.groups,
            space=spec.space,
            pruner=spec.pruner,
            winner=spec.winner,
            group_table=group_table if isinstance(group_table, dict) else {},
        )
        reader.raise_problems()
        return spec


# The sections of a study file, in the order they are read and reported.
SECTIONS = tuple(f.name for f in fields(StudySpec))


def load_spec(path: str | Path) -> StudySpec:
    """Read and check a study file.

    Raises:
        SpecError: The file is missing, is not valid TOML, or has any problem (all listed together).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise SpecError(str(p), ["file not found; check the path to the study file"]) from e
    except OSError as e:
        raise SpecError(str(p), [f"cannot read the file: {e.strerror}"]) from e
    except UnicodeDecodeError as e:
        # A binary file or another encoding: without this a traceback reaches the user.
        raise SpecError(str(p), [f"not UTF-8 text ({e.reason} at byte {e.start})"]) from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(str(p), [f"invalid TOML: {e}"]) from e
    spec = StudySpec.from_dict(data, source=str(p))
    return replace(spec, task=replace(spec.task, folder=str(p.resolve().parent)))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value

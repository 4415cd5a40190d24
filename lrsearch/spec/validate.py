"""Reading TOML tables into frozen dataclasses, driven by their fields; every problem collected.

A dataclass field is a key of its table: the field's type says what the key may hold (``int``,
``float``, ``str``, ``bool``, a ``Literal`` of words, a ``tuple[float, float]`` range, a table,
each ``| None`` where unset is allowed), its default what an absent key means, and its
``metadata`` the rest, so that a key's name is written once, in its dataclass:

- ``minimum`` / ``maximum`` / ``above``: bounds of a number (``>=``, ``<=``, ``>``);
  ``upper``: the bound of a range's high end; ``required``: the key must be there;
- ``kinds``: the TOML types accepted, where the type does not say (``int | float``);
- ``refine``: ``value -> problem | None``, a further rule for a well-typed value (its default
  stands in where the rule fails);
- ``read``: ``(reader, where, value, seen) -> value``, reading a key no type says;
- ``check``: ``seen -> [(key, problem)]``, run after the field, for a rule between keys;
- ``in_file``: ``False`` for a field that is no key of the table.

It declares no section of the study file; ``lrsearch.spec.model`` does.
"""

from __future__ import annotations

import functools
import math
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, Field, dataclass, fields
from typing import Any, Literal, TypeVar

from lrsearch.errors import SpecError

T = TypeVar("T")

# How a problem names what a key should hold.
_KIND_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    dict: "a table",
    list: "a list",
}


@dataclass
class Seen:
    """What a table held and what its fields read so far, for a ``check`` between keys."""

    # Every field read so far: its value, or its default where the key was absent or bad.
    values: dict[str, Any]
    # The keys the table held, all of them (also those not read yet).
    present: frozenset[str]
    # The fields read so far that had a problem.
    bad: set[str]


Check = Callable[[Seen], Iterable[tuple[str, str]]]


class Reader:
    """Reads tables into dataclasses, collecting problems instead of stopping at the first."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def problem(self, where: str, message: str) -> None:
        """Note one problem at ``where`` (``"[section] key"``)."""
        self.problems.append(f"{where}: {message}")

    def raise_problems(self) -> None:
        """Raise the problems noted so far, if any.

        Raises:
            SpecError: Listing every problem.
        """
        if self.problems:
            raise SpecError(self.source, self.problems)

    def read(self, cls: type[T], data: dict[str, Any]) -> T:
        """Read ``data``, a table of tables, into ``cls``: a dataclass whose fields are the tables,
        each a dataclass read by :meth:`section`.

        A field's metadata may name its own ``read`` (``(reader, table, present) -> section``),
        or say what an ``absent`` table lacks (a table left out is empty otherwise).

        Raises:
            SpecError: ``data`` is no table at all (other problems are collected, not raised).
        """
        hints = _hints(typing.cast(type, cls))
        tables = self.tables(data, tuple(f.name for f in fields(cls)))  # type: ignore[arg-type]
        sections: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            section_cls, present = hints[f.name], f.name in data
            read = f.metadata.get("read")
            if read is not None:
                sections[f.name] = read(self, tables[f.name], present)
            elif not present and "absent" in f.metadata:
                self.problem(f"[{f.name}]", f.metadata["absent"])
                sections[f.name] = section_cls(
                    **{g.name: _default(g) for g in fields(section_cls) if g.init}
                )
            else:
                sections[f.name] = self.section(section_cls, f.name, tables[f.name])
        return cls(**sections)

    def tables(self, data: dict[str, Any], names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        """The tables ``names`` of ``data`` (an absent one is empty), unknown ones reported.

        Raises:
            SpecError: ``data`` is no table at all.
        """
        if not isinstance(data, dict):
            raise SpecError(self.source, ["a spec must be a table of sections"])
        for name in data:
            if name not in names:
                self.problem(f"[{name}]", f"unknown section; the sections are {', '.join(names)}")
        return {name: self.table(data, name) for name in names}

    def table(self, data: dict[str, Any], name: str) -> dict[str, Any]:
        """A copy of the table ``name`` of ``data``; empty where it is absent or no table."""
        value = data.get(name, {})
        if not isinstance(value, dict):
            self.problem(f"[{name}]", f"must be a table, got {type(value).__name__}")
            return {}
        return dict(value)

    def section(self, cls: type[T], name: str, table: dict[str, Any]) -> T:
        """Read ``table`` (the section ``[name]``) into the dataclass ``cls``, field by field.

        Keys are taken off ``table``; what is left is reported as unknown keys.
        """
        hints = _hints(typing.cast(type, cls))
        keys = [f for f in fields(cls) if f.metadata.get("in_file", True)]  # type: ignore[arg-type]
        seen = Seen(values={}, present=frozenset(table), bad=set())
        for f in keys:
            where = f"[{name}] {f.name}"
            known_so_far = len(self.problems)
            seen.values[f.name] = self._field(f, hints[f.name], where, table, seen)
            if len(self.problems) > known_so_far:
                seen.bad.add(f.name)
            check: Check | None = f.metadata.get("check")
            if check is not None:
                for key, message in check(seen):
                    self.problem(f"[{name}] {key}", message)
        self.unknown(name, table, tuple(f.name for f in keys))
        return cls(**seen.values)

    def unknown(self, section: str, table: dict[str, Any], known: tuple[str, ...]) -> None:
        """Report every key left in ``table`` as unknown, naming the ``known`` ones."""
        for key in table:
            self.problem(
                f"[{section}] {key}",
                f"unknown key; the keys of [{section}] are {', '.join(known)}",
            )

    def _field(
        self, f: Field[Any], hint: Any, where: str, table: dict[str, Any], seen: Seen
    ) -> Any:
        meta = f.metadata
        default = _default(f)
        if f.name not in table:
            if meta.get("required"):
                self.problem(where, "is required")
            return default
        value = table.pop(f.name)
        read = meta.get("read")
        if read is not None:
            return read(self, where, value, seen)
        kinds, choices = meta.get("kinds"), None
        if kinds is None:
            kinds, choices = _kinds(hint)
        if not kinds:
            raise TypeError(f"{where}: give the field a `read` or `kinds` in its metadata")
        known_so_far = len(self.problems)
        if kinds == (tuple,):
            return self.pair(where, value, default, upper=meta.get("upper"))
        result = self.take(
            where,
            value,
            kinds,
            default,
            choices=choices,
            minimum=meta.get("minimum"),
            maximum=meta.get("maximum"),
            above=meta.get("above"),
        )
        refine: Callable[[Any], str | None] | None = meta.get("refine")
        if refine is not None and len(self.problems) == known_so_far:
            problem = refine(result)
            if problem is not None:
                self.problem(where, problem)
                return default
        if isinstance(result, dict):
            return dict(result)
        return result

    def take(
        self,
        where: str,
        value: Any,
        kinds: tuple[type, ...],
        default: Any,
        *,
        choices: tuple[str, ...] | None = None,
        minimum: float | None = None,
        maximum: float | None = None,
        above: float | None = None,
    ) -> Any:
        """``value`` if it is one of ``kinds`` within the bounds, else ``default`` (noted)."""
        # bool is an int in Python; a learning rate of `true` is a typo, not 1.
        if isinstance(value, bool) and bool not in kinds:
            self.problem(where, f"must be {_kind_name(kinds)}, got {value!r}")
            return default
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        is_kind = isinstance(value, kinds)  # a bool, so mypy keeps `value: Any` below
        if not is_kind:
            self.problem(where, f"must be {_kind_name(kinds)}, got {value!r}")
            return default
        if choices is not None and value not in choices:
            self.problem(where, f"must be one of {', '.join(choices)}; got {value!r}")
            return default
        if minimum is not None and value < minimum:
            self.problem(where, f"must be >= {minimum}, got {value!r}")
            return default
        if maximum is not None and value > maximum:
            self.problem(where, f"must be <= {maximum}, got {value!r}")
            return default
        if above is not None and value <= above:
            self.problem(where, f"must be > {above}, got {value!r}")
            return default
        if isinstance(value, float) and not math.isfinite(value):
            self.problem(where, f"must be finite, got {value!r}")
            return default
        return value

    def pair(
        self,
        where: str,
        value: Any,
        default: tuple[float, float],
        *,
        positive: bool = True,
        upper: float | None = None,
    ) -> tuple[float, float]:
        """``value`` as a ``(low, high)`` range (log-uniform where ``positive``), else
        ``default`` (noted)."""
        ok = (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        )
        if not ok:
            self.problem(where, f"must be a [low, high] pair of numbers, got {value!r}")
            return default
        low, high = float(value[0]), float(value[1])
        if not (math.isfinite(low) and math.isfinite(high)):
            self.problem(where, f"must be finite, got {value!r}")
        elif positive and low <= 0:
            self.problem(
                where,
                f"`low > 0` must hold for a log-uniform range, but got (low={low}, high={high}); "
                "use [space] freeze to allow lr = 0",
            )
        elif low > high:
            self.problem(where, f"`low <= high` must hold, but got (low={low}, high={high})")
        elif upper is not None and high > upper:
            self.problem(where, f"`high <= {upper}` must hold, but got (low={low}, high={high})")
        else:
            return (low, high)
        return default


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A dataclass's field types, resolved once (resolving them costs more than reading)."""
    return typing.get_type_hints(cls)


def _default(f: Field[Any]) -> Any:
    """What an absent key means: the field's default; ``""`` for a required string."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return ""


@functools.cache
def _kinds(hint: Any) -> tuple[tuple[type, ...], tuple[str, ...] | None]:
    """The TOML types a field's type accepts, and its words where it is a ``Literal``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if hint is not None and typing.get_origin(hint) not in (typing.Union, types.UnionType):
        args = [hint]
    if len(args) == 1:
        (arg,) = args
        if typing.get_origin(arg) is Literal:
            return (str,), typing.get_args(arg)
        origin = typing.get_origin(arg) or arg
        if origin in _KIND_NAMES or origin is tuple:
            return (origin,), None
    # A field of several types names its kinds (or its reader) in its metadata.
    return (), None


def _kind_name(kinds: tuple[type, ...]) -> str:
    return " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)

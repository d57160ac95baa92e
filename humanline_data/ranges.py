"""Allowed values of settings, declared once beside each dataclass field and checked by one
function: command-line flags, ``--config`` files and the Python API all pass through
:func:`check_fields`, so a value out of range is one ``error:`` line before anything runs.

A field declares its range in its metadata (``field(default=..., metadata=bounded(AT_LEAST_1))``);
its kind (bool, int, float, str) is the type of its default, or ``metadata["type"]`` when the
default is None. A float must also be finite; a bool is never taken for a number.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, Field, dataclass, fields
from typing import Any, Callable

from humanline_data.errors import HumanlineError


@dataclass(frozen=True)
class Range:
    """``low`` <= value <= ``high`` (None: unbounded); ``above``/``below`` exclude the bound."""

    low: float | None = None
    high: float | None = None
    above: bool = False
    below: bool = False

    def holds(self, value: float) -> bool:
        low_ok = self.low is None or (value > self.low if self.above else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.below else value <= self.high)
        return low_ok and high_ok

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.above else '['}{self.low:g}, {self.high:g}{')' if self.below else ']'}"
        if self.low is not None:
            return f"{'>' if self.above else '>='} {self.low:g}"
        return f"{'<' if self.below else '<='} {self.high:g}"


AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, above=True)
NEGATIVE = Range(high=0, below=True)
PROBABILITY = Range(0, 1, above=True)  # (0, 1]


def bounded(allowed: Range, **metadata: Any) -> dict:
    """Field metadata declaring ``allowed`` (plus any other ``metadata``)."""
    return {**metadata, "range": allowed}


def kind_of(f: Field) -> type | None:
    """The kind of value field ``f`` holds: ``metadata["type"]``, else its default's type."""
    if "type" in f.metadata:
        return f.metadata["type"]
    default = f.default_factory() if f.default_factory is not MISSING else f.default  # type: ignore[misc]
    return None if default is None or default is MISSING else type(default)


def value_problem(value: Any, f: Field) -> str | None:
    """What is wrong with ``value`` for field ``f`` (wrong kind, not finite, out of range), or None."""
    kind = kind_of(f)
    if kind is bool and not isinstance(value, bool):
        return "must be true or false"
    if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f"must be {'an integer' if kind is int else 'a number'}"
    if kind is int and not isinstance(value, int):
        return "must be an integer"
    if kind is float and not math.isfinite(value):
        return "must be finite"
    if kind is str and not isinstance(value, str):
        return "must be text"
    allowed = f.metadata.get("range")
    if allowed is not None and not allowed.holds(value):
        return f"must be {allowed}"
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        return f"must be one of {', '.join(choices)}"
    return None


def check_fields(settings: Any, flag: Callable[[str], str] = str) -> None:
    """Raise a one-line :class:`HumanlineError` for the first field of the dataclass instance
    ``settings`` whose value is wrong (:func:`value_problem`; None passes), naming it as
    ``flag(field name)``."""
    for f in fields(settings):
        value = getattr(settings, f.name)
        if value is None:
            continue
        problem = value_problem(value, f)
        if problem:
            raise HumanlineError(f"{flag(f.name)} {problem}, got {value!r}")

"""The objective registry: one small module (one class) per objective, found by name.

Adding an objective = adding one module here that defines an :class:`Objective` subclass with
``name`` set; :func:`get` and :func:`names` find it (every module of this package is imported
on first use). CLI choices, shard-kind checks, batch layout, settings flags and recipes all
read the registry, so nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil

from humanline_data.errors import HumanlineError
from humanline_train.objectives.base import Objective, StepTotals

__all__ = ["Objective", "StepTotals", "get", "names", "all_objectives"]


def all_objectives() -> dict[str, type[Objective]]:
    """Every registered objective class by name (imports this package's modules once)."""
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")
    return {cls.name: cls for cls in _subclasses(Objective) if cls.name}


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def names() -> list[str]:
    return sorted(all_objectives())


def get(name: str) -> type[Objective]:
    registry = all_objectives()
    if name not in registry:
        raise HumanlineError(f"--loss {name!r}: expected one of {', '.join(sorted(registry))}")
    return registry[name]

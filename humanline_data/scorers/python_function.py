"""The python-function scorer: a user's ``fn(batch) -> list[float]``.

``python:<module>:<function>`` names the function; ``<module>`` is a dotted module name
(importable from the current directory or the environment) or a path to a ``.py`` file.
``fn`` gets a list of row dicts (``prompt_id``, ``messages``, ``completion``, ``answer``,
``metadata``) and must return one real number per row, in order.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import numbers
import os
import sys
from pathlib import Path
from typing import Callable

from humanline_data.errors import HumanlineError
from humanline_data.scorers.base import Scorer


def load_function(module: str, function: str) -> Callable:
    """Import ``module`` (dotted name or ``.py`` path) and return its attribute ``function``."""
    try:
        if module.endswith(".py") or os.sep in module or "/" in module:
            path = Path(module)
            if not path.is_file():
                raise HumanlineError(f"python scorer: module file {module} not found")
            spec = importlib.util.spec_from_file_location(f"humanline_user_scorer_{path.stem}", path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        else:
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            mod = importlib.import_module(module)
    except HumanlineError:
        raise
    except ImportError as exc:
        raise HumanlineError(f"python scorer: cannot import {module} ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - any error in the user's module, reported on one line
        raise HumanlineError(f"python scorer: importing {module} failed: {type(exc).__name__}: {exc}") from exc
    fn = getattr(mod, function, None)
    if not callable(fn):
        raise HumanlineError(f"python scorer: {module} has no function {function!r}")
    return fn


class PythonFunction(Scorer):
    """Rewards from a user function called on batches of row dicts."""

    def __init__(self, module: str, function: str) -> None:
        self.fn = load_function(module, function)
        self.function = function
        self.identity = f"python:{module}:{function}"
        self.params = {"module": module, "function": function}
        self.producer = {"scorer": self.identity, "source": _source_file(self.fn)}

    def __call__(self, rows: list[dict]) -> list[tuple[float, dict[str, float]]]:
        rewards = self.fn([dict(r) for r in rows])
        try:
            values = list(rewards)
        except TypeError:
            raise HumanlineError(
                f"python scorer {self.identity}: returned {type(rewards).__name__}, expected a list of floats"
            ) from None
        if len(values) != len(rows):
            raise HumanlineError(
                f"python scorer {self.identity}: returned {len(values)} rewards for a batch of {len(rows)} rows"
            )
        out = []
        for value in values:
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise HumanlineError(
                    f"python scorer {self.identity}: returned {value!r} ({type(value).__name__}), expected a float"
                )
            out.append((float(value), {self.function: float(value)}))
        return out



def _source_file(fn: Callable) -> str | None:
    """Absolute path of the file defining ``fn`` (None for builtins)."""
    try:
        return str(Path(inspect.getfile(fn)).resolve())
    except TypeError:
        return None

"""The python-function scorer: a user's ``fn(batch) -> list[float]``.

``python:<module>:<function>`` names the function; ``<module>`` is a dotted module name
(importable from the current directory or the environment) or a path to a ``.py`` file.
``fn`` gets a list of row dicts (``prompt_id``, ``sample_idx``, ``messages``, ``completion``,
``answer``, ``metadata``) and must return one real number per row, in order.

The user's code is contained: an exception it raises (``sys.exit`` included; not
``KeyboardInterrupt``), while imported or called, becomes one line naming the function and the
row (``prompt_id``, ``sample_idx``) it failed on. When a batch of several rows fails, each row
is scored alone once to find the one that fails (the function is called again for that); if no
single row fails, the line names the batch. A value that is not a real number, or an integer
too large for float64, is named the same way; the stage's driver refuses NaN, infinite and
too-large rewards (:func:`humanline_data.schema.reward_problem`). Nothing is written then.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import numbers
import os
import sys
from collections.abc import Iterable
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
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any error in the user's module, on one line
        raise HumanlineError(f"python scorer: importing {module} failed: {_describe(exc)}") from None
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
        try:
            returned, values = self._run(rows)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's code failed
            failing = next((i for i in range(len(rows)) if len(rows) > 1 and self._fails(rows[i])), None)
            where = _row(rows[failing]) if failing is not None else f"the batch of {len(rows)} rows from {_row(rows[0])}"
            raise HumanlineError(f"python scorer {self.identity}: raised {_describe(exc)}, at {where}") from None
        if values is None:
            raise HumanlineError(
                f"python scorer {self.identity}: returned {type(returned).__name__}, expected a list of floats"
            )
        if len(values) != len(rows):
            raise HumanlineError(
                f"python scorer {self.identity}: returned {len(values)} rewards for a batch of {len(rows)} rows"
            )
        return [(reward, {self.function: reward}) for reward in map(self._reward, values, rows)]

    def _run(self, rows: list[dict]) -> tuple[object, list | None]:
        """What the user function returns for ``rows`` (copies) and its values as a list (None
        when it is no iterable); raises what the user's code raises, also while iterating."""
        returned = self.fn([dict(r) for r in rows])
        return returned, list(returned) if isinstance(returned, Iterable) else None

    def _fails(self, row: dict) -> bool:
        """Whether the function raises on ``row`` alone."""
        try:
            self._run([row])
        except (Exception, SystemExit):  # noqa: BLE001
            return True
        return False

    def _reward(self, value, row: dict) -> float:
        """``value`` as a float; raises naming ``row`` when it is not a real number or too large."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise HumanlineError(
                f"python scorer {self.identity}: returned {_short(repr(value))} ({type(value).__name__}), "
                f"expected a float, at {_row(row)}"
            )
        try:
            return float(value)
        except (OverflowError, ValueError, TypeError) as exc:  # past float64's range, or a broken __float__
            raise HumanlineError(
                f"python scorer {self.identity}: returned a number that is no float64 ({exc}), at {_row(row)}"
            ) from None


def _row(row: dict) -> str:
    return f"row (prompt_id {row['prompt_id']}, sample_idx {row['sample_idx']})"


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an exception raised by user code, on one short line."""
    if isinstance(exc, SystemExit):
        return _short(f"SystemExit({exc.code!r}) (sys.exit)")
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a user exception whose message itself fails
        message = ""
    return _short(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."



def _source_file(fn: Callable) -> str | None:
    """Absolute path of the file defining ``fn`` (None for builtins)."""
    try:
        return str(Path(inspect.getfile(fn)).resolve())
    except TypeError:
        return None

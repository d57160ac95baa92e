"""Checked access to one source record's fields, shared by every format reader.

Readers receive a mutable copy of a record and *take* (pop) the fields they use, so whatever is
left over is exactly the unknown columns that the importer keeps in ``metadata``. Every check
raises :class:`RecordError` with a one-line message and a short ``reason`` key (counted in the
manifest stats when ``--skip-invalid`` skips such records).
"""

from __future__ import annotations

import math
from typing import Any

from humanline_data.errors import SchemaError
from humanline_data.schema import reward_problem

# Source role names -> contract roles (TRL uses role/content, ShareGPT from/value).
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
}
_MISSING = object()
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


class WrittenFloat(float):
    """A float parsed from JSON text that remembers how it was written (``8.0``, ``1e21``)."""

    __slots__ = ("text",)

    def __new__(cls, text: str) -> "WrittenFloat":
        value = super().__new__(cls, text)
        value.text = text
        return value


class RecordError(SchemaError):
    """One record breaks the contract; ``reason`` is a short key such as ``empty_completion``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _dtype(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def take(record: dict, *names: str, default: Any = _MISSING) -> Any:
    """Pop the first of ``names`` present (and not null); unless ``default`` is given, raise
    null_value when one is there but null, else missing_column."""
    for name in names:
        if record.get(name) is not None:
            return record.pop(name)
    nulls = [name for name in names if name in record]
    for name in nulls:  # drop null placeholders of the same field
        record.pop(name)
    if default is not _MISSING:
        return default
    if nulls:
        raise RecordError("null_value", f"column {nulls[0]!r} is null")
    wanted = " or ".join(repr(n) for n in names)
    raise RecordError("missing_column", f"missing required column {wanted}")


def text(value: Any, column: str, empty_reason: str) -> str:
    """A non-empty string (whitespace stripped)."""
    if not isinstance(value, str):
        raise RecordError("wrong_dtype", f"column {column!r} has dtype {_dtype(value)}, expected string")
    value = value.strip()
    if not value:
        raise RecordError(empty_reason, f"empty {column!r}")
    return value


def optional_text(value: Any, column: str) -> str | None:
    """A string, a number as text (:func:`number_text`), or None for null/blank."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return number_text(value, column)
    if not isinstance(value, str):
        raise RecordError("wrong_dtype", f"column {column!r} has dtype {_dtype(value)}, expected string")
    return value.strip() or None


def number(value: Any, column: str) -> float:
    """A finite float (ints accepted, booleans and strings refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError("wrong_dtype", f"column {column!r} has dtype {_dtype(value)}, expected a number")
    try:
        value = float(value)
    except OverflowError:  # an integer past float64's range
        raise RecordError("non_finite", f"column {column!r} is an integer beyond float64's range (must be finite)") from None
    if not math.isfinite(value):
        raise RecordError("non_finite", f"column {column!r} is {value} (must be finite)")
    return value


def reward(value: Any, column: str) -> float:
    """A reward: a finite number (:func:`number`) within the contract's magnitude bound."""
    value = number(value, column)
    problem = reward_problem(value)
    if problem:
        raise RecordError("reward_out_of_range", f"column {column!r} is {value:g} ({problem})")
    return value


def number_text(value: int | float, column: str) -> str:
    """A number as text: as written where it was parsed from JSON text, else integral floats as
    integers (``8.0`` -> ``8``, ``1e21`` -> ``1000000000000000000000``); non-finite is an error."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RecordError("non_finite", f"column {column!r} is {value} (must be finite)")
        if isinstance(value, WrittenFloat):
            return value.text
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def optional_number(value: Any, column: str) -> float | None:
    return None if value is None else number(value, column)


def integer(value: Any, column: str, limit: int = INT32_MAX) -> int:
    """An integer from 0 to ``limit`` (the largest its column stores)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise RecordError("wrong_dtype", f"column {column!r} is {shown}, expected an integer from 0 to {limit}")
    return value


def optional_integer(value: Any, column: str, limit: int = INT32_MAX) -> int | None:
    return None if value is None else integer(value, column, limit)


def boolean(value: Any, column: str) -> bool:
    if not isinstance(value, bool):
        raise RecordError("wrong_dtype", f"column {column!r} has dtype {_dtype(value)}, expected boolean")
    return value


def message(turn: Any, column: str, role_key: str = "role", content_key: str = "content") -> dict:
    """One ``{role, content}`` message from a source turn such as ``{from, value}``."""
    if not isinstance(turn, dict):
        raise RecordError("wrong_dtype", f"column {column!r}: a message has dtype {_dtype(turn)}, expected object")
    if role_key not in turn:
        raise RecordError("missing_column", f"column {column!r}: a message has no {role_key!r}")
    role = ROLE_ALIASES.get(str(turn[role_key]).strip().lower())
    if role is None:
        raise RecordError(
            "unknown_role",
            f"column {column!r}: unknown role {turn[role_key]!r} (expected one of {', '.join(ROLE_ALIASES)})",
        )
    return {"role": role, "content": text(turn.get(content_key), f"{column}.{content_key}", "empty_message")}


def messages(value: Any, column: str, role_key: str = "role", content_key: str = "content") -> list[dict]:
    """A list of messages (possibly empty)."""
    if not isinstance(value, list):
        raise RecordError("wrong_dtype", f"column {column!r} has dtype {_dtype(value)}, expected a list of messages")
    return [message(t, column, role_key, content_key) for t in value]


def prompt(msgs: list[dict], column: str) -> list[dict]:
    """Check that prompt messages are non-empty and end with a user turn."""
    if not msgs:
        raise RecordError("empty_prompt", f"empty prompt in {column!r}")
    if msgs[-1]["role"] != "user":
        raise RecordError("prompt_not_user", f"prompt in {column!r} ends with a {msgs[-1]['role']} turn, expected user")
    return msgs


def prompt_of(value: Any, column: str) -> list[dict]:
    """Prompt messages from plain text (one user turn) or a list of messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": text(value, column, "empty_prompt")}]
    return prompt(messages(value, column), column)


def completion_of(value: Any, column: str) -> tuple[list[dict], str]:
    """``(messages before it, text)`` of a completion given as text or as a conversation.

    For a conversation the completion is its final message, which must be an assistant turn.
    """
    if isinstance(value, str):
        return [], text(value, column, "empty_completion")
    if isinstance(value, dict):
        value = [value]
    sharegpt = isinstance(value, list) and value and isinstance(value[0], dict) and "from" in value[0]
    msgs = messages(value, column, "from", "value") if sharegpt else messages(value, column)
    if not msgs:
        raise RecordError("empty_completion", f"empty {column!r}")
    if msgs[-1]["role"] != "assistant":
        raise RecordError("not_assistant", f"final message of {column!r} is a {msgs[-1]['role']} turn, expected assistant")
    return msgs[:-1], msgs[-1]["content"]


def carry_bookkeeping(record: dict, row: dict) -> dict:
    """Move a record's own ``source``/``split`` into ``row`` and drop its ``prompt_id`` (it is
    recomputed), so versions of this project import again unchanged."""
    record.pop("prompt_id", None)
    for name in ("source", "split"):
        if record.get(name) is not None:
            row[name] = optional_text(take(record, name), name)
    return row

"""The kinds of table the data plane writes, their Arrow schemas, and validation.

A *kind* names what one dataset version holds, one row each:

==========  ==========================================================================
prompts      a prompt (chat messages) with an optional reference answer
completions  one sampled completion of a prompt (``sample_idx`` numbers the samples)
scored       a completion with its scalar ``reward`` and named reward components
pairs        chosen / rejected completions of one prompt with their rewards (DPO)
groups       all scored completions of one prompt with GRPO advantages (method.md §5.3)
unpaired     one completion marked desirable or not (KTO)
==========  ==========================================================================

Every kind carries ``prompt_id`` (a stable hash of the normalised prompt messages, see
:func:`prompt_id`), ``messages`` (list of ``{role, content}``) and ``metadata`` (a JSON object
as a string, nullable) where columns of imported data that the contract does not know are kept
and carried through every later stage.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from humanline_data.errors import SchemaError

ROLES = ("system", "user", "assistant")
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)

_COMMON = [
    ("prompt_id", pa.string(), False),
    ("messages", MESSAGES, False),
]
_PROMPT_COLUMNS = _COMMON + [
    ("answer", pa.string(), True),
    ("source", pa.string(), False),
    ("split", pa.string(), False),
]
_COMPLETION_COLUMNS = _PROMPT_COLUMNS + [
    ("sample_idx", pa.int32(), False),
    ("completion", pa.string(), False),
    ("completion_tokens", pa.int32(), False),
    ("finish_reason", pa.string(), False),
    ("generator", pa.string(), False),
    ("temperature", pa.float64(), True),
    ("top_p", pa.float64(), True),
    ("max_new_tokens", pa.int32(), True),
    ("seed", pa.int64(), True),
    ("logprob_sum", pa.float64(), True),
]
_SCORED_COLUMNS = _COMPLETION_COLUMNS + [
    ("reward", pa.float64(), False),
    ("scorer", pa.string(), False),
    ("reward_components", pa.string(), True),  # JSON object {name: float}
]
_PAIR_COLUMNS = _COMMON + [
    ("answer", pa.string(), True),
    ("source", pa.string(), False),
    ("chosen", pa.string(), False),
    ("rejected", pa.string(), False),
    ("chosen_reward", pa.float64(), True),
    ("rejected_reward", pa.float64(), True),
    ("margin", pa.float64(), True),
]
_GROUP_COLUMNS = _COMMON + [
    ("answer", pa.string(), True),
    ("source", pa.string(), False),
    ("completions", pa.list_(pa.string()), False),
    ("rewards", pa.list_(pa.float64()), False),
    ("advantages", pa.list_(pa.float64()), False),
]
_UNPAIRED_COLUMNS = _COMMON + [
    ("answer", pa.string(), True),
    ("source", pa.string(), False),
    ("completion", pa.string(), False),
    ("desirable", pa.bool_(), False),
    ("reward", pa.float64(), True),
]
_METADATA = ("metadata", pa.string(), True)


def _schema(columns: Sequence[tuple[str, pa.DataType, bool]]) -> pa.Schema:
    return pa.schema([pa.field(n, t, nullable=ok) for n, t, ok in [*columns, _METADATA]])


SCHEMAS: dict[str, pa.Schema] = {
    "prompts": _schema(_PROMPT_COLUMNS),
    "completions": _schema(_COMPLETION_COLUMNS),
    "scored": _schema(_SCORED_COLUMNS),
    "pairs": _schema(_PAIR_COLUMNS),
    "groups": _schema(_GROUP_COLUMNS),
    "unpaired": _schema(_UNPAIRED_COLUMNS),
}
KINDS = tuple(SCHEMAS)

# Columns whose string values must not be empty (after stripping whitespace).
_NON_EMPTY = {"completion", "chosen", "rejected"}
# Float columns that must be finite where present; rewards also at most MAX_ABS_REWARD in magnitude.
_FINITE = {"reward", "chosen_reward", "rejected_reward", "margin"}
_REWARDS = {"reward", "chosen_reward", "rejected_reward", "rewards"}
# The largest reward magnitude the contract accepts: squares and sums of rewards over any
# number of rows (GRPO's std, the stats' means, DPO margins) then stay finite in float64,
# whose range ends near 1.8e308. A larger reward is a scorer's bug, not a signal.
MAX_ABS_REWARD = 1e100
# Row identity per kind: no two rows may share it.
_KEYS = {
    "prompts": ("prompt_id",),
    "completions": ("prompt_id", "sample_idx"),
    "scored": ("prompt_id", "sample_idx"),
}


def normalize_messages(messages: Iterable[dict]) -> list[dict]:
    """Messages with roles lower-cased and contents stripped; raises on unknown roles."""
    out = []
    for m in messages:
        role = str(m.get("role", "")).strip().lower()
        if role not in ROLES:
            raise SchemaError(f"unknown role {m.get('role')!r} (expected one of {', '.join(ROLES)})")
        content = m.get("content")
        if not isinstance(content, str):
            raise SchemaError(f"message content must be a string, got {type(content).__name__}")
        out.append({"role": role, "content": content.strip()})
    return out


def prompt_id(messages: Iterable[dict]) -> str:
    """Stable 16-hex-digit id of a prompt: sha256 of its normalised messages as canonical JSON."""
    canon = json.dumps(normalize_messages(messages), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:16]


def reward_problem(value: float) -> str | None:
    """Why a reward ``value`` breaks the contract (``must be finite``, ``must be at most 1e+100
    in magnitude``), or None."""
    if not math.isfinite(value):
        return "must be finite"
    if abs(value) > MAX_ABS_REWARD:
        return f"must be at most {MAX_ABS_REWARD:g} in magnitude"
    return None


def conform(table: pa.Table, kind: str, where: str = "table") -> pa.Table:
    """Validate ``table`` as ``kind`` and return it cast to the kind's schema, in column order.

    Missing nullable columns are added as nulls; columns the kind does not know are dropped
    (callers fold them into ``metadata`` first). Raises :class:`SchemaError` naming ``where``
    and the first problem found: missing column, wrong dtype, null in a required column,
    empty prompt or completion, non-finite reward, unknown role, duplicate row key.
    """
    if kind not in SCHEMAS:
        raise SchemaError(f"{where}: unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    schema = SCHEMAS[kind]
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            if not field.nullable:
                raise SchemaError(f"{where}: missing required column {field.name!r} for kind {kind}")
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        col = table.column(field.name)
        wrong = f"{where}: column {field.name!r} has dtype {col.type}, expected {field.type}"
        if _is_text(col.type) and not _is_text(field.type):  # no parsing of numbers out of text
            raise SchemaError(wrong)
        try:
            col = col.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise SchemaError(wrong) from exc
        if not field.nullable and col.null_count:
            row = pc.index(pc.is_null(col), True).as_py()
            raise SchemaError(f"{where}: row {row}: column {field.name!r} is null")
        columns.append(col)
    out = pa.Table.from_arrays(columns, schema=schema)
    _check_values(out, kind, where)
    return out


def _is_text(dtype: pa.DataType) -> bool:
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype)


def _first_true(mask: pa.ChunkedArray | pa.Array) -> int:
    return pc.index(mask.fill_null(False), True).as_py()


def _check_values(table: pa.Table, kind: str, where: str) -> None:
    for name in _NON_EMPTY & set(table.column_names):
        col = table.column(name)
        empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0)
        if pc.any(empty).as_py():
            raise SchemaError(f"{where}: row {_first_true(empty)}: empty {name}")
    for name in _FINITE & set(table.column_names):
        col = table.column(name)
        bad = pc.invert(pc.is_finite(col))
        if name in _REWARDS:
            bad = pc.or_(bad, pc.greater(pc.abs(col), MAX_ABS_REWARD))
        if pc.any(bad).as_py():
            row = _first_true(bad)
            value = col[row].as_py()
            raise SchemaError(f"{where}: row {row}: {name} is {value} ({reward_problem(value)})")
    if kind == "groups":
        for name in ("rewards", "advantages"):
            for row, values in enumerate(table.column(name).to_pylist()):
                if any(v is None or not math.isfinite(v) for v in values):
                    raise SchemaError(f"{where}: row {row}: {name} holds a NaN, inf or null")
                if name in _REWARDS and max(map(abs, values), default=0) > MAX_ABS_REWARD:
                    raise SchemaError(f"{where}: row {row}: {name} holds a reward beyond {MAX_ABS_REWARD:g} in magnitude")
    _check_messages(table.column("messages"), where)
    key = _KEYS.get(kind)
    if key and table.num_rows:
        counts = table.group_by(list(key)).aggregate([([], "count_all")])
        dup = counts.filter(pc.greater(counts.column("count_all"), 1))
        if dup.num_rows:
            first = {k: dup.column(k)[0].as_py() for k in key}
            raise SchemaError(f"{where}: duplicate {'/'.join(key)} {first} ({dup.num_rows} duplicated keys)")


def _check_messages(messages: pa.ChunkedArray, where: str) -> None:
    flat = pc.list_flatten(messages)
    roles = pc.struct_field(flat, "role")
    bad_role = pc.invert(pc.is_in(roles, value_set=pa.array(ROLES)))
    if pc.any(bad_role.fill_null(True)).as_py():
        i = pc.index(bad_role.fill_null(True), True).as_py()
        raise SchemaError(f"{where}: unknown role {roles[i].as_py()!r} (expected one of {', '.join(ROLES)})")
    lengths = pc.list_value_length(messages)
    empty_list = pc.equal(lengths, 0)
    if pc.any(empty_list).as_py():
        raise SchemaError(f"{where}: row {_first_true(empty_list)}: empty prompt (no messages)")
    contents = pc.struct_field(flat, "content")
    blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(contents.fill_null(""))), 0)
    if pc.any(blank).as_py():
        # map the flat message index back to its row
        offsets = pc.cumulative_sum(lengths).to_pylist()
        i = pc.index(blank, True).as_py()
        row = next(r for r, end in enumerate(offsets) if i < end)
        raise SchemaError(f"{where}: row {row}: empty prompt message")

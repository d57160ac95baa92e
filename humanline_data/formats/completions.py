"""Reader for existing generations from any source -> kind ``completions``, or ``scored`` when
the records carry a ``reward``.

Prompt: ``messages`` (list of {role, content}), ``prompt`` (text or messages) or
``instruction`` [+ ``input``]. Completion: ``completion`` or ``output`` (text, or a conversation
whose final assistant message is the completion). Optional: ``answer``, ``reward`` (finite
number), ``sample_idx`` (else numbered per prompt by the importer), ``generator`` (else
``"import"``), ``finish_reason`` (else ``"unknown"``), ``completion_tokens`` (else -1: the
count depends on a tokenizer the importer does not know), ``scorer`` (else ``"import"``),
``reward_components`` and the sampling columns of this project's own completions.
"""

from __future__ import annotations

import json

from humanline_data.formats.fields import (
    INT64_MAX,
    RecordError,
    carry_bookkeeping,
    completion_of,
    integer,
    optional_integer,
    optional_number,
    optional_text,
    prompt,
    reward,
    take,
)
from humanline_data.formats.problems import any_prompt

# Columns of this project's completions, checked and kept when present.
_SAMPLING_FLOATS = ("temperature", "top_p", "logprob_sum")


def completions(record: dict) -> tuple[str, dict]:
    head = any_prompt(record)
    before, completion = completion_of(take(record, "completion", "output"), "completion")
    return completion_row(record, prompt(head + before, "prompt"), completion)


def completion_row(record: dict, msgs: list[dict], completion: str) -> tuple[str, dict]:
    """A completions row (scored when the record has a ``reward``) of prompt ``msgs`` and
    ``completion``, with the optional columns taken from ``record``."""
    sample_idx = take(record, "sample_idx", default=None)
    tokens = take(record, "completion_tokens", default=-1)
    row = {
        "messages": msgs,
        "completion": completion,
        "answer": optional_text(take(record, "answer", default=None), "answer"),
        "sample_idx": None if sample_idx is None else integer(sample_idx, "sample_idx"),
        "completion_tokens": tokens if tokens == -1 else integer(tokens, "completion_tokens"),
        "generator": optional_text(take(record, "generator", default=None), "generator") or "import",
        "finish_reason": optional_text(take(record, "finish_reason", default=None), "finish_reason") or "unknown",
        **{name: optional_number(take(record, name, default=None), name) for name in _SAMPLING_FLOATS},
        "max_new_tokens": optional_integer(take(record, "max_new_tokens", default=None), "max_new_tokens"),
        "seed": optional_integer(take(record, "seed", default=None), "seed", INT64_MAX),
    }
    carry_bookkeeping(record, row)
    if record.get("reward") is None:
        record.pop("reward", None)
        return "completions", row
    components = take(record, "reward_components", default=None)
    row.update(
        reward=reward(take(record, "reward"), "reward"),
        scorer=optional_text(take(record, "scorer", default=None), "scorer") or "import",
        reward_components=_components(components),
    )
    return "scored", row


def _components(value) -> str | None:
    """``reward_components`` as JSON object text: a dict, its JSON text, or null."""
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    if value is None or isinstance(value, str):
        return value
    raise RecordError("wrong_dtype", f"column 'reward_components' has dtype {type(value).__name__}, expected an object")

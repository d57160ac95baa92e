"""Readers for the files other trainers take (what ``humanline-data export`` writes for them):
OpenAI fine-tuning rows, OpenRLHF's default keys and verl's RL parquet.

- ``openai``: chat rows ``messages`` ending with the assistant turn that is the completion ->
  completions; preference rows ``input`` {``messages``}, ``preferred_output``,
  ``non_preferred_output`` (one assistant message each) -> pairs. Other fields of ``input``
  (``tools``, ...) stay in metadata.
- ``openrlhf`` (the keys its trainers read by default, with ``--apply_chat_template``):
  ``chosen``/``rejected`` whole conversations -> pairs (TRL's implicit-prompt form); ``input``
  (a conversation or text) ending with an assistant turn, or followed by ``output`` -> an
  unpaired row with a boolean ``label`` (KTO), else a completions row (SFT); ``input`` ending
  with a user turn -> a prompt whose ``label`` is the answer (PPO's ``--label_key label``).
- ``verl``: ``prompt`` messages, ``reward_model.ground_truth`` -> answer, ``data_source`` ->
  source, ``extra_info.split`` -> split -> prompts; ``ability``, ``reward_model.style`` and the
  rest of ``extra_info`` stay in metadata.
"""

from __future__ import annotations

from humanline_data.formats.completions import completion_row
from humanline_data.formats.fields import (
    RecordError,
    completion_of,
    messages,
    optional_text,
    prompt,
    prompt_of,
    take,
)
from humanline_data.formats.preferences import pair_row, trl, unpaired_row

OPENAI_PREFERENCE = ("preferred_output", "non_preferred_output")


def _one_answer(record: dict, column: str) -> str:
    """The text of ``column``, which must hold exactly one assistant message (or text)."""
    before, answer = completion_of(take(record, column), column)
    if before:
        raise RecordError("wrong_dtype", f"{column!r} must be one assistant message, got {len(before) + 1}")
    return answer


def _object(value, column: str) -> dict:
    if not isinstance(value, dict):
        raise RecordError("wrong_dtype", f"column {column!r} has dtype {type(value).__name__}, expected an object")
    return dict(value)


def openai(record: dict) -> tuple[str, dict]:
    """OpenAI chat rows -> completions; OpenAI preference rows -> pairs."""
    if any(column in record for column in OPENAI_PREFERENCE):
        request = _object(take(record, "input"), "input")
        msgs = prompt(messages(request.pop("messages", None), "input.messages"), "input.messages")
        if request:  # tools, parallel_tool_calls, ...
            record["input"] = request
        return pair_row(msgs, _one_answer(record, "preferred_output"), _one_answer(record, "non_preferred_output"), record)
    before, completion = completion_of(take(record, "messages"), "messages")
    return completion_row(record, prompt(before, "messages"), completion)


def openrlhf(record: dict) -> tuple[str, dict]:
    """OpenRLHF rows -> pairs, unpaired, completions or prompts (see the module docstring)."""
    if "chosen" in record or "rejected" in record:
        return trl(record)
    chat = take(record, "input")
    turns = prompt_of(chat, "input") if isinstance(chat, str) else messages(chat, "input")
    if "output" in record:
        before, completion = completion_of(take(record, "output"), "output")
        turns = turns + before
    elif turns and turns[-1]["role"] == "assistant":
        turns, completion = turns[:-1], turns[-1]["content"]
    else:
        label = take(record, "label", default=None)
        if isinstance(label, bool):
            raise RecordError("not_assistant", "'input' does not end with the assistant turn its boolean 'label' judges")
        return "prompts", {"messages": prompt(turns, "input"), "answer": optional_text(label, "label")}
    if "label" in record:
        return unpaired_row(record, turns, completion, "input")
    return completion_row(record, prompt(turns, "input"), completion)


def verl(record: dict) -> tuple[str, dict]:
    """verl RL rows -> prompts with answer, source and split."""
    row = {"messages": prompt_of(take(record, "prompt"), "prompt"), "answer": None}
    reward_model = take(record, "reward_model", default=None)
    if reward_model is not None:
        reward_model = _object(reward_model, "reward_model")
        row["answer"] = optional_text(reward_model.pop("ground_truth", None), "reward_model.ground_truth")
        if reward_model:
            record["reward_model"] = reward_model
    extra = take(record, "extra_info", default=None)
    if extra is not None:
        extra = _object(extra, "extra_info")
        split = optional_text(extra.pop("split", None), "extra_info.split")
        if split:
            row["split"] = split
        if extra:
            record["extra_info"] = extra
    source = optional_text(take(record, "data_source", default=None), "data_source")
    if source:
        row["source"] = source
    return "prompts", row

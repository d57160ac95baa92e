"""Readers for preference data: TRL (paired and unpaired), HH-RLHF, ShareGPT pairs, KTO.

Each reader takes one record (a dict it may pop fields from) and returns ``(kind, row)`` where
``row`` holds the kind's columns except ``prompt_id``, ``source``, ``split`` and ``metadata``,
which the importer fills in. Preference data carries no scores, so ``chosen_reward``,
``rejected_reward`` and ``margin`` stay null unless the source has scores.
"""

from __future__ import annotations

import re

from humanline_data.formats.fields import (
    RecordError,
    boolean,
    completion_of,
    messages,
    prompt,
    prompt_of,
    reward,
    take,
    text,
)

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


def pair_row(msgs: list[dict], chosen: str, rejected: str, record: dict) -> tuple[str, dict]:
    """A pairs row of prompt ``msgs`` and the two answers; rewards from the record's
    ``chosen_reward``/``rejected_reward`` (or ``score_chosen``/``score_rejected``) where given."""
    chosen_reward = take(record, "chosen_reward", "score_chosen", default=None)
    rejected_reward = take(record, "rejected_reward", "score_rejected", default=None)
    if chosen_reward is not None:
        chosen_reward = reward(chosen_reward, "chosen_reward")
    if rejected_reward is not None:
        rejected_reward = reward(rejected_reward, "rejected_reward")
    margin = None if chosen_reward is None or rejected_reward is None else chosen_reward - rejected_reward
    return "pairs", {
        "messages": msgs,
        "chosen": chosen,
        "rejected": rejected,
        "chosen_reward": chosen_reward,
        "rejected_reward": rejected_reward,
        "margin": margin,
    }


def unpaired_row(record: dict, msgs: list[dict], completion: str, column: str) -> tuple[str, dict]:
    """An unpaired row; the label is ``label`` (or LLaMA-Factory's ``kto_tag``)."""
    score = take(record, "reward", default=None)
    return "unpaired", {
        "messages": prompt(msgs, column),
        "completion": completion,
        "desirable": boolean(take(record, "label", "kto_tag"), "label"),
        "reward": None if score is None else reward(score, "reward"),
    }


def _prompt_then_completion(record: dict, prompt_column: str) -> tuple[str, dict]:
    head = prompt_of(take(record, prompt_column), prompt_column)
    before, completion = completion_of(take(record, "completion"), "completion")
    return unpaired_row(record, head + before, completion, prompt_column)


def trl(record: dict) -> tuple[str, dict]:
    """TRL preference (prompt/chosen/rejected) or unpaired (prompt/completion/label) data.

    Plain text or conversational. A conversational chosen/rejected contributes its final
    assistant message; the turns before it must agree between chosen and rejected and are
    appended to the prompt (which may then be omitted: TRL's implicit-prompt form).
    """
    if "chosen" not in record and "rejected" not in record and ("completion" in record or "label" in record):
        return _prompt_then_completion(record, "prompt")
    chosen_raw, rejected_raw = take(record, "chosen"), take(record, "rejected")
    implicit = isinstance(chosen_raw, list) and "prompt" not in record
    head = [] if implicit else prompt_of(take(record, "prompt"), "prompt")
    chosen_before, chosen = completion_of(chosen_raw, "chosen")
    rejected_before, rejected = completion_of(rejected_raw, "rejected")
    if chosen_before != rejected_before:
        raise RecordError("prompt_mismatch", "chosen and rejected conversations differ before their final message")
    return pair_row(prompt(head + chosen_before, "prompt"), chosen, rejected, record)


def kto(record: dict) -> tuple[str, dict]:
    """KTO data: ``messages`` (the prompt) + ``completion`` + boolean ``label``; or LLaMA-Factory's
    form: ``messages`` (or ShareGPT ``conversations``) ending with the assistant turn that is the
    completion, and boolean ``label`` (or ``kto_tag``)."""
    if "completion" in record:
        return _prompt_then_completion(record, "messages")
    column = "messages" if "messages" in record or "conversations" not in record else "conversations"
    before, completion = completion_of(take(record, column), column)
    return unpaired_row(record, before, completion, column)


def _hh_turns(transcript: str, column: str) -> list[dict]:
    if not isinstance(transcript, str):
        raise RecordError("wrong_dtype", f"column {column!r} has dtype {type(transcript).__name__}, expected string")
    if transcript.startswith("Human:"):  # some copies drop the leading blank line
        transcript = "\n\n" + transcript
    parts = _HH_TURN.split(transcript)
    if parts[0].strip() or len(parts) < 3:
        raise RecordError("malformed_transcript", f"{column!r} does not start with '\\n\\nHuman:'")
    return [{"role": _HH_ROLE[who], "content": said.strip()} for who, said in zip(parts[1::2], parts[2::2])]


def _hh_split(transcript: str, column: str) -> tuple[list[dict], str]:
    turns = _hh_turns(transcript, column)
    if turns[-1]["role"] != "assistant":
        raise RecordError("not_assistant", f"{column!r} does not end with an Assistant turn")
    if not turns[-1]["content"]:
        raise RecordError("empty_completion", f"empty final Assistant turn in {column!r}")
    for turn in turns[:-1]:
        if not turn["content"]:
            raise RecordError("empty_message", f"empty {turn['role']} turn in {column!r}")
    return turns[:-1], turns[-1]["content"]


def hh(record: dict) -> tuple[str, dict]:
    """Anthropic HH-RLHF: two whole transcripts; the prompt is their shared turns before the
    final Assistant turn (ending with a user turn), chosen/rejected are the final turns."""
    chosen_before, chosen = _hh_split(take(record, "chosen"), "chosen")
    rejected_before, rejected = _hh_split(take(record, "rejected"), "rejected")
    if chosen_before != rejected_before:
        raise RecordError("prompt_mismatch", "chosen and rejected transcripts differ before their final Assistant turn")
    return pair_row(prompt(chosen_before, "chosen"), chosen, rejected, record)


def sharegpt(record: dict) -> tuple[str, dict]:
    """ShareGPT pairs (LLaMA-Factory): ``conversations`` of {from, value} turns, optional
    ``system`` text, and ``chosen``/``rejected`` {from: gpt, value} answers."""
    turns = messages(take(record, "conversations"), "conversations", "from", "value")
    system = take(record, "system", default="")
    if system != "":
        turns = [{"role": "system", "content": text(system, "system", "empty_message")}, *turns]
    chosen_before, chosen = completion_of(take(record, "chosen"), "chosen")
    rejected_before, rejected = completion_of(take(record, "rejected"), "rejected")
    if chosen_before or rejected_before:
        raise RecordError("wrong_dtype", "'chosen' and 'rejected' must each be one {from, value} answer")
    return pair_row(prompt(turns, "conversations"), chosen, rejected, record)

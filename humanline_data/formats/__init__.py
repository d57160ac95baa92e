"""One small reader per outside format, and detection of a format from a record's columns.

A reader maps one source record (a dict it pops the fields it uses from) to ``(kind, row)``;
what it leaves in the record becomes the row's ``metadata``. See ``humanline_data.importers``
for the driver that reads files, numbers samples, fills ``prompt_id``/``source``/``split`` and
writes the version.

=============  ==========  ==============================================================
format         kind        columns read
=============  ==========  ==============================================================
trl            pairs       prompt, chosen, rejected (text or conversational)
trl            unpaired    prompt, completion, label
hh             pairs       chosen, rejected (HH-RLHF transcripts)
sharegpt       pairs       conversations [{from, value}], chosen, rejected, [system]
kto            unpaired    messages, completion, label; or LLaMA-Factory's messages |
                           conversations ending with the assistant turn, label | kto_tag
math           prompts     problem, answer
gsm8k          prompts     question, answer (final answer after ``#### ``)
alpaca         prompts     instruction, [input]
prompts        prompts     prompt | messages, [answer]
completions    completions prompt | messages | instruction, completion | output, [reward...]
openai         completions messages ending with the assistant turn (OpenAI chat fine-tuning)
openai         pairs       input {messages}, preferred_output, non_preferred_output
openrlhf       pairs |     chosen, rejected (whole conversations) · or input (conversation
               unpaired |  or text) [+ output], label: unpaired (boolean label), completions
               completions (no label) or prompts (input ends with a user turn; label = answer)
               | prompts
verl           prompts     prompt, reward_model {ground_truth}, data_source, extra_info {split}
=============  ==========  ==============================================================
"""

from __future__ import annotations

from typing import Callable

from humanline_data.errors import InputFormatError
from humanline_data.formats.fields import ROLE_ALIASES
from humanline_data.formats.completions import completions
from humanline_data.formats.preferences import hh, kto, sharegpt, trl
from humanline_data.formats.problems import alpaca, gsm8k, math, prompts
from humanline_data.formats.trainers import OPENAI_PREFERENCE, openai, openrlhf, verl

Reader = Callable[[dict], tuple[str, dict]]

READERS: dict[str, Reader] = {
    "trl": trl,
    "hh": hh,
    "sharegpt": sharegpt,
    "kto": kto,
    "math": math,
    "gsm8k": gsm8k,
    "alpaca": alpaca,
    "prompts": prompts,
    "completions": completions,
    "openai": openai,
    "openrlhf": openrlhf,
    "verl": verl,
}
FORMATS = ("auto", *READERS)


def detect(record: dict, where: str) -> str:
    """The format a record's columns suggest; records with an output are completions, so
    AlpacaEval instruction files (which carry a placeholder ``output``) need ``--format alpaca``."""
    cols = set(record)
    if cols & set(OPENAI_PREFERENCE):
        return "openai"
    if "reward_model" in cols or {"data_source", "prompt"} <= cols:
        return "verl"
    if {"conversations", "chosen", "rejected"} <= cols:
        return "sharegpt"
    if {"chosen", "rejected"} <= cols:
        chosen = record["chosen"]
        is_transcript = "prompt" not in cols and isinstance(chosen, str) and "\n\nAssistant:" in chosen
        return "hh" if is_transcript else "trl"
    if {"completion", "label"} <= cols:
        return "kto" if "messages" in cols and "prompt" not in cols else "trl"
    if cols & {"label", "kto_tag"} and cols & {"messages", "conversations"} and "completion" not in cols:
        return "kto"
    if cols & {"completion", "output"} and cols & {"prompt", "messages", "instruction"}:
        return "completions"
    if "input" in cols and "instruction" not in cols:
        return "openrlhf"
    if {"problem", "answer"} <= cols:
        return "math"
    if {"question", "answer"} <= cols:
        return "gsm8k"
    if "instruction" in cols:
        return "alpaca"
    if "messages" in cols and _ends_with_assistant(record["messages"]):
        return "openai"
    if cols & {"prompt", "messages"}:
        return "prompts"
    raise InputFormatError(
        f"{where}: cannot detect the format from columns {', '.join(sorted(cols))}; "
        f"pass --format ({', '.join(READERS)})"
    )


def _ends_with_assistant(value) -> bool:
    """Whether ``value`` is a list of messages whose last one is an assistant turn."""
    last = value[-1] if isinstance(value, list) and value else None
    return isinstance(last, dict) and ROLE_ALIASES.get(str(last.get("role")).strip().lower()) == "assistant"

"""What ``humanline-data export`` writes for each format and kind: a :class:`Target` per format
maps all rows of a version (dicts of the kind's columns) to output records.

==========  ========  =================  ==================  ==================  =================  ==============
format      file      prompts            completions/scored  pairs               unpaired           groups
==========  ========  =================  ==================  ==================  =================  ==============
trl         JSONL     prompt-only        prompt-completion   preference          unpaired pref.     prompt-only
openai      JSONL     refused            chat messages       preference (DPO)    refused            refused
verl        Parquet   RL prompts         distinct prompts    refused             refused            RL prompts
openrlhf    JSONL     input + label      input (SFT)         chosen + rejected   input + label      input + label
jsonl       JSONL     this project's own columns, every kind
parquet     Parquet   this project's own columns, every kind
==========  ========  =================  ==================  ==================  =================  ==============

- trl: TRL's *conversational* types: ``prompt`` = the prompt messages; ``chosen``, ``rejected``,
  ``completion`` = one-message lists ``[{"role": "assistant", "content": ...}]``; ``label`` =
  ``desirable``. Prompt-only rows also carry ``answer`` (TRL hands extra columns to GRPO's
  reward functions). Groups give their prompts.
- openai: chat rows ``{"messages": prompt + [assistant]}``; preference rows ``{"input":
  {"messages": prompt}, "preferred_output": [assistant], "non_preferred_output": [assistant]}``.
  Prompts, unpaired and groups rows have no OpenAI fine-tuning form.
- verl: ``data_source`` (= ``source``), ``prompt`` (messages), ``ability`` (null: the data does
  not say its domain), ``reward_model`` ``{"style": "rule", "ground_truth": answer}``,
  ``extra_info`` ``{"split", "index"}`` (index = record number in the file). Completions and
  scored rows give their distinct prompts, first seen first.
- openrlhf: the keys its trainers read by default, with ``--apply_chat_template``: pairs ->
  ``chosen``/``rejected`` whole conversations (train_dpo / train_rm without ``--prompt_key``);
  unpaired -> ``input`` conversation ending with the completion + bool ``label`` (train_kto);
  completions/scored -> ``input`` conversation ending with the completion (train_sft without
  ``--output_key``); prompts/groups -> ``input`` prompt messages + ``label`` = answer
  (train_ppo_ray with ``--label_key label``).
- jsonl / parquet: the version's rows unchanged (``metadata`` stays a JSON string).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable, Iterator

import pyarrow as pa

from humanline_data.schema import KINDS, MESSAGES, SCHEMAS

Row = dict  # one row of a version: {column: value}
Records = Callable[[Iterable[Row]], Iterable[dict]]  # all rows of a version -> output records

VERL_SCHEMA = pa.schema([
    ("data_source", pa.string()),
    ("prompt", MESSAGES),
    ("ability", pa.string()),
    ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
    ("extra_info", pa.struct([("split", pa.string()), ("index", pa.int64())])),
])


@dataclass(frozen=True)
class Target:
    """One export format: what each kind it takes becomes (other kinds are refused, ``refused``
    says why), and the Parquet schema of its records for a kind (None: JSON lines)."""

    kinds: dict[str, Records]
    refused: str = ""
    parquet_schema: Callable[[str], pa.Schema] | None = None


def each(convert: Callable[[Row], dict]) -> Records:
    """Records made one per row by ``convert``."""
    return partial(map, convert)


def unchanged(rows: Iterable[Row]) -> Iterable[dict]:
    return rows


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _trl_prompt(row: Row) -> dict:
    return {"prompt": row["messages"], "answer": row["answer"]}


def _trl_completion(row: Row) -> dict:
    return {"prompt": row["messages"], "completion": assistant(row["completion"])}


def _trl_pair(row: Row) -> dict:
    return {"prompt": row["messages"], "chosen": assistant(row["chosen"]), "rejected": assistant(row["rejected"])}


def _trl_unpaired(row: Row) -> dict:
    return {"prompt": row["messages"], "completion": assistant(row["completion"]), "label": row["desirable"]}


def _openai_chat(row: Row) -> dict:
    return {"messages": row["messages"] + assistant(row["completion"])}


def _openai_pair(row: Row) -> dict:
    return {
        "input": {"messages": row["messages"]},
        "preferred_output": assistant(row["chosen"]),
        "non_preferred_output": assistant(row["rejected"]),
    }


def _verl_prompts(rows: Iterable[Row]) -> Iterator[dict]:
    """One verl row per distinct prompt, first seen first; ``extra_info.index`` numbers them."""
    seen: set[str] = set()
    for row in rows:
        if row["prompt_id"] in seen:
            continue
        yield {
            "data_source": row["source"],
            "prompt": row["messages"],
            "ability": None,
            "reward_model": {"style": "rule", "ground_truth": row["answer"]},
            "extra_info": {"split": row.get("split"), "index": len(seen)},
        }
        seen.add(row["prompt_id"])


def _openrlhf_prompt(row: Row) -> dict:
    return {"input": row["messages"], "label": row["answer"]}


def _openrlhf_completion(row: Row) -> dict:
    return {"input": row["messages"] + assistant(row["completion"])}


def _openrlhf_pair(row: Row) -> dict:
    return {"chosen": row["messages"] + assistant(row["chosen"]), "rejected": row["messages"] + assistant(row["rejected"])}


def _openrlhf_unpaired(row: Row) -> dict:
    return {"input": row["messages"] + assistant(row["completion"]), "label": row["desirable"]}


TARGETS: dict[str, Target] = {
    "trl": Target({
        "prompts": each(_trl_prompt),
        "completions": each(_trl_completion),
        "scored": each(_trl_completion),
        "pairs": each(_trl_pair),
        "unpaired": each(_trl_unpaired),
        "groups": each(_trl_prompt),
    }),
    "openai": Target(
        {"completions": each(_openai_chat), "scored": each(_openai_chat), "pairs": each(_openai_pair)},
        refused="OpenAI fine-tuning rows need an assistant answer (chat) or two (preference)",
    ),
    "verl": Target(
        {kind: _verl_prompts for kind in ("prompts", "completions", "scored", "groups")},
        refused="verl's RL parquet holds the prompts to sample from",
        parquet_schema=lambda kind: VERL_SCHEMA,
    ),
    "openrlhf": Target({
        "prompts": each(_openrlhf_prompt),
        "completions": each(_openrlhf_completion),
        "scored": each(_openrlhf_completion),
        "pairs": each(_openrlhf_pair),
        "unpaired": each(_openrlhf_unpaired),
        "groups": each(_openrlhf_prompt),
    }),
    "jsonl": Target({kind: unchanged for kind in KINDS}),
    "parquet": Target({kind: unchanged for kind in KINDS}, parquet_schema=SCHEMAS.__getitem__),
}
EXPORT_FORMATS = tuple(TARGETS)

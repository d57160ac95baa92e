"""Training shards built with store.write_version from real rows of ../shared/data.

- pairs: LLaMA-Factory's chat preference pairs (chat_pairs_demo.json), no scores.
- groups: GSM8K problems, each with its own worked answer (reward 1) and the answers of the
  next two problems (reward 0); advantages by method.md §5.3's group formula.
- unpaired: the pairs split (chosen desirable, rejected undesirable).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from humanline_data import store
from humanline_data.schema import SCHEMAS, prompt_id

_ROLE = {"human": "user", "gpt": "assistant", "system": "system"}


def pair_rows(data: Path, n: int, max_chars: int = 200) -> list[dict]:
    """The first ``n`` chat pairs whose prompt is at most ``max_chars`` long."""
    rows = []
    for item in json.loads((data / "preferences" / "chat_pairs_demo.json").read_text()):
        messages = [{"role": _ROLE[m["from"]], "content": m["value"]} for m in item["conversations"]]
        chosen, rejected = item["chosen"]["value"], item["rejected"]["value"]
        if sum(len(m["content"]) for m in messages) > max_chars:
            continue
        rows.append(
            {"prompt_id": prompt_id(messages), "messages": messages, "source": "chat_pairs_demo",
             "chosen": chosen, "rejected": rejected}
        )
        if len(rows) == n:
            break
    return rows


def group_rows(data: Path, n: int, size: int = 3) -> list[dict]:
    """``n`` GSM8K groups: the problem's own answer (reward 1) and ``size - 1`` wrong ones (0)."""
    lines = (data / "gsm8k" / "train.jsonl").read_text().splitlines()[: n + size]
    items = [json.loads(line) for line in lines]
    rows = []
    for i in range(n):
        messages = [{"role": "user", "content": items[i]["question"]}]
        completions = [items[i + j]["answer"] for j in range(size)]
        rewards = [1.0] + [0.0] * (size - 1)
        mean = sum(rewards) / size
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / size)
        rows.append(
            {"prompt_id": prompt_id(messages), "messages": messages, "source": "gsm8k", "completions": completions,
             "rewards": rewards, "advantages": [(r - mean) / (std + 0.01) for r in rewards]}
        )
    return rows


def unpaired_rows(pairs: list[dict]) -> list[dict]:
    out = []
    for p in pairs:
        for text, good in ((p["chosen"], True), (p["rejected"], False)):
            out.append({"prompt_id": p["prompt_id"], "messages": p["messages"], "source": p["source"],
                        "completion": text, "desirable": good})
    return out


def write(out: Path, kind: str, rows: list[dict]) -> Path:
    """Write ``rows`` as the next version of dataset ``out``; return the version path."""
    with store.write_version(out, kind, params={"test": True}) as w:
        w.write(pa.Table.from_pylist(rows) if rows else SCHEMAS[kind].empty_table())
    return w.path


def write_unchecked(out: Path, kind: str, rows: list[dict]) -> Path:
    """A version written WITHOUT schema validation (to test the trainer's own checks, e.g. NaN)."""
    version = out / "v1"
    version.mkdir(parents=True)
    table = pa.Table.from_pylist(rows, schema=SCHEMAS[kind])
    pq.write_table(table, version / "part-00000.parquet")
    part = version / "part-00000.parquet"
    manifest = {"version": 1, "kind": kind, "rows": table.num_rows, "params": {}, "parents": [], "stats": {},
                "files": [{"name": part.name, "rows": table.num_rows, "bytes": part.stat().st_size,
                           "sha256": hashlib.sha256(part.read_bytes()).hexdigest()}]}
    (version / "manifest.json").write_text(json.dumps(manifest))
    return version


def tiny_config(shards: Path, model: Path, out: Path, **overrides):
    """A TrainConfig for fast tiny-model runs (short sequences, small batches, high lr)."""
    from humanline_train.settings import TrainConfig

    settings = dict(shards=str(shards) if shards else None, loss="dpo", model=str(model), out=str(out), batch_size=2, max_length=96,
                    lr=1e-3, warmup=0, max_steps=4)
    settings.update(overrides)
    return TrainConfig.from_flat(**settings)


def losses_of(run_dir: Path) -> list[float]:
    """Per-step losses from a run's metrics.jsonl."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["train/loss"] for line in lines]

"""Shards -> tokenized, length-grouped micro-batches, streamed and deterministic.

One :class:`ShardLoader` reads a dataset version part by part (bounded memory), shuffles rows
through a seeded buffer, tokenizes them, groups examples of similar length into micro-batches
(less padding) and yields :class:`Batch` tensors ready for ``logprobs.completion_logprobs``.
The order depends only on the shard, the seed and the batch settings, so the trainer can look
any number of steps ahead and a resumed run can skip to where it stopped.

Tokenization (every loss): prompt ids = the chat template with the generation prompt;
completion ids = the completion's tokens + EOS. An example whose prompt leaves no room for one
completion token within ``max_length`` is skipped, an overflowing completion is cut; both are
counted in :class:`Truncation` (reported per step and at the end, never silent).

Row layout of a micro-batch of B examples (right padding):

==== ==================================================================================
dpo  ``[chosen_0..chosen_{B-1}, rejected_0..rejected_{B-1}]`` (one concatenated forward)
kto  ``[example_0..example_{B-1}, kl_0..kl_{B-1}]``; ``kl_i`` = prompt i + completion (i+1) mod B
grpo ``[completion_0..completion_{B-1}]`` with their advantages
==== ==================================================================================
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from humanline_data import store
from humanline_data.errors import HumanlineError, WrongKindError

# Which shard kinds each loss can train on.
LOSS_KINDS = {"dpo": ("pairs",), "kto": ("unpaired", "pairs"), "grpo": ("groups", "pairs")}


class ShardError(HumanlineError):
    """A shard the loss cannot train on (empty, NaN rewards, nothing fits --max-length)."""


@dataclass
class Example:
    """One training example: prompt ids and its completion ids (two for DPO: chosen, rejected)."""

    prompt: list[int]
    completions: list[list[int]]
    desirable: bool | None = None  # KTO
    advantage: float | None = None  # GRPO

    @property
    def length(self) -> int:
        return len(self.prompt) + max(len(c) for c in self.completions)


@dataclass
class Batch:
    """A micro-batch: ``N`` model rows for ``B`` examples (N = 2B for dpo/kto, B for grpo)."""

    input_ids: torch.Tensor  # [N, T] long
    attention_mask: torch.Tensor  # [N, T] long
    completion_mask: torch.Tensor  # [N, T] bool, True on completion tokens
    keys: list[bytes]  # [N] content hash of each row's tokens (reference cache key)
    desirable: torch.Tensor | None = None  # [B] bool (kto)
    advantages: torch.Tensor | None = None  # [B] float32 (grpo)

    @property
    def num_examples(self) -> int:
        return len(self.keys) // (1 if self.advantages is not None else 2)

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device: torch.device | str) -> "Batch":
        move = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return dataclasses.replace(self, **move)


@dataclass
class Truncation:
    """Counts of examples changed to fit ``max_length`` (cumulative over what was read)."""

    skipped_prompts: int = 0  # prompt alone too long: example dropped
    truncated_completions: int = 0  # completion cut to fit
    examples: int = 0  # examples kept


@dataclass
class ShardLoader:
    """Deterministic stream of micro-batches from one shard version for one process.

    ``batch_size`` is examples per micro-batch per process. ``epochs=None`` cycles forever
    (online rounds); otherwise the stream ends after that many passes. Epoch ``e`` shuffles
    with seed ``(seed, e)``. Global micro-batch ``i`` goes to process ``i % num_processes``.
    """

    shards: str | Path | store.Version  # a Version already checked by open_shards, or a path
    loss: str
    tokenizer: object
    batch_size: int
    max_length: int
    seed: int = 0
    epochs: int | None = 1
    process_index: int = 0
    num_processes: int = 1
    shuffle_buffer: int = 4096  # rows held for shuffling
    pool_batches: int = 32  # micro-batches sorted together by length
    truncation: Truncation = field(default_factory=Truncation)

    def __post_init__(self) -> None:
        if self.loss not in LOSS_KINDS:
            raise HumanlineError(f"unknown loss {self.loss!r} (expected dpo, kto or grpo)")
        self.version = self.shards if isinstance(self.shards, store.Version) else open_shards(self.shards, self.loss)
        self.kind = self.version.kind
        self.eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos

    @property
    def rows(self) -> int:
        return int(self.version.manifest["rows"])

    def examples_per_epoch_estimate(self) -> int:
        """Examples in one pass before length filtering (from the manifest; groups are summed)."""
        if self.kind == "groups":
            return sum(
                int(pc.sum(pc.list_value_length(b.column("completions"))).as_py() or 0)
                for b in store.iter_batches(self.version, columns=["completions"])
            )
        return self.rows * (2 if (self.kind == "pairs" and self.loss != "dpo") else 1)

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_from(0)

    def iter_from(self, position: int) -> Iterator[Batch]:
        """This process's micro-batches, skipping the first ``position`` global micro-batches."""
        self.truncation = Truncation()
        epoch = 0
        index = 0
        while self.epochs is None or epoch < self.epochs:
            kept_before, index_before = self.truncation.examples, index
            for examples in self._epoch_batches(epoch):
                if index >= position and index % self.num_processes == self.process_index:
                    yield collate(examples, self.loss, self.pad)
                index += 1
            if self.truncation.examples == kept_before:
                raise ShardError(
                    f"{self.version.path}: no example fits --max-length {self.max_length} "
                    f"({self.truncation.skipped_prompts} prompts too long)"
                )
            if index == index_before:  # would loop forever when epochs is None (online rounds)
                raise ShardError(
                    f"{self.version.path}: {self.truncation.examples - kept_before} examples make no whole "
                    f"micro-batch of {self.batch_size} x {self.num_processes} processes"
                )
            epoch += 1

    def _epoch_batches(self, epoch: int) -> Iterator[list[Example]]:
        rng = random.Random(f"{self.seed}/{epoch}")
        rows = _shuffle(self._rows(rng), rng, self.shuffle_buffer)
        pool: list[Example] = []
        pool_size = self.batch_size * self.pool_batches
        for row in rows:
            pool.extend(self._examples(row))
            if len(pool) >= pool_size:
                chunks, pool = _length_grouped(pool, self.batch_size, rng)
                yield from chunks
        chunks, _ = _length_grouped(pool, self.batch_size, rng)  # a partial micro-batch is dropped
        # every process must get the same number of micro-batches: drop a ragged tail
        whole = len(chunks) - len(chunks) % self.num_processes
        yield from chunks[:whole]

    def _rows(self, rng: random.Random) -> Iterator[dict]:
        parts = list(range(len(self.version.files)))
        rng.shuffle(parts)
        for i in parts:
            part = pq.ParquetFile(self.version.files[i])
            for record_batch in part.iter_batches(batch_size=1024, columns=_COLUMNS[self.kind]):
                yield from record_batch.to_pylist()

    def _examples(self, row: dict) -> list[Example]:
        split = _split_row(row, self.kind, self.loss)
        prompt = self._prompt_ids(row["messages"])
        if len(prompt) >= self.max_length:
            self.truncation.skipped_prompts += len(split)
            return []
        examples = [Example(prompt, [self._completion_ids(c, len(prompt)) for c in cs], d, a) for cs, d, a in split]
        self.truncation.examples += len(examples)
        return examples

    def _prompt_ids(self, messages: list[dict]) -> list[int]:
        encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(encoded["input_ids"])

    def _completion_ids(self, text: str, prompt_len: int) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.eos]
        room = self.max_length - prompt_len
        if len(ids) > room:
            self.truncation.truncated_completions += 1
            ids = ids[:room]
        return ids


_COLUMNS = {
    "pairs": ["messages", "chosen", "rejected", "chosen_reward", "rejected_reward"],
    "unpaired": ["messages", "completion", "desirable"],
    "groups": ["messages", "completions", "advantages"],
}


def open_shards(path: str | Path, loss: str) -> store.Version:
    """Open and check a shard version for ``loss``: right kind, not empty, finite scores."""
    try:
        version = store.open_version(path, kinds=LOSS_KINDS[loss])
    except WrongKindError as err:
        raise WrongKindError(f"{err} (loss {loss})") from None
    if not version.manifest["rows"]:
        raise ShardError(f"{version.path}: empty shard (0 rows)")
    for column in {"pairs": ("chosen_reward", "rejected_reward"), "groups": ("advantages",)}.get(version.kind, ()):
        for i, record_batch in enumerate(store.iter_batches(version, columns=[column])):
            values = record_batch.column(0)
            if pa.types.is_list(values.type):
                values = pc.list_flatten(values)
            bad = pc.invert(pc.is_finite(values)).fill_null(False)
            if pc.any(bad).as_py():
                raise ShardError(f"{version.path}: {column} holds NaN or inf (a row in record batch {i})")
    return version


def _split_row(row: dict, kind: str, loss: str) -> list[tuple[list[str], bool | None, float | None]]:
    """(completions, desirable, advantage) of each example a row gives ``loss``."""
    if kind == "pairs" and loss == "dpo":
        return [([row["chosen"], row["rejected"]], None, None)]
    if kind == "pairs" and loss == "kto":
        return [([row["chosen"]], True, None), ([row["rejected"]], False, None)]
    if kind == "pairs":  # grpo: a group of two
        a_chosen, a_rejected = pair_advantages(row["chosen_reward"], row["rejected_reward"])
        return [([row["chosen"]], None, a_chosen), ([row["rejected"]], None, a_rejected)]
    if kind == "unpaired":
        return [([row["completion"]], bool(row["desirable"]), None)]
    return [([c], None, float(a)) for c, a in zip(row["completions"], row["advantages"])]


def pair_advantages(chosen_reward: float | None, rejected_reward: float | None) -> tuple[float, float]:
    """GRPO advantages of a pair read as a group of two (SPEC §2): +/-1 when it has no scores."""
    if chosen_reward is None or rejected_reward is None:
        return 1.0, -1.0
    from humanline_train.losses import group_advantages

    adv = group_advantages(torch.tensor([chosen_reward, rejected_reward], dtype=torch.float64), torch.tensor([0, 0]))
    return float(adv[0]), float(adv[1])


def _shuffle(rows: Iterator[dict], rng: random.Random, size: int) -> Iterator[dict]:
    """Seeded streaming shuffle through a buffer of ``size`` rows."""
    buffer: list[dict] = []
    for row in rows:
        if len(buffer) < size:
            buffer.append(row)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = row
    rng.shuffle(buffer)
    yield from buffer


def _length_grouped(pool: list[Example], batch_size: int, rng: random.Random) -> tuple[list[list[Example]], list[Example]]:
    """Whole micro-batches of similar-length examples in shuffled order, and the leftover."""
    ordered = sorted(pool, key=lambda e: e.length)
    whole = len(ordered) - len(ordered) % batch_size
    chunks = [ordered[i : i + batch_size] for i in range(0, whole, batch_size)]
    rng.shuffle(chunks)
    return chunks, ordered[whole:]


def collate(examples: list[Example], loss: str, pad: int) -> Batch:
    """Right-padded tensors of ``examples`` in the row layout of ``loss`` (module docstring)."""
    if loss == "dpo":
        rows = [(e.prompt, e.completions[0]) for e in examples] + [(e.prompt, e.completions[1]) for e in examples]
    elif loss == "kto":
        n = len(examples)
        max_len = max(e.length for e in examples)
        rows = [(e.prompt, e.completions[0]) for e in examples]
        for i, e in enumerate(examples):  # mismatched pair: prompt i, completion i+1 (cut to the batch's longest)
            other = examples[(i + 1) % n].completions[0]
            rows.append((e.prompt, other[: max(1, max_len - len(e.prompt))]))
    else:
        rows = [(e.prompt, e.completions[0]) for e in examples]
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    completion = torch.zeros((len(rows), width), dtype=torch.bool)
    keys = []
    for r, (p, c) in enumerate(rows):
        n_p, n_c = len(p), len(c)
        input_ids[r, : n_p + n_c] = torch.tensor(p + c)
        attention[r, : n_p + n_c] = 1
        completion[r, n_p : n_p + n_c] = True
        keys.append(_row_key(p, c))
    batch = Batch(input_ids, attention, completion, keys)
    if loss == "kto":
        batch.desirable = torch.tensor([bool(e.desirable) for e in examples])
    if loss == "grpo":
        batch.advantages = torch.tensor([e.advantage for e in examples], dtype=torch.float32)
    return batch


def _row_key(prompt: list[int], completion: list[int]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray(prompt, dtype=np.int32).tobytes())
    h.update(b"|")
    h.update(np.asarray(completion, dtype=np.int32).tobytes())
    return h.digest()


def steps_per_epoch_estimate(loader: ShardLoader, grad_accum: int) -> int:
    """Optimizer steps in one pass, assuming every example fits (used for warmup and progress)."""
    micro = loader.examples_per_epoch_estimate() // loader.batch_size // loader.num_processes
    return max(1, math.floor(micro / grad_accum))

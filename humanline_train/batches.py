"""Shards -> tokenized optimizer steps of micro-batches, streamed and deterministic.

One :class:`ShardLoader` reads a dataset version part by part (bounded memory), shuffles rows
through a seeded buffer, tokenizes them and forms *optimizer steps* of at most
``batch_size x grad_accum x num_processes`` examples of similar length (less padding), cut
into ``grad_accum x num_processes`` micro-batches of at most ``batch_size``; micro-batch ``j``
goes to process ``j % num_processes``.

The unit a step takes whole is a *group*: all completions of one row of a groups shard (or the
two of a pair read as a group), so a prompt's completions never straddle steps and its
advantages sum to 0 in its step; in every other layout the unit is one example. Units are
taken in length order, each placed whole into the first micro-batch of the step with room (a
group larger than a micro-batch into consecutive empty ones), and a step closes when the next
unit has no room left in it (a group larger than a whole step is a :class:`ShardError` naming
the sizes). Each epoch's last, partial step trains too (``drop_last`` drops it; a remainder of
fewer examples than a step has micro-batches is dropped); where it holds fewer groups than
micro-batches, a group is cut over consecutive micro-batches (:func:`cut_step`).

With one example per unit, which examples make a step depends only on the shard, the seed and
the examples per step, so the same step split into other micro-batches or processes holds the
same examples and gives the same update; with groups that holds where the group size divides
the micro-batch size or the reverse. The order is known any number of steps ahead (look-ahead
reference) and a resumed run skips to where it stopped.

Tokenization (every objective): prompt ids = the chat template with the generation prompt,
rendered by ``humanline_data.backends.prompt_token_ids`` (the sampler's own function);
completion ids = the completion's tokens + EOS. An example whose prompt leaves no room for one
completion token within ``max_length`` is skipped, an overflowing completion is cut; both are
counted in :class:`Truncation` (reported per step and at the end, never silent).

Row layouts of a micro-batch of B examples (``LAYOUTS``; the objective names its layout):

======== ==================================================================================
paired   ``[chosen_0..chosen_{B-1}, rejected_0..rejected_{B-1}]`` (one concatenated forward)
unpaired ``[example_0..example_{B-1}]``, and ``Batch.kl``: one row per example pairing its
         prompt with the completion of the next example of the *step* whose prompt differs
grouped  ``[completion_0..completion_{B-1}]`` with their advantages
======== ==================================================================================
"""

from __future__ import annotations

import dataclasses
import hashlib
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
from humanline_data.advantages import group_advantages
from humanline_data.backends import prompt_token_ids
from humanline_data.errors import HumanlineError, WrongKindError

LAYOUTS = ("paired", "unpaired", "grouped")


class ShardError(HumanlineError):
    """A shard the objective cannot train on (empty, NaN rewards, nothing fits --max-length)."""


@dataclass
class Example:
    """One training example: prompt ids and its completion ids (two when paired: chosen, rejected)."""

    prompt_id: str
    prompt: list[int]
    completions: list[list[int]]
    desirable: bool | None = None  # unpaired
    advantage: float | None = None  # grouped

    @property
    def length(self) -> int:
        return len(self.prompt) + max(len(c) for c in self.completions)

    @property
    def completion_tokens(self) -> int:
        return sum(len(c) for c in self.completions)


@dataclass
class Batch:
    """A micro-batch: ``N`` model rows for ``B`` examples (N = 2B when paired, else B)."""

    input_ids: torch.Tensor  # [N, T] long
    attention_mask: torch.Tensor  # [N, T] long
    completion_mask: torch.Tensor  # [N, T] bool, True on completion tokens
    keys: list[bytes]  # [N] content hash of each row's tokens (reference cache key)
    layout: str = "grouped"
    desirable: torch.Tensor | None = None  # [B] bool (unpaired)
    advantages: torch.Tensor | None = None  # [B] float32 (grouped)
    kl: "Batch | None" = None  # unpaired: the mismatched KL rows [B, T']

    @property
    def num_examples(self) -> int:
        return len(self.keys) // (2 if self.layout == "paired" else 1)

    @property
    def num_tokens(self) -> int:
        """Tokens run through the model (every part, padding excluded)."""
        return sum(int(part.attention_mask.sum()) for part in self.parts())

    @property
    def num_tokens_completion(self) -> int:
        """Completion tokens of the trained rows (KL rows excluded)."""
        return int(self.completion_mask.sum())

    def parts(self) -> list["Batch"]:
        """The row sets that run as separate forwards: the trained rows, then the KL rows if any."""
        return [self] if self.kl is None else [self, self.kl]

    def halves(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen rows, rejected rows) of a paired micro-batch's ``rows`` [2B, ...]."""
        b = self.num_examples
        return rows[:b], rows[b:]

    def to(self, device: torch.device | str) -> "Batch":
        move = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        if self.kl is not None:
            move["kl"] = self.kl.to(device)
        return dataclasses.replace(self, **move)


@dataclass
class Step:
    """One optimizer step: this process's micro-batches and the step's totals over every process."""

    batches: list[Batch]
    examples: int  # over all micro-batches and processes
    completion_tokens: int  # of the trained rows, over all micro-batches and processes


@dataclass
class Truncation:
    """Counts of examples changed or left out (cumulative over what was read)."""

    skipped_prompts: int = 0  # prompt alone too long: example dropped
    truncated_completions: int = 0  # completion cut to fit
    examples: int = 0  # examples that fit --max-length
    dropped: int = 0  # examples that fit but made no step (an epoch's last, partial step)

    @property
    def trained(self) -> int:
        """Examples that made a step."""
        return self.examples - self.dropped


@dataclass
class ShardLoader:
    """Deterministic stream of optimizer steps from one shard version for one process.

    ``objective``: an objective class or its name (layout and shard kinds). ``batch_size`` is
    examples per micro-batch per process, ``grad_accum`` micro-batches per step and process.
    ``epochs=None`` cycles forever (online rounds); otherwise the stream ends after that many
    passes. Epoch ``e`` shuffles with seed ``(seed, e)``. ``drop_last``: leave out each epoch's
    last, partial step (default: train it).
    """

    shards: str | Path | store.Version  # a Version already checked by open_shards, or a path
    objective: object
    tokenizer: object
    batch_size: int
    max_length: int
    grad_accum: int = 1
    seed: int = 0
    epochs: int | None = 1
    process_index: int = 0
    num_processes: int = 1
    drop_last: bool = False
    shuffle_buffer: int = 4096  # rows held for shuffling
    pool_batches: int = 32  # micro-batches' worth of examples sorted together by length
    truncation: Truncation = field(default_factory=Truncation)

    def __post_init__(self) -> None:
        from humanline_train import objectives

        if isinstance(self.objective, str):
            self.objective = objectives.get(self.objective)
        self.layout = self.objective.layout
        if isinstance(self.shards, store.Version):
            self.version = self.shards
        else:
            self.version = open_shards(self.shards, self.objective)
        self.kind = self.version.kind
        self.eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos
        self._check_group_sizes()

    def reopened(self) -> "ShardLoader":
        """A fresh loader over the same (already checked) version and settings, from its start."""
        return dataclasses.replace(self, shards=self.version, truncation=Truncation())

    @property
    def rows(self) -> int:
        return int(self.version.manifest["rows"])

    @property
    def micro_batches(self) -> int:
        """Micro-batches of one optimizer step over all processes."""
        return self.grad_accum * self.num_processes

    @property
    def capacity(self) -> int:
        """Most examples one optimizer step holds."""
        return self.batch_size * self.micro_batches

    def _group_sizes(self) -> list[int]:
        """Examples each row gives (from the shard, without tokenizing)."""
        if self.kind == "groups":
            return [n for b in store.iter_batches(self.version, columns=["completions"])
                    for n in pc.list_value_length(b.column("completions")).to_pylist()]
        return [2 if self.kind == "pairs" and self.layout != "paired" else 1] * self.rows

    def _check_group_sizes(self) -> None:
        """A group (the completions of one row, trained in one step) must fit one optimizer step."""
        if self.layout != "grouped":
            return
        largest = max(self._group_sizes(), default=0)
        if largest > self.capacity:
            raise ShardError(
                f"{self.version.path}: a group of {largest} completions does not fit one optimizer step of "
                f"{self.batch_size} x {self.grad_accum} x {self.num_processes} processes = {self.capacity} examples "
                "(a group trains whole, in one step); raise --batch-size or --grad-accum"
            )

    def count_steps(self) -> int:
        """Optimizer steps over all ``epochs`` (finite): arithmetic when every unit is one example
        (prompts too long for ``max_length`` are not foreseen), else one pass over the shard."""
        if self.layout == "grouped":
            probe = self.reopened()
            return sum(1 for _ in probe._plan())
        examples = sum(self._group_sizes())
        whole, rest = divmod(examples, self.capacity)
        last = int(rest >= self.micro_batches and not self.drop_last)
        return max(1, self.epochs * (whole + last))

    def __iter__(self) -> Iterator[Batch]:
        """This process's micro-batches, step after step."""
        for step in self.iter_steps():
            yield from step.batches

    def iter_steps(self, start: int = 0) -> Iterator[Step]:
        """This process's :class:`Step` s, skipping the first ``start`` steps."""
        for index, units in enumerate(self._plan()):
            if index >= start:
                yield self._step(units)

    def _plan(self) -> Iterator[list[list[Example]]]:
        """The units of every step, epoch after epoch (counts in ``truncation``)."""
        self.truncation = Truncation()
        epoch, index = 0, 0
        while self.epochs is None or epoch < self.epochs:
            kept_before, index_before = self.truncation.examples, index
            for units in self._epoch_steps(epoch):
                yield units
                index += 1
            if self.truncation.examples == kept_before:
                raise ShardError(
                    f"{self.version.path}: no example fits --max-length {self.max_length} "
                    f"({self.truncation.skipped_prompts} prompts too long)"
                )
            if index == index_before:  # would loop forever when epochs is None (online rounds)
                raise ShardError(
                    f"{self.version.path}: {self.truncation.examples - kept_before} examples make no optimizer step "
                    f"of {self.batch_size} x {self.grad_accum} x {self.num_processes} processes"
                    + (" (--drop-last)" if self.drop_last else f" (one needs at least {self.micro_batches})")
                )
            epoch += 1

    def _step(self, units: list[list[Example]]) -> Step:
        micro = cut_step(units, self.micro_batches, self.batch_size)
        examples = [e for batch in micro for e in batch]
        partners = kl_partners([e.prompt_id for e in examples]) if self.layout == "unpaired" else None
        bounds = np.cumsum([0, *map(len, micro)]).tolist()
        rows = [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]
        mine = rows[self.process_index :: self.num_processes]
        batches = [self._collate(examples, r, partners) for r in mine]
        return Step(batches, len(examples), sum(e.completion_tokens for e in examples))

    def _epoch_steps(self, epoch: int) -> Iterator[list[list[Example]]]:
        rng = random.Random(f"{self.seed}/{epoch}")
        rows = _shuffle(self._rows(rng), rng, self.shuffle_buffer)
        pool: list[list[Example]] = []
        pooled, pool_size = 0, max(self.batch_size * self.pool_batches, self.capacity)
        for row in rows:
            units = self._units(row)
            pool.extend(units)
            pooled += sum(map(len, units))
            if pooled >= pool_size:
                steps, pool = _length_grouped(pool, self.micro_batches, self.batch_size, rng)
                pooled = sum(map(len, pool))
                yield from steps
        steps, last = _length_grouped(pool, self.micro_batches, self.batch_size, rng)
        size = sum(map(len, last))
        trains = size >= self.micro_batches and not self.drop_last
        self.truncation.dropped += 0 if trains else size  # counted before the epoch's last steps are taken
        yield from steps + ([last] if trains else [])

    def _collate(self, examples: list[Example], rows: list[int], partners: list[int | None] | None) -> Batch:
        picked = [examples[i] for i in rows]
        batch = collate(picked, self.layout, self.pad)
        if partners is not None:
            kl_rows = []
            for i in rows:
                if partners[i] is not None:
                    prompt = examples[i].prompt
                    other = examples[partners[i]].completions[0]
                    kl_rows.append((prompt, other[: max(1, self.max_length - len(prompt))]))
            batch.kl = _padded(kl_rows, self.pad, "grouped") if kl_rows else None
        return batch

    def _rows(self, rng: random.Random) -> Iterator[dict]:
        parts = list(range(len(self.version.files)))
        rng.shuffle(parts)
        for i in parts:
            part = pq.ParquetFile(self.version.files[i])
            for record_batch in part.iter_batches(batch_size=1024, columns=_COLUMNS[self.kind]):
                yield from record_batch.to_pylist()

    def _units(self, row: dict) -> list[list[Example]]:
        """The units a row gives: one group of all its examples (grouped layout), else one unit per example."""
        split = _split_row(row, self.kind, self.layout)
        prompt = prompt_token_ids(self.tokenizer, [row["messages"]])[0]
        if len(prompt) >= self.max_length:
            self.truncation.skipped_prompts += len(split)
            return []
        examples = [Example(row["prompt_id"], prompt, [self._completion_ids(c, len(prompt)) for c in cs], d, a)
                    for cs, d, a in split]
        self.truncation.examples += len(examples)
        return [examples] if self.layout == "grouped" else [[e] for e in examples]

    def _completion_ids(self, text: str, prompt_len: int) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.eos]
        room = self.max_length - prompt_len
        if len(ids) > room:
            self.truncation.truncated_completions += 1
            ids = ids[:room]
        return ids


_COLUMNS = {
    "pairs": ["prompt_id", "messages", "chosen", "rejected", "chosen_reward", "rejected_reward"],
    "unpaired": ["prompt_id", "messages", "completion", "desirable"],
    "groups": ["prompt_id", "messages", "completions", "advantages"],
}


def open_shards(path: str | Path, objective) -> store.Version:
    """Open and check a shard version for ``objective`` (a class): right kind, not empty, finite scores."""
    try:
        version = store.open_version(path, kinds=objective.shard_kinds)
    except WrongKindError as err:
        raise WrongKindError(f"{err} (loss {objective.name})") from None
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


def kl_partners(prompt_ids: list[str]) -> list[int | None]:
    """For each example ``i`` of a step, the first ``j`` in ``i+1, i+2, ...`` (mod n) whose prompt
    differs: KTO's mismatched pair (method.md §5.2); None when every example shares ``i``'s prompt."""
    n = len(prompt_ids)
    partners: list[int | None] = []
    for i in range(n):
        found = next((j % n for j in range(i + 1, i + n) if prompt_ids[j % n] != prompt_ids[i]), None)
        partners.append(found)
    return partners


def _split_row(row: dict, kind: str, layout: str) -> list[tuple[list[str], bool | None, float | None]]:
    """(completions, desirable, advantage) of each example a row gives ``layout``."""
    if kind == "pairs" and layout == "paired":
        return [([row["chosen"], row["rejected"]], None, None)]
    if kind == "pairs" and layout == "unpaired":
        return [([row["chosen"]], True, None), ([row["rejected"]], False, None)]
    if kind == "pairs":  # grouped: a group of two
        a_chosen, a_rejected = pair_advantages(row["chosen_reward"], row["rejected_reward"])
        return [([row["chosen"]], None, a_chosen), ([row["rejected"]], None, a_rejected)]
    if kind == "unpaired":
        return [([row["completion"]], bool(row["desirable"]), None)]
    return [([c], None, float(a)) for c, a in zip(row["completions"], row["advantages"])]


def pair_advantages(chosen_reward: float | None, rejected_reward: float | None) -> tuple[float, float]:
    """GRPO advantages of a pair read as a group of two (method.md §5.3): +/-1 when it has no scores."""
    if chosen_reward is None or rejected_reward is None:
        return 1.0, -1.0
    a_chosen, a_rejected = group_advantages([chosen_reward, rejected_reward], [0, 0])
    return float(a_chosen), float(a_rejected)


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


def _length_grouped(units: list[list[Example]], micro_batches: int, batch_size: int,
                    rng: random.Random) -> tuple[list[list[list[Example]]], list[list[Example]]]:
    """Steps of whole ``units`` taken in length order, each unit placed whole into one of the
    step's ``micro_batches`` micro-batches of ``batch_size`` (:func:`_place`); a step closes when
    the next unit has no room left in it, or when it is full. (The closed steps in shuffled
    order, the units of the last, unfilled one.)"""
    steps, current, bins = [], [], _empty(micro_batches)
    for unit in sorted(units, key=lambda u: max(e.length for e in u)):
        if not _place(unit, bins, batch_size):
            steps.append(current)
            current, bins = [], _empty(micro_batches)
            _place(unit, bins, batch_size)  # a unit fits an empty step (ShardLoader checks the sizes)
        current.append(unit)
        if sum(map(len, bins)) == micro_batches * batch_size:
            steps.append(current)
            current, bins = [], _empty(micro_batches)
    rng.shuffle(steps)
    return steps, current


def _empty(micro_batches: int) -> list[list[Example]]:
    return [[] for _ in range(micro_batches)]


def cut_step(units: list[list[Example]], micro_batches: int, batch_size: int) -> list[list[Example]]:
    """A step's units (as :func:`_length_grouped` formed them) as ``micro_batches`` non-empty
    micro-batches of at most ``batch_size`` examples: each unit whole in the first micro-batch
    with room, a unit larger than a micro-batch spread evenly over consecutive ones. Where that
    leaves micro-batches empty (a step of fewer units than micro-batches), fuller ones are halved
    into them, at a change of prompt where they hold one, so every unit stays in consecutive
    micro-batches. The step holds at least ``micro_batches`` examples."""
    bins = _empty(micro_batches)
    for unit in units:
        _place(unit, bins, batch_size)
    full = [b for b in bins if b]
    while len(full) < micro_batches:
        i = max(range(len(full)), key=lambda j: (_prompt_change(full[j]) is not None, len(full[j])))
        cut = _prompt_change(full[i]) or len(full[i]) // 2
        full[i : i + 1] = [full[i][:cut], full[i][cut:]]
    return full


def _prompt_change(examples: list[Example]) -> int | None:
    """The index nearest the middle of ``examples`` where the prompt changes, or None."""
    changes = [i for i in range(1, len(examples)) if examples[i].prompt_id != examples[i - 1].prompt_id]
    return min(changes, key=lambda i: abs(2 * i - len(examples)), default=None)


def _place(unit: list[Example], bins: list[list[Example]], batch_size: int) -> bool:
    """Put ``unit`` whole into ``bins``: into the first with room, or, larger than ``batch_size``,
    evenly over the first run of empty ones it needs; False when it does not fit."""
    if len(unit) <= batch_size:
        target = next((b for b in bins if len(b) + len(unit) <= batch_size), None)
        if target is not None:
            target.extend(unit)
        return target is not None
    spans = -(-len(unit) // batch_size)
    first = next((i for i in range(len(bins) - spans + 1) if not any(bins[i : i + spans])), None)
    if first is not None:
        for target, run in zip(bins[first : first + spans], _even_runs(unit, spans)):
            target.extend(run)
    return first is not None


def _even_runs(items: list, n: int) -> list[list]:
    """``items`` in order as ``n`` consecutive runs whose sizes differ by at most one."""
    size, extra = divmod(len(items), n)
    bounds = np.cumsum([0] + [size + (i < extra) for i in range(n)]).tolist()
    return [items[a:b] for a, b in zip(bounds, bounds[1:])]


def collate(examples: list[Example], layout: str, pad: int) -> Batch:
    """Right-padded tensors of ``examples`` in ``layout`` (module docstring; KL rows are added by the loader)."""
    if layout == "paired":
        rows = [(e.prompt, e.completions[0]) for e in examples] + [(e.prompt, e.completions[1]) for e in examples]
    else:
        rows = [(e.prompt, e.completions[0]) for e in examples]
    batch = _padded(rows, pad, layout)
    if layout == "unpaired":
        batch.desirable = torch.tensor([bool(e.desirable) for e in examples])
    if layout == "grouped":
        batch.advantages = torch.tensor([e.advantage for e in examples], dtype=torch.float32)
    return batch


def _padded(rows: list[tuple[list[int], list[int]]], pad: int, layout: str) -> Batch:
    """A right-padded :class:`Batch` of (prompt ids, completion ids) rows."""
    width = max((len(p) + len(c) for p, c in rows), default=1)
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
    return Batch(input_ids, attention, completion, keys, layout)


def _row_key(prompt: list[int], completion: list[int]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray(prompt, dtype=np.int32).tobytes())
    h.update(b"|")
    h.update(np.asarray(completion, dtype=np.int32).tobytes())
    return h.digest()


class StepStream:
    """A loader's optimizer steps with look-ahead, starting at step ``start`` of the loader.

    ``peek(n)`` returns up to the next ``n`` steps without consuming them; ``numbered(first, n)``
    yields their micro-batches as ``(step, index, batch)`` with steps numbered from ``first``;
    ``drain`` does the same while consuming (holding one step at a time).
    """

    def __init__(self, loader: ShardLoader, start: int = 0) -> None:
        self.loader = loader
        self._steps: Iterator[Step] = loader.iter_steps(start)
        self._ahead: list[Step] = []

    def peek(self, n: int) -> list[Step]:
        while len(self._ahead) < n:
            step = next(self._steps, None)
            if step is None:
                break
            self._ahead.append(step)
        return self._ahead[:n]

    def next(self) -> Step | None:
        return self._ahead.pop(0) if self.peek(1) else None

    def numbered(self, first: int, n: int) -> Iterator[tuple[int, int, Batch]]:
        for offset, step in enumerate(self.peek(n)):
            yield from ((first + offset, i, b) for i, b in enumerate(step.batches))

    def drain(self, first: int, n: int) -> Iterator[tuple[int, int, Batch]]:
        for offset in range(n):
            step = self.next()
            if step is None:
                return
            yield from ((first + offset, i, b) for i, b in enumerate(step.batches))

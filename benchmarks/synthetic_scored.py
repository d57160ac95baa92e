"""Synthetic ``scored`` versions of any size for the benchmarks, generated with numpy/pyarrow.

Texts are slices of one pool of random words (a Zipf-weighted vocabulary of 5,000 random
lowercase words), cut at arbitrary character offsets; a completion is a contiguous slice, so an
Arrow string column is built from one buffer and an offsets array without Python strings.
Rewards: 30% of prompts get 0/1 rewards (many groups are flat), the rest uniform [0, 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from humanline_data.schema import MESSAGES, prompt_id
from humanline_data.store import write_version

POOL_WORDS = 3_000_000
VOCABULARY = 5_000


def word_pool(rng: np.random.Generator) -> np.ndarray:
    """~20 MB of ASCII random words separated by spaces, as a uint8 array."""
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    vocab = ["".join(map(chr, rng.choice(letters, rng.integers(2, 11)))) for _ in range(VOCABULARY)]
    weights = 1.0 / np.arange(1, VOCABULARY + 1)
    ids = rng.choice(VOCABULARY, POOL_WORDS, p=weights / weights.sum())
    return np.frombuffer(" ".join(vocab[i] for i in ids).encode(), dtype=np.uint8)


def text_column(pool: np.ndarray, lengths: np.ndarray, rng: np.random.Generator) -> pa.StringArray:
    """Strings of the given lengths (chars) cut from the pool, starting at a random offset."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    start = int(rng.integers(len(pool)))
    reps = -(-(start + int(offsets[-1])) // len(pool))
    data = np.tile(pool, reps)[start : start + int(offsets[-1])]
    return pa.StringArray.from_buffers(len(lengths), pa.py_buffer(offsets), pa.py_buffer(data))


def write_synthetic_scored(
    out: Path,
    prompts: int,
    samples: int,
    completion_chars: tuple[int, int],
    prompt_chars: int,
    seed: int = 0,
    chunk_prompts: int = 25_000,
) -> Path:
    """Write a scored version of ``prompts * samples`` rows to ``out``; return its path."""
    rng = np.random.default_rng(seed)
    pool = word_pool(rng)
    pool_text = pool.tobytes().decode()
    with write_version(out, "scored", params={"synthetic": True, "seed": seed}) as writer:
        for first in range(0, prompts, chunk_prompts):
            count = min(chunk_prompts, prompts - first)
            writer.write(_chunk(pool, pool_text, first, count, samples, completion_chars, prompt_chars, rng))
    return writer.path


def _chunk(pool, pool_text, first, count, samples, completion_chars, prompt_chars, rng) -> pa.Table:
    starts = rng.integers(0, len(pool_text) - prompt_chars, count)
    contents = [f"Question {first + i}: {pool_text[s:s + prompt_chars]}" for i, s in enumerate(starts)]
    messages = [[{"role": "user", "content": c}] for c in contents]
    ids = pa.array([prompt_id(m) for m in messages])
    per_prompt = np.repeat(np.arange(count), samples)
    rows = count * samples
    lengths = rng.integers(completion_chars[0], completion_chars[1] + 1, rows)
    binary = np.repeat(rng.random(count) < 0.3, samples)
    rewards = np.where(binary, rng.integers(0, 2, rows).astype(float), rng.random(rows))
    return pa.table({
        "prompt_id": ids.take(per_prompt),
        "messages": pa.array(messages, MESSAGES).take(per_prompt),
        "source": pa.array(["synthetic"] * rows),
        "split": pa.array(["train"] * rows),
        "sample_idx": pa.array(np.tile(np.arange(samples, dtype=np.int32), count)),
        "completion": text_column(pool, lengths, rng),
        "completion_tokens": pa.array((lengths // 4).astype(np.int32)),
        "finish_reason": pa.array(np.where(rng.random(rows) < 0.05, "length", "stop")),
        "generator": pa.array(["synthetic"] * rows),
        "reward": pa.array(rewards),
        "scorer": pa.array(["synthetic"] * rows),
    })

"""Shared fixtures: offline environment, the real data in ../shared/data, a tiny random model.

The tiny model is a 2-layer Llama with SmolLM2's real tokenizer and chat template (shipped in
tests/fixtures/smollm2_tokenizer), randomly initialised from a config with a fixed seed, so unit
tests exercise real transformers code in seconds. Tests marked ``slow`` use the embedded 135M
model; they run in CI too (the suite stays under its time budget).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TOKENIZER_DIR = ROOT / "tests" / "fixtures" / "smollm2_tokenizer"
VOCAB = 49152  # the SmolLM2 tokenizer's vocabulary: the tiny model's and the embedded model's


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


def make_tiny_model(path: Path, seed: int = 0, layers: int = 2, hidden: int = 64) -> Path:
    """Save a randomly initialised tiny Llama + SmolLM2 tokenizer at ``path``; return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    return save_with_tokenizer(LlamaForCausalLM(config).to(torch.float32), path)


def save_with_tokenizer(model, path: Path) -> Path:
    """Save ``model`` at ``path`` with the SmolLM2 tokenizer files; return ``path``."""
    model.save_pretrained(path)
    for f in TOKENIZER_DIR.iterdir():
        shutil.copy(f, path / f.name)
    return path


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` by relative path (to show nothing there changed)."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """Path of a tiny random model folder (shared by the session; do not modify it)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    """The real embedded default model (SmolLM2-135M-Instruct), converted once into the cache."""
    from humanline_data.models import EMBEDDED_MODEL, resolve_model

    return resolve_model(EMBEDDED_MODEL)


def rows_batch(rows: list[tuple[int, int]], prompt_lengths: list[int], seed: int, pad_id: int = 2):
    """Right-padded (input_ids, attention_mask, completion_mask) of ``rows`` = (prompt index,
    completion length); rows naming the same prompt index share its random tokens."""
    import torch

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g) for n in prompt_lengths]
    T = max(len(prompts[p]) + c for p, c in rows) + 2
    input_ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attention = torch.zeros(len(rows), T, dtype=torch.long)
    completion = torch.zeros(len(rows), T, dtype=torch.bool)
    for r, (p, c) in enumerate(rows):
        n = len(prompts[p])
        input_ids[r, :n] = prompts[p]
        input_ids[r, n : n + c] = torch.randint(3, VOCAB, (c,), generator=g)
        attention[r, : n + c] = 1
        completion[r, n : n + c] = True
    return input_ids, attention, completion

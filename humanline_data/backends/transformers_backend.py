"""Sampling with transformers: batched, left-padded ``model.generate`` in float32.

Every sequence (prompt ``i`` x sample ``j``) draws its random numbers from its own
``torch.Generator`` seeded with ``seeds[i][j]``, so a sample does not depend on which other
sequences share its batch. This is done by :class:`SeededSampler`, a logits processor that
applies temperature and top-p, samples one token per row by inverse-CDF with the row's generator,
adds that token's log-prob to the row's running sum, and hands ``generate`` a one-hot score
row so that its greedy selection picks exactly the sampled token.

Each distinct prompt is run through the model once (all but its last token, into a key/value
cache that is then repeated for its samples), not once per sample: with n samples per prompt
the prompt costs 1/n of a batched prefill, which dominates a short completion's cost on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from humanline_data.backends import GenerationError, Sample, SamplingParams, prompt_token_ids, regroup


NUCLEUS_CANDIDATES = 512  # tokens sorted first when cutting the top-p nucleus


class SeededSampler:
    """Logits processor: per-row seeded sampling with temperature / top-p (temperature 0 =
    argmax). After generation, ``logprob_sum[r]`` (float32 tensor, shape [rows]) holds the sum
    of row ``r``'s sampled-token log-probs up to and including its first eos."""

    def __init__(self, seeds: list[int], params: SamplingParams, eos_ids: list[int]) -> None:
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = params.temperature
        self.top_p = params.top_p
        self.eos_ids = torch.tensor(eos_ids)
        self.logprob_sum = torch.zeros(len(seeds), dtype=torch.float32)
        self.done = torch.zeros(len(seeds), dtype=torch.bool)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        if self.temperature == 0:
            logp = torch.log_softmax(scores, dim=-1)
            tokens = scores.argmax(dim=-1)
        else:
            logp = torch.log_softmax(self._nucleus(scores / self.temperature), dim=-1)
            probs = logp.exp()
            cdf = probs.cumsum(dim=-1)
            u = torch.cat([torch.rand(1, generator=g) for g in self.generators])
            u = u * cdf[:, -1]  # keep u inside the cdf despite rounding
            tokens = torch.searchsorted(cdf, u[:, None]).squeeze(1).clamp_(max=scores.shape[-1] - 1)
        chosen = logp.gather(1, tokens[:, None]).squeeze(1)
        self.logprob_sum += torch.where(self.done, torch.zeros_like(chosen), chosen)
        self.done |= torch.isin(tokens, self.eos_ids)
        onehot = torch.full_like(scores, float("-inf"))
        onehot.scatter_(1, tokens[:, None], 0.0)
        return onehot

    def _nucleus(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` with every token outside the top-p nucleus (the fewest most likely tokens
        whose probability reaches ``top_p``) set to -inf; the most likely token is always kept.
        Sorts only the top :data:`NUCLEUS_CANDIDATES` tokens unless some row's nucleus is wider."""
        if self.top_p >= 1.0:
            return logits
        probs = logits.softmax(dim=-1)
        top, order = probs.topk(min(NUCLEUS_CANDIDATES, probs.shape[-1]), dim=-1)
        if bool((top.sum(dim=-1) < self.top_p).any()):
            top, order = probs.sort(dim=-1, descending=True)
        keep_sorted = top.cumsum(dim=-1) - top < self.top_p
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, order, keep_sorted)
        return logits.masked_fill(~keep, float("-inf"))


class TransformersBackend:
    """Loads ``model`` (a local HF folder) on CPU in float32 and samples with ``generate``;
    ``tokenizer`` is the model's (see :func:`humanline_data.backends.load_tokenizer`)."""

    name = "transformers"

    def __init__(self, model: Path, tokenizer) -> None:
        from transformers import AutoModelForCausalLM

        self.path = Path(model)
        self.tokenizer = tokenizer
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32).eval()
        self.eos_ids = _eos_ids(self.tokenizer, self.model.generation_config)
        if not self.eos_ids:
            raise GenerationError(f"model {self.path}: no eos token in the tokenizer or generation config")
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]

    def versions(self) -> dict[str, str]:
        import transformers

        return {"transformers": transformers.__version__, "torch": torch.__version__}

    def close(self) -> None:
        self.model = None

    @torch.no_grad()
    def load_weights(self, weights: dict) -> None:
        """Copy ``weights`` into the loaded model (every parameter and buffer named, none unknown)."""
        self.model.load_state_dict(weights, strict=True)

    @torch.inference_mode()
    def generate(
        self, prompts: list[list[dict]], seeds: list[list[int]], params: SamplingParams
    ) -> list[list[Sample]]:
        from transformers import GenerationConfig, LogitsProcessorList

        ids = prompt_token_ids(self.tokenizer, prompts)
        rows = [(i, seed) for i in range(len(prompts)) for seed in seeds[i]]
        if not rows:
            return [[] for _ in prompts]
        sampled = sorted({i for i, _ in rows})  # prompts with at least one sample
        prompt_ids, prompt_mask = left_pad([ids[i] for i in sampled], self.pad_id)
        width = prompt_ids.shape[1]
        row_of = {i: r for r, i in enumerate(sampled)}
        expand = torch.tensor([row_of[i] for i, _ in rows])
        cache = self._prefill(prompt_ids[:, :-1], prompt_mask[:, :-1], expand)
        input_ids, attention = prompt_ids[expand], prompt_mask[expand]
        sampler = SeededSampler([seed for _, seed in rows], params, self.eos_ids)
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=False,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
        )
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            past_key_values=cache,
            generation_config=config,
            logits_processor=LogitsProcessorList([sampler]),
        )
        samples = [self._sample(out[r, width:].tolist(), float(sampler.logprob_sum[r])) for r in range(len(rows))]
        return regroup(samples, seeds)

    def _prefill(self, prompt_ids: torch.Tensor, mask: torch.Tensor, expand: torch.Tensor):
        """Key/value cache of the left-padded ``prompt_ids`` ([prompts, width - 1]: every prompt
        but its last token; ``mask`` 1 on real tokens), its rows then repeated as ``expand``
        ([rows]: the prompt row of each sample) says; None when no prompt token is left to cache."""
        from transformers import DynamicCache

        if prompt_ids.shape[1] == 0:
            return None
        cache = DynamicCache(config=self.model.config)
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)  # as generate numbers left-padded rows
        self.model(input_ids=prompt_ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
        cache.reorder_cache(expand)
        return cache

    def _sample(self, new_tokens: list[int], logprob_sum: float) -> Sample:
        stop = next((k for k, t in enumerate(new_tokens) if t in self.eos_ids), None)
        kept = new_tokens if stop is None else new_tokens[: stop + 1]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Sample(text, len(kept), "length" if stop is None else "stop", logprob_sum)


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` of token ids right-aligned in one batch: (ids [rows, longest], mask [rows, longest],
    1 on real tokens, 0 on the ``pad_id`` padding at the left)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, tokens in enumerate(rows):
        ids[r, width - len(tokens):] = torch.tensor(tokens)
        mask[r, width - len(tokens):] = 1
    return ids, mask


def _eos_ids(tokenizer, generation_config) -> list[int]:
    """Token ids that end a completion: the tokenizer's eos and the generation config's."""
    ids = [tokenizer.eos_token_id]
    configured = getattr(generation_config, "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured]
    return sorted({i for i in ids if i is not None})

"""Per-token log-probabilities of completion tokens, without materialising full-vocabulary logits.

``completion_logprobs`` runs the model's base transformer once to get hidden states, keeps only
the rows that predict completion tokens, and applies the LM head to chunks of those rows, taking
the log-softmax in float32 per chunk. With gradient enabled, each chunk's head is checkpointed
(``recompute=True``): its ``[chunk, vocab]`` logits are recomputed in the backward pass instead
of being stored, so the extra memory of the head is one chunk of logits at any time.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from humanline_data.errors import HumanlineError


def _head_logps(head: torch.nn.Module, softcap: float | None, hidden: torch.Tensor, labels: torch.Tensor):
    """log p(labels) [n] (float32, or float64 for a float64 model) from hidden rows [n, H] through the LM head."""
    logits = head(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.gather(-1, labels[:, None]).squeeze(-1) - logits.logsumexp(-1)


def completion_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    chunk_tokens: int = 4096,
    recompute: bool = True,
) -> torch.Tensor:
    """Log-probs [B, T] float32 (float64 for a float64 model) of a causal LM: entry (b, t) = log p(input_ids[b, t] | input_ids[b, :t]).

    ``input_ids``/``attention_mask``/``completion_mask`` are [B, T], right-padded; entries off
    ``completion_mask`` are exactly 0. The LM head (tied or not) runs on at most
    ``chunk_tokens`` rows at a time. Works with gradient (policy) and under ``torch.no_grad``
    (reference); ``recompute`` checkpoints each head chunk when gradient is on.
    """
    completion_mask = completion_mask.bool()
    if not (input_ids.shape == attention_mask.shape == completion_mask.shape):
        raise HumanlineError(
            f"input_ids {tuple(input_ids.shape)}, attention_mask {tuple(attention_mask.shape)} and "
            f"completion_mask {tuple(completion_mask.shape)} must have the same [B, T] shape"
        )
    if bool(completion_mask[:, 0].any()):
        raise HumanlineError("a completion token at position 0 has no context to predict it from")

    hidden = model.get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state
    targets = completion_mask[:, 1:]  # position t-1 predicts token t
    rows = hidden[:, :-1][targets]  # [N, H]
    labels = input_ids[:, 1:][targets]  # [N]

    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    use_checkpoint = recompute and torch.is_grad_enabled() and rows.requires_grad
    chunks = []
    for start in range(0, rows.shape[0], chunk_tokens):
        h, y = rows[start : start + chunk_tokens], labels[start : start + chunk_tokens]
        if use_checkpoint:
            chunks.append(checkpoint(_head_logps, head, softcap, h, y, use_reentrant=False))
        else:
            chunks.append(_head_logps(head, softcap, h, y))

    dtype = torch.promote_types(hidden.dtype, torch.float32)
    out = torch.zeros(input_ids.shape, dtype=dtype, device=hidden.device)
    if chunks:
        picked = torch.zeros_like(completion_mask)
        picked[:, 1:] = targets
        out = out.masked_scatter(picked, torch.cat(chunks))
    return out

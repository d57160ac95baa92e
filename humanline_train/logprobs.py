"""Per-token log-probabilities of completion tokens, without materialising full-vocabulary logits.

``completion_logprobs`` runs the model's base transformer to get hidden states, keeps only the
rows that predict completion tokens, and applies the LM head to chunks of those rows, taking the
log-softmax in float32 per chunk. With gradient enabled, each chunk's head is checkpointed
(``recompute=True``): its ``[chunk, vocab]`` logits are recomputed in the backward pass instead
of being stored, so the extra memory of the head is one chunk of logits at any time.

``forward_tokens`` trades batch width for padding: the rows are sorted by length and run in
groups of at most that many padded tokens, each group cut to its own longest row, so little
compute goes to padding (on CPU, where a narrow batch costs nothing, this is the faster choice;
on an accelerator one wide forward usually is). The values are the same either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from humanline_data.errors import HumanlineError


def _head_logps(head: torch.nn.Module, softcap: float | None, hidden: torch.Tensor, labels: torch.Tensor):
    """log p(labels) [n] (float32, or float64 for a float64 model) from hidden rows [n, H] through the LM head."""
    logits = head(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.gather(-1, labels[:, None]).squeeze(-1) - logits.logsumexp(-1)


def _forward_logprobs(model, input_ids, attention_mask, completion_mask, chunk_tokens: int, recompute: bool):
    """completion_logprobs of one padded batch in one forward of the base transformer."""
    hidden = model.get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state
    targets = completion_mask[:, 1:]  # position t-1 predicts token t
    rows = hidden[:, :-1][targets]  # [N, H]
    labels = input_ids[:, 1:][targets]  # [N]

    head = model.get_output_embeddings()
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    use_checkpoint = recompute and torch.is_grad_enabled() and rows.requires_grad
    chunks = []
    for start in range(0, rows.shape[0], chunk_tokens):
        h, y = rows[start : start + chunk_tokens], labels[start : start + chunk_tokens]
        if use_checkpoint:
            chunks.append(checkpoint(_head_logps, head, softcap, h, y, use_reentrant=False))
        else:
            chunks.append(_head_logps(head, softcap, h, y))

    out = torch.zeros(input_ids.shape, dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
    if chunks:
        picked = torch.zeros_like(completion_mask)
        picked[:, 1:] = targets
        out = out.masked_scatter(picked, torch.cat(chunks))
    return out


def _length_groups(lengths: list[int], forward_tokens: int | None) -> list[list[int]]:
    """Row indices grouped (shortest first) so that rows x longest row <= forward_tokens (>= 1 row each)."""
    if forward_tokens is None:
        return [list(range(len(lengths)))]
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if groups and (len(groups[-1]) + 1) * lengths[i] <= forward_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def completion_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    chunk_tokens: int = 4096,
    recompute: bool = True,
    forward_tokens: int | None = None,
) -> torch.Tensor:
    """Log-probs [B, T] float32 (float64 for a float64 model) of a causal LM: entry (b, t) =
    log p(input_ids[b, t] | input_ids[b, :t]) on ``completion_mask``, exactly 0 elsewhere.

    ``input_ids``/``attention_mask``/``completion_mask`` are [B, T] and right-padded. The LM head
    (tied or not) runs on at most ``chunk_tokens`` rows at a time; ``recompute`` checkpoints each
    head chunk when gradient is on. ``forward_tokens`` (None: the whole batch in one forward)
    splits the batch into length-sorted groups of at most that many padded tokens. Works with
    gradient (policy) and under ``torch.no_grad`` (reference).
    """
    completion_mask = completion_mask.bool()
    if not (input_ids.shape == attention_mask.shape == completion_mask.shape):
        raise HumanlineError(
            f"input_ids {tuple(input_ids.shape)}, attention_mask {tuple(attention_mask.shape)} and "
            f"completion_mask {tuple(completion_mask.shape)} must have the same [B, T] shape"
        )
    if bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
        raise HumanlineError("attention_mask must be right-padded (ones, then zeros, in every row)")
    if bool((completion_mask & ~attention_mask.bool()).any()):
        raise HumanlineError("completion_mask marks a token that attention_mask marks as padding")
    if bool(completion_mask[:, 0].any()):
        raise HumanlineError("a completion token at position 0 has no context to predict it from")

    lengths = attention_mask.sum(-1).tolist()
    groups = _length_groups(lengths, forward_tokens)
    outs = []
    for group in groups:
        rows = torch.tensor(group, device=input_ids.device)
        T = max(max(lengths[i] for i in group), 1)
        out = _forward_logprobs(
            model, input_ids[rows, :T], attention_mask[rows, :T], completion_mask[rows, :T], chunk_tokens, recompute
        )
        outs.append(F.pad(out, (0, input_ids.shape[1] - T)))
    order = torch.tensor([i for g in groups for i in g], device=input_ids.device)
    return torch.cat(outs)[torch.argsort(order)]

"""Per-token log-probabilities of completion tokens, without materialising full-vocabulary logits.

``completion_logprobs`` runs the model's base transformer to get hidden states, keeps only the
rows that predict completion tokens, and applies the LM head to chunks of those rows, taking the
log-softmax in float32 per chunk. With gradient enabled, each chunk's head is checkpointed
(``recompute=True``): its ``[chunk, vocab]`` logits are recomputed in the backward pass instead
of being stored, so the extra memory of the head is one chunk of logits at any time.

``share_prompts``: rows that repeat a prompt (DPO's chosen and rejected, KTO's example and its
mismatched KL row, a GRPO group) run that prompt once: a forward of the distinct prompts fills
a KV cache, the cache is indexed out to every row, and a second forward runs only the completion
tokens against it (positions continue after each row's own prompt; gradient flows through the
cache into the prompt forward). Same values up to float rounding, minus the repeated prompt
compute. It applies when some prompt repeats and every row is prompt + one contiguous
completion to its end; otherwise (or under gradient checkpointing, which drops the cache) the
rows run whole.

``forward_tokens`` trades batch width for padding: the rows are sorted by length and run in
groups of at most that many padded tokens, each group cut to its own longest row, so little
compute goes to padding (on CPU, where a narrow batch costs nothing, this is the faster choice;
on an accelerator one wide forward usually is). The values are the same either way.

``LogprobModel`` wraps a causal LM so that its ``forward`` *is* ``completion_logprobs``: the
trainer hands that module to ``accelerator.prepare``, so a DDP / FSDP / DeepSpeed wrapper sees
every forward (gradient sync, parameter gathering) although only the base transformer and the
LM head are called inside.
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


def _rows_logprobs(model, rows: torch.Tensor, labels: torch.Tensor, chunk_tokens: int, recompute: bool) -> torch.Tensor:
    """log p(labels) [N] from hidden rows [N, H] through the LM head, ``chunk_tokens`` rows at a time."""
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
    return torch.cat(chunks) if chunks else rows.new_zeros(0, dtype=torch.promote_types(rows.dtype, torch.float32))


def _forward_logprobs(model, input_ids, attention_mask, completion_mask, chunk_tokens: int, recompute: bool):
    """completion_logprobs of one padded batch in one forward of the base transformer."""
    hidden = model.get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state
    targets = completion_mask[:, 1:]  # position t-1 predicts token t
    logps = _rows_logprobs(model, hidden[:, :-1][targets], input_ids[:, 1:][targets], chunk_tokens, recompute)
    out = torch.zeros(input_ids.shape, dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
    picked = torch.zeros_like(completion_mask)
    picked[:, 1:] = targets
    return out.masked_scatter(picked, logps)


def _prompt_families(input_ids, attention_mask, completion_mask) -> list[list[int]] | None:
    """Row indices grouped by identical prompt (first appearance order) when some prompt repeats
    and every row is prompt + one contiguous completion to its end; else None."""
    lengths = attention_mask.sum(-1)
    starts = lengths - completion_mask.sum(-1)  # first completion position = prompt length
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    contiguous = (positions >= starts[:, None]) & (positions < lengths[:, None])
    if not torch.equal(contiguous, completion_mask) or bool((starts == lengths).any()):
        return None
    families: dict[tuple[int, ...], list[int]] = {}
    for r, (row, start) in enumerate(zip(input_ids.tolist(), starts.tolist())):
        families.setdefault(tuple(row[:start]), []).append(r)
    return list(families.values()) if len(families) < input_ids.shape[0] else None


def _family_groups(families: list[list[int]], starts: list[int], lengths: list[int], forward_tokens: int | None):
    """Families (shortest first) grouped so that prompts x longest prompt + rows x longest
    completion <= forward_tokens (>= 1 family each); one group when forward_tokens is None."""
    if forward_tokens is None:
        return [families]

    def padded(group: list[list[int]]) -> int:
        longest_prompt = max(starts[f[0]] for f in group)
        longest_completion = max(lengths[r] - starts[r] for f in group for r in f)
        return len(group) * longest_prompt + sum(len(f) for f in group) * longest_completion

    groups: list[list[list[int]]] = []
    for family in sorted(families, key=lambda f: padded([f])):
        if groups and padded(groups[-1] + [family]) <= forward_tokens:
            groups[-1].append(family)
        else:
            groups.append([family])
    return groups


def _shared_prompt_logprobs(model, input_ids, attention_mask, completion_mask, prompt_of_row: torch.Tensor,
                            chunk_tokens: int, recompute: bool) -> torch.Tensor:
    """completion_logprobs of rows whose prompts are ``prompt_of_row`` [N] (0..U-1, the first row
    of each holding it), each distinct prompt run once (see the module docstring)."""
    decoder = model.get_decoder()
    lengths = attention_mask.sum(-1)
    starts = lengths - completion_mask.sum(-1)
    first_rows = torch.stack([(prompt_of_row == u).nonzero()[0, 0] for u in range(int(prompt_of_row.max()) + 1)])
    prompt_len = starts[first_rows]  # [U]
    P = int(prompt_len.max())
    prompt_mask = (torch.arange(P, device=input_ids.device) < prompt_len[:, None]).long()
    prompts = decoder(input_ids=input_ids[first_rows, :P], attention_mask=prompt_mask, use_cache=True)
    cache = prompts.past_key_values
    cache.reorder_cache(prompt_of_row)  # [U, ...] -> one entry per row

    counts = lengths - starts
    C = int(counts.max())
    steps = torch.arange(C, device=input_ids.device)
    valid = steps < counts[:, None]  # [N, C]
    positions = starts[:, None] + steps  # each row's own positions after its prompt
    completion_ids = input_ids.gather(1, positions.clamp(max=input_ids.shape[1] - 1))
    hidden = decoder(
        input_ids=completion_ids, attention_mask=torch.cat([prompt_mask[prompt_of_row], valid.long()], dim=1),
        position_ids=positions, past_key_values=cache, use_cache=True,
    ).last_hidden_state  # [N, C, H]
    last_prompt = prompts.last_hidden_state[torch.arange(len(first_rows), device=input_ids.device), prompt_len - 1]
    predicting = torch.cat([last_prompt[prompt_of_row][:, None], hidden[:, :-1]], dim=1)  # entry t predicts token t
    logps = _rows_logprobs(model, predicting[valid], completion_ids[valid], chunk_tokens, recompute)
    out = torch.zeros(input_ids.shape, dtype=logps.dtype, device=input_ids.device)
    return out.masked_scatter(completion_mask, logps)


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
    share_prompts: bool = True,
) -> torch.Tensor:
    """Log-probs [B, T] float32 (float64 for a float64 model) of a causal LM: entry (b, t) =
    log p(input_ids[b, t] | input_ids[b, :t]) on ``completion_mask``, exactly 0 elsewhere.

    ``input_ids``/``attention_mask``/``completion_mask`` are [B, T] and right-padded. The LM head
    (tied or not) runs on at most ``chunk_tokens`` rows at a time; ``recompute`` checkpoints each
    head chunk when gradient is on. ``forward_tokens`` (None: the whole batch in one forward)
    splits the batch into length-sorted groups of at most that many padded tokens (with
    ``share_prompts``, groups of whole prompt families, counting each prompt once). Works with
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
    families = None
    if share_prompts and not getattr(model, "is_gradient_checkpointing", False):
        families = _prompt_families(input_ids, attention_mask, completion_mask)
    if families is None:  # (rows, None): rows run whole
        plan = [(group, None) for group in _length_groups(lengths, forward_tokens)]
    else:  # (rows, prompt of each row): a repeated prompt runs once
        starts = (attention_mask.sum(-1) - completion_mask.sum(-1)).tolist()
        plan = [([r for f in group for r in f], [u for u, f in enumerate(group) for _ in f])
                for group in _family_groups(families, starts, lengths, forward_tokens)]
    outs = []
    for group, prompt_of_row in plan:
        rows = torch.tensor(group, device=input_ids.device)
        T = max(max(lengths[i] for i in group), 1)
        args = (input_ids[rows, :T], attention_mask[rows, :T], completion_mask[rows, :T])
        if prompt_of_row is None:
            out = _forward_logprobs(model, *args, chunk_tokens, recompute)
        else:
            out = _shared_prompt_logprobs(model, *args, torch.tensor(prompt_of_row, device=input_ids.device),
                                          chunk_tokens, recompute)
        outs.append(F.pad(out, (0, input_ids.shape[1] - T)))
    order = torch.tensor([i for group, _ in plan for i in group], device=input_ids.device)
    return torch.cat(outs)[torch.argsort(order)]


class LogprobModel(torch.nn.Module):
    """``forward(input_ids, attention_mask, completion_mask)`` -> :func:`completion_logprobs` [B, T]
    of the causal LM ``model`` (kept as ``self.model``, so state-dict keys gain a ``model.`` prefix)."""

    def __init__(self, model: torch.nn.Module, chunk_tokens: int = 4096, forward_tokens: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.forward_tokens = forward_tokens

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
        return completion_logprobs(
            self.model, input_ids, attention_mask, completion_mask, self.chunk_tokens, forward_tokens=self.forward_tokens
        )

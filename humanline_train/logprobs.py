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

``layout="packed"`` removes padding altogether: the rows go into one row (batch dimension 1)
holding, per prompt family, the prompt once and then each completion of that family; position
ids restart per family and each completion's continue after its prompt (as in its whole row),
and a document mask lets a token see earlier tokens of its own segment and its family's prompt
only. So no position is padding and each distinct prompt runs once, in one forward, with or
without gradient checkpointing. The mask follows the model's attention implementation: a dense
``[1, 1, L, L]`` boolean mask under ``sdpa``, an additive one under ``eager`` (both O(L^2) memory:
for CPU and modest L), a flex-attention ``BlockMask`` under ``flex_attention`` (the GPU choice:
blocks no query sees are skipped). flash-attention's varlen kernel takes only disjoint
sequences, not this prompt-shared tree mask, so ``flash_attention_*`` is refused for packing.
Models with sliding-window or chunked layers are refused too (the one mask would be wrong for
them). ``forward_tokens`` then bounds the tokens of each packed row.

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

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from humanline_data.errors import HumanlineError


def _head_logps(head: torch.nn.Module, softcap: float | None, hidden: torch.Tensor, labels: torch.Tensor):
    """log p(labels) [n] (float32, or float64 for a float64 model) from hidden rows [n, H] through the LM head.

    Under autocast (``--precision bf16-mixed``) the head runs outside it, in its weights' dtype
    (float32 there), so the logits are not rounded to bf16 before the log-softmax."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        with torch.autocast(device, enabled=False):
            logits = head(hidden.to(next(head.parameters()).dtype))
    else:
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


def _greedy_groups(items: list, cost, limit: int | None) -> list[list]:
    """``items`` (cheapest alone first) cut into consecutive groups of ``cost(group) <= limit``
    (>= 1 item each); one group of all, in the given order, when ``limit`` is None."""
    if limit is None:
        return [list(items)]
    groups: list[list] = []
    for item in sorted(items, key=lambda i: cost([i])):
        if groups and cost(groups[-1] + [item]) <= limit:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def _family_groups(families: list[list[int]], starts: list[int], lengths: list[int], forward_tokens: int | None):
    """Families (shortest first) grouped so that prompts x longest prompt + rows x longest
    completion <= forward_tokens (>= 1 family each); one group when forward_tokens is None."""

    def padded(group: list[list[int]]) -> int:
        longest_prompt = max(starts[f[0]] for f in group)
        longest_completion = max(lengths[r] - starts[r] for f in group for r in f)
        return len(group) * longest_prompt + sum(len(f) for f in group) * longest_completion

    return _greedy_groups(families, padded, forward_tokens)


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
    return _greedy_groups(list(range(len(lengths))), lambda g: len(g) * max(lengths[i] for i in g), forward_tokens)


LAYOUTS = ("padded", "packed")
PACKED_ATTENTION = ("sdpa", "eager", "flex_attention")
# CPU kernels under which torch's compiled flex attention was checked against the dense mask. Compiled
# for AVX2 (ATEN_CPU_CAPABILITY=avx2 on an AVX-512 CPU, torch 2.13) it returned wrong values (max
# error ~2 on a toy document mask) or never returned; for no vector ISA torch refuses to compile it.
FLEX_CPU_CAPABILITIES = ("AVX512",)


@dataclass
class PackedRow:
    """Rows packed into one row of L tokens (module docstring): ``input_ids``/``position_ids``
    [1, L]; per token its ``family`` (prompt family), ``segment`` (the family's prompt or one
    completion tail) and ``is_prompt`` [L]; per scored token (N of them) the packed index of the
    hidden state ``predictor`` that predicts it, its ``label`` and its place (``row``, ``col``) in
    the [B, T] batch."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    family: torch.Tensor
    segment: torch.Tensor
    is_prompt: torch.Tensor
    predictor: torch.Tensor
    label: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor

    def allowed(self) -> torch.Tensor:
        """[L, L] boolean: query q may attend key k (causal, same family, own segment or prompt)."""
        q, k = slice(None), None
        causal = torch.ones(len(self.family), len(self.family), dtype=torch.bool, device=self.family.device).tril()
        same_family = self.family[q, k] == self.family[k, q]
        visible = (self.segment[q, k] == self.segment[k, q]) | self.is_prompt[k, q]
        return causal & same_family & visible


def pack_rows(input_ids: torch.Tensor, completion_mask: torch.Tensor, families: list[list[int]],
              starts: list[int], lengths: list[int]) -> PackedRow:
    """Pack ``families`` (row indices sharing ``input_ids[r, :starts[r]]``) of a right-padded
    batch: each family's prompt once, then each row's tokens ``starts[r]:lengths[r]``."""
    device = input_ids.device
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("ids", "pos", "family", "segment", "prompt",
                                                             "predictor", "row", "col")}
    at = segment = 0
    for f, family in enumerate(families):
        p = starts[family[0]]
        last_prompt = at + p - 1
        spans = [(family[0], 0, p, True)] + [(r, p, lengths[r], False) for r in family]
        for r, begin, end, is_prompt in spans:
            n = end - begin
            parts["ids"].append(input_ids[r, begin:end])
            parts["pos"].append(torch.arange(begin, end, device=device))
            parts["family"].append(torch.full((n,), f, device=device))
            parts["segment"].append(torch.full((n,), segment, device=device))
            parts["prompt"].append(torch.full((n,), is_prompt, device=device))
            if not is_prompt:
                j = completion_mask[r, begin:end].nonzero().squeeze(-1)  # scored tokens of the tail
                parts["predictor"].append(torch.where(j == 0, last_prompt, at + j - 1))
                parts["row"].append(torch.full_like(j, r))
                parts["col"].append(begin + j)
            at += n
            segment += 1
    cat = {k: torch.cat(v) for k, v in parts.items()}
    return PackedRow(cat["ids"][None], cat["pos"][None], cat["family"], cat["segment"], cat["prompt"],
                     cat["predictor"], input_ids[cat["row"], cat["col"]], cat["row"], cat["col"])


def _packed_mask(model, packed: PackedRow):
    """The attention mask of ``packed`` in the form the model's attention implementation takes."""
    implementation = model.config._attn_implementation
    if implementation == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        family, segment, is_prompt = packed.family, packed.segment, packed.is_prompt
        capability = torch.backends.cpu.get_cpu_capability()
        if family.device.type == "cpu" and capability not in FLEX_CPU_CAPABILITIES:
            raise HumanlineError(
                f"flex attention on this CPU ({capability} kernels): torch compiled below AVX-512 gave wrong "
                f"attention values here; use attention sdpa or eager on a CPU (the default), flex on a GPU")

        def visible(batch, head, q, k):
            return (k <= q) & (family[q] == family[k]) & ((segment[q] == segment[k]) | is_prompt[k])

        L = len(family)
        return create_block_mask(visible, None, None, L, L, device=family.device)
    allowed = packed.allowed()[None, None]
    if implementation == "sdpa":
        return allowed
    if implementation == "eager":
        return torch.zeros(allowed.shape, dtype=model.dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(model.dtype).min)
    raise HumanlineError(
        f"layout 'packed' needs attention {' / '.join(PACKED_ATTENTION)}; the model uses {implementation!r} "
        f"(flash-attention cannot express the shared-prompt mask): use layout 'padded'"
    )


def _check_packable(model) -> None:
    """Refuse models whose layers do not all use full causal attention (one mask would be wrong)."""
    config = model.config.get_text_config()
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"} or getattr(config, "attention_chunk_size", None):
        raise HumanlineError(
            f"layout 'packed' needs full attention in every layer; {config.model_type} has "
            f"{', '.join(sorted(kinds))}: use layout 'padded'"
        )


def _packed_logprobs(model, input_ids, completion_mask, families, starts, lengths, chunk_tokens, recompute):
    """(row, col, log-prob) [N] of the completion tokens of ``families`` in one packed forward."""
    packed = pack_rows(input_ids, completion_mask, families, starts, lengths)
    hidden = model.get_decoder()(
        input_ids=packed.input_ids, attention_mask=_packed_mask(model, packed),
        position_ids=packed.position_ids, use_cache=False,
    ).last_hidden_state[0]
    logps = _rows_logprobs(model, hidden[packed.predictor], packed.label, chunk_tokens, recompute)
    return packed.row, packed.col, logps


def _packed_plan(input_ids, attention_mask, completion_mask, share_prompts: bool, forward_tokens: int | None):
    """(families, starts, lengths) then groups of families of <= forward_tokens packed tokens each.

    A row's prompt is its tokens before its first completion token; rows without one are left
    out (their log-probs are all 0); with ``share_prompts`` rows of identical prompts form one
    family, else every row is its own."""
    lengths = attention_mask.sum(-1).tolist()
    scored = completion_mask.any(-1).tolist()
    starts = completion_mask.int().argmax(-1).tolist()
    families: dict[object, list[int]] = {}
    for r, row in enumerate(input_ids.tolist()):
        if scored[r]:
            families.setdefault(tuple(row[: starts[r]]) if share_prompts else r, []).append(r)

    def tokens(group: list[list[int]]) -> int:
        return sum(starts[f[0]] + sum(lengths[r] - starts[r] for r in f) for f in group)

    return _greedy_groups(list(families.values()), tokens, forward_tokens), starts, lengths


def completion_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    chunk_tokens: int = 4096,
    recompute: bool = True,
    forward_tokens: int | None = None,
    share_prompts: bool = True,
    layout: str = "padded",
) -> torch.Tensor:
    """Log-probs [B, T] float32 (float64 for a float64 model) of a causal LM: entry (b, t) =
    log p(input_ids[b, t] | input_ids[b, :t]) on ``completion_mask``, exactly 0 elsewhere.

    ``input_ids``/``attention_mask``/``completion_mask`` are [B, T] and right-padded. The LM head
    (tied or not) runs on at most ``chunk_tokens`` rows at a time; ``recompute`` checkpoints each
    head chunk when gradient is on. ``forward_tokens`` (None: the whole batch in one forward)
    splits the batch into length-sorted groups of at most that many padded tokens (with
    ``share_prompts``, groups of whole prompt families, counting each prompt once). Works with
    gradient (policy) and under ``torch.no_grad`` (reference). ``layout``: ``"padded"`` runs
    padded rows (sharing prompts through a KV cache), ``"packed"`` one padding-free row per group
    (module docstring); the output is the same [B, T] either way.
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
    if layout not in LAYOUTS:
        raise HumanlineError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if layout == "packed":
        return _completion_logprobs_packed(model, input_ids, attention_mask, completion_mask, chunk_tokens,
                                           recompute, forward_tokens, share_prompts)

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


def _completion_logprobs_packed(model, input_ids, attention_mask, completion_mask, chunk_tokens, recompute,
                                forward_tokens, share_prompts) -> torch.Tensor:
    """completion_logprobs with ``layout="packed"``: one packed forward per group of families."""
    _check_packable(model)
    groups, starts, lengths = _packed_plan(input_ids, attention_mask, completion_mask, share_prompts, forward_tokens)
    pieces = [_packed_logprobs(model, input_ids, completion_mask, families, starts, lengths, chunk_tokens, recompute)
              for families in groups]
    if not pieces:  # no completion token anywhere: run the padded path, which gives the zeros
        return completion_logprobs(model, input_ids, attention_mask, completion_mask, chunk_tokens, recompute)
    row, col, logps = (torch.cat(parts) for parts in zip(*pieces))
    return logps.new_zeros(input_ids.shape).index_put((row, col), logps)


class LogprobModel(torch.nn.Module):
    """``forward(input_ids, attention_mask, completion_mask)`` -> :func:`completion_logprobs` [B, T]
    of the causal LM ``model`` (kept as ``self.model``, so state-dict keys gain a ``model.`` prefix)."""

    def __init__(self, model: torch.nn.Module, chunk_tokens: int = 4096, forward_tokens: int | None = None,
                 layout: str = "padded") -> None:
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.forward_tokens = forward_tokens
        self.layout = layout

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
        return completion_logprobs(
            self.model, input_ids, attention_mask, completion_mask, self.chunk_tokens,
            forward_tokens=self.forward_tokens, layout=self.layout,
        )

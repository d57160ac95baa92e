"""completion_logprobs against log_softmax of the full model logits, on the tiny random Llama."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from humanline_data.errors import HumanlineError
from humanline_train.logprobs import completion_logprobs

from conftest import VOCAB, rows_batch
from tolerances import LOGPROB_SCALE, assert_close_fp32


@pytest.fixture(scope="module")
def model(tiny_model):
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    m.eval()
    return m


def _batch(prompt_lengths=(3, 5, 2), completion_lengths=(4, 1, 6), pad_id=2, seed=0):
    """Right-padded ids with per-row prompt/completion lengths; (input_ids, attention_mask, completion_mask)."""
    g = torch.Generator().manual_seed(seed)
    T = max(p + c for p, c in zip(prompt_lengths, completion_lengths)) + 1
    B = len(prompt_lengths)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention = torch.zeros(B, T, dtype=torch.long)
    completion = torch.zeros(B, T, dtype=torch.bool)
    for b, (p, c) in enumerate(zip(prompt_lengths, completion_lengths)):
        input_ids[b, : p + c] = torch.randint(3, VOCAB, (p + c,), generator=g)
        attention[b, : p + c] = 1
        completion[b, p : p + c] = True
    return input_ids, attention, completion


def _reference_logps(model, input_ids, attention, completion):
    """log_softmax (float64) of the full logits, gathered at the labels with explicit loops."""
    logp = torch.log_softmax(model(input_ids=input_ids, attention_mask=attention).logits.double(), -1)
    rows = []
    for b in range(input_ids.shape[0]):
        row = []
        for t in range(input_ids.shape[1]):
            row.append(logp[b, t - 1, input_ids[b, t]] if completion[b, t] else logp.new_zeros(()))
        rows.append(torch.stack(row))
    return torch.stack(rows)


SETTINGS = [(4096, True, None), (3, True, None), (2, False, None), (4096, True, 1), (3, True, 16)]


@pytest.mark.parametrize("chunk_tokens,recompute,forward_tokens", SETTINGS)
def test_values_equal_full_log_softmax(model, chunk_tokens, recompute, forward_tokens):
    batch = _batch()
    with torch.no_grad():
        want = _reference_logps(model, *batch)
    got = completion_logprobs(
        model, *batch, chunk_tokens=chunk_tokens, recompute=recompute, forward_tokens=forward_tokens
    )
    assert got.dtype == torch.float32 and got.shape == batch[0].shape
    assert_close_fp32(got, want, VOCAB, "log-probs", scale=LOGPROB_SCALE)
    assert torch.all(got[~batch[2]] == 0)


@pytest.mark.parametrize("chunk_tokens,recompute,forward_tokens", SETTINGS)
def test_gradients_equal_full_log_softmax(tiny_model, chunk_tokens, recompute, forward_tokens):
    """In float64 so that summation order (chunking) cannot hide a real difference."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float64).eval()
    batch = _batch(seed=2)
    weights = torch.randn(batch[0].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    model.zero_grad()
    (_reference_logps(model, *batch) * weights).sum().backward()
    want_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    got = completion_logprobs(
        model, *batch, chunk_tokens=chunk_tokens, recompute=recompute, forward_tokens=forward_tokens
    )
    (got * weights).sum().backward()
    for (name, p), want in zip(model.named_parameters(), want_grads):
        torch.testing.assert_close(p.grad, want, atol=1e-10, rtol=1e-8, msg=lambda m: f"gradient of {name}: {m}")
    # tied LM head: the embedding gradient holds both the input and the head contributions
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_no_grad_reference_and_row_independence(model):
    """Under no_grad nothing tracks gradient; a row's values do not depend on the other rows."""
    batch = _batch(prompt_lengths=(4, 2), completion_lengths=(3, 7), seed=3)
    with torch.no_grad():
        both = completion_logprobs(model, *batch)
        alone = completion_logprobs(model, *(x[:1, :7] for x in batch))
    assert not both.requires_grad
    assert_close_fp32(both[0, :7], alone[0], VOCAB, "log-probs of row 0", scale=LOGPROB_SCALE)
    assert torch.all(both[0, 7:] == 0)


def test_gradient_checkpointed_model_gives_the_same_gradients(tiny_model):
    batch = _batch(seed=4)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        if checkpointing:
            m.gradient_checkpointing_enable()
        m.train()
        completion_logprobs(m, *batch, chunk_tokens=4).sum().backward()
        grads.append({name: p.grad for name, p in m.named_parameters()})
    for name, want in grads[0].items():
        assert_close_fp32(grads[1][name], want, VOCAB, f"gradient of {name}")


def test_length_groups_bound_the_padded_tokens_of_each_forward():
    from humanline_train.logprobs import _length_groups

    lengths = [5, 9, 2, 4, 9, 3]
    assert _length_groups(lengths, None) == [[0, 1, 2, 3, 4, 5]]
    assert _length_groups(lengths, 1) == [[2], [5], [3], [0], [1], [4]]
    groups = _length_groups(lengths, 12)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert all(len(g) * max(lengths[i] for i in g) <= 12 for g in groups)
    assert groups == [[2, 5, 3], [0], [1], [4]]


def test_bad_inputs_are_one_line_errors(model):
    ids, attention, completion = _batch()
    with pytest.raises(HumanlineError, match="same \\[B, T\\] shape"):
        completion_logprobs(model, ids, attention[:, :-1], completion)
    left_padded = attention.flip(-1)
    with pytest.raises(HumanlineError, match="right-padded"):
        completion_logprobs(model, ids, left_padded, completion)
    beyond = completion.clone()
    beyond[1, -1] = True
    with pytest.raises(HumanlineError, match="marks as padding"):
        completion_logprobs(model, ids, attention, beyond)
    completion = completion.clone()
    completion[0, 0] = True
    with pytest.raises(HumanlineError, match="position 0"):
        completion_logprobs(model, ids, attention, completion)


def _shared_prompt_batch(pad_id=2):
    """DPO-like rows: prompts 0, 1, 2 (lengths 3, 5, 2), then prompt 0, 1, 2 again with other
    completions, plus a row with a prompt of its own; right-padded."""
    return rows_batch([(0, 4), (1, 1), (2, 6), (0, 2), (1, 7), (2, 3), (3, 2)], [3, 5, 2, 4], seed=7, pad_id=pad_id)


def test_shared_prompts_give_the_full_log_softmax_values_and_the_same_gradients(tiny_model):
    from humanline_train.logprobs import _family_groups, _prompt_families

    batch = _shared_prompt_batch()
    families = _prompt_families(*batch)
    assert families == [[0, 3], [1, 4], [2, 5], [6]]
    assert _prompt_families(*_batch()) is None  # no prompt repeats: nothing to share
    starts, lengths = [3, 5, 2, 3, 5, 2, 4], [7, 6, 8, 5, 12, 5, 6]
    assert _family_groups(families, starts, lengths, None) == [families]
    # padded sizes alone: [6] 4+2, [0,3] 3+2x4, [2,5] 2+2x6, [1,4] 5+2x7; [6]+[0,3]: 2x4 + 3x4 = 20
    assert _family_groups(families, starts, lengths, 20) == [[[6], [0, 3]], [[2, 5]], [[1, 4]]]
    weights = torch.randn(batch[0].shape, generator=torch.Generator().manual_seed(1))
    results = {}
    for share, forward_tokens in ((False, None), (True, None), (True, 20)):
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).train()
        got = completion_logprobs(m, *batch, chunk_tokens=5, share_prompts=share, forward_tokens=forward_tokens)
        (got * weights).sum().backward()
        results[share, forward_tokens] = got.detach(), {name: p.grad for name, p in m.named_parameters()}
    with torch.no_grad():
        want = _reference_logps(m, *batch)
    for key in ((True, None), (True, 20)):
        assert_close_fp32(results[key][0], want, VOCAB, f"log-probs {key}", scale=LOGPROB_SCALE)
        assert torch.equal(results[key][0] == 0, ~batch[2])  # exactly 0 off the completion tokens
        for name, grad in results[False, None][1].items():
            assert_close_fp32(results[key][1][name], grad, VOCAB, f"gradient of {name} {key}")

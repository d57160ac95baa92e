"""completion_logprobs(layout="packed") against the padded forward, on the tiny random Llama (float32, CPU)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from humanline_data.errors import HumanlineError
from humanline_train.logprobs import FLEX_CPU_CAPABILITIES, LogprobModel, completion_logprobs, pack_rows

from conftest import VOCAB, rows_batch
from tolerances import LOGPROB_SCALE, assert_close_fp32


BATCHES = {
    # chosen_0..2 then rejected_0..2 (prompts repeat once each) and a row with a prompt of its own
    "dpo-pairs": lambda: rows_batch([(0, 4), (1, 1), (2, 6), (0, 2), (1, 7), (2, 3), (3, 2)], [3, 5, 2, 4], 7),
    "grpo-group": lambda: rows_batch([(0, 5), (0, 2), (0, 7), (0, 1)], [6], 8),
    "unshared": lambda: rows_batch([(0, 4), (1, 1), (2, 6)], [3, 5, 2], 9),
}


def _policy(tiny_model, attention="sdpa", checkpointing=False):
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=attention)
    if checkpointing:
        m.gradient_checkpointing_enable()
    return m.train()


def _logps_and_grads(model, batch, **kwargs):
    weights = torch.randn(batch[0].shape, generator=torch.Generator().manual_seed(1)).to(batch[0].device)
    model.zero_grad(set_to_none=True)
    got = completion_logprobs(model, *batch, chunk_tokens=5, **kwargs)
    (got * weights).sum().backward()
    return got.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def _assert_same(got, want):
    (values, grads), (want_values, want_grads) = got, want
    assert_close_fp32(values, want_values, VOCAB, "log-probs", scale=LOGPROB_SCALE)
    for name, grad in want_grads.items():
        assert_close_fp32(grads[name], grad, VOCAB, f"gradient of {name}")


@pytest.mark.parametrize("name", BATCHES)
@pytest.mark.parametrize("forward_tokens", [None, 12])
def test_packed_values_and_gradients_equal_the_padded_forward(tiny_model, name, forward_tokens):
    """forward_tokens=12 splits every batch into several packed rows (one family at least each)."""
    batch = BATCHES[name]()
    model = _policy(tiny_model)
    want = _logps_and_grads(model, batch, share_prompts=False)
    got = _logps_and_grads(model, batch, layout="packed", forward_tokens=forward_tokens)
    _assert_same(got, want)
    assert torch.equal(got[0] == 0, ~batch[2])  # exactly 0 off the completion tokens


def test_packed_under_no_grad_and_through_logprob_model(tiny_model):
    batch = BATCHES["dpo-pairs"]()
    model = _policy(tiny_model).eval()
    with torch.no_grad():
        want = completion_logprobs(model, *batch)
        got = LogprobModel(model, layout="packed")(*batch)
    assert not got.requires_grad and got.dtype == torch.float32 and got.shape == batch[0].shape
    assert_close_fp32(got, want, VOCAB, "log-probs", scale=LOGPROB_SCALE)


def test_packed_under_gradient_checkpointing_gives_the_plain_gradients(tiny_model):
    batch = BATCHES["grpo-group"]()
    want = _logps_and_grads(_policy(tiny_model), batch, share_prompts=False)
    _assert_same(_logps_and_grads(_policy(tiny_model, checkpointing=True), batch, layout="packed"), want)


def test_eager_attention_takes_an_additive_mask(tiny_model):
    batch = BATCHES["dpo-pairs"]()
    want = _logps_and_grads(_policy(tiny_model), batch, share_prompts=False)
    _assert_same(_logps_and_grads(_policy(tiny_model, "eager"), batch, layout="packed"), want)


def test_flex_attention_takes_a_block_mask(tiny_model):
    """Values only: flex attention has no backward on CPU (compiles once, a few seconds). Below
    AVX-512 kernels torch's CPU flex attention is not trusted (logprobs.FLEX_CPU_CAPABILITIES):
    a packed forward under it is one error line there, before anything is compiled."""
    batch = BATCHES["dpo-pairs"]()
    flex = _policy(tiny_model, "flex_attention").eval()
    with torch.no_grad():
        if torch.backends.cpu.get_cpu_capability() not in FLEX_CPU_CAPABILITIES:
            with pytest.raises(HumanlineError, match="flex attention on this CPU"):
                completion_logprobs(flex, *batch, layout="packed")
            return
        want = completion_logprobs(_policy(tiny_model).eval(), *batch)
        got = completion_logprobs(flex, *batch, layout="packed")
    assert_close_fp32(got, want, VOCAB, "log-probs", scale=LOGPROB_SCALE)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex attention's backward needs a GPU")
def test_flex_attention_gradients_on_the_gpu(tiny_model):
    batch = tuple(x.cuda() for x in BATCHES["dpo-pairs"]())
    want = _logps_and_grads(_policy(tiny_model).cuda(), batch, share_prompts=False)
    _assert_same(_logps_and_grads(_policy(tiny_model, "flex_attention").cuda(), batch, layout="packed"), want)


def test_rows_without_completion_and_holes_in_a_completion(tiny_model):
    """A row with no completion token is left out of the pack (all 0); a completion mask with a
    hole still scores exactly its marked tokens."""
    ids, attention, completion = BATCHES["dpo-pairs"]()
    completion[3] = False
    completion[4, 7] = False  # row 4: prompt of 5, completion 5..11, hole at 7
    batch = ids, attention, completion
    model = _policy(tiny_model)
    _assert_same(_logps_and_grads(model, batch, layout="packed"), _logps_and_grads(model, batch, share_prompts=False))


def test_packed_row_holds_no_padding_and_each_prompt_once():
    ids, attention, completion = BATCHES["dpo-pairs"]()
    lengths = attention.sum(-1).tolist()
    starts = [3, 5, 2, 3, 5, 2, 4]
    packed = pack_rows(ids, completion, [[0, 3], [1, 4], [2, 5], [6]], starts, lengths)
    L = packed.input_ids.shape[1]
    assert L == (3 + 5 + 2 + 4) + int(completion.sum())  # distinct prompts + completion tokens
    assert L < int(attention.sum()) < ids.numel()  # fewer than the rows run whole, and no padding
    # family 0 = prompt 0 (3 tokens), then row 0's 4 and row 3's 2 completion tokens, positions continuing
    assert packed.position_ids[0, :9].tolist() == [0, 1, 2, 3, 4, 5, 6, 3, 4]
    assert packed.input_ids[0, :9].tolist() == ids[0, :7].tolist() + ids[3, 3:5].tolist()
    assert torch.equal(packed.label, ids[packed.row, packed.col])


def test_packed_mask_lets_a_completion_see_its_prompt_and_itself_only():
    ids, _, completion = rows_batch([(0, 2), (0, 1), (1, 1)], [2, 1], 3)
    packed = pack_rows(ids, completion, [[0, 1], [2]], [2, 2, 1], [4, 3, 2])
    # packed: p0 p0 | a a | b || q | c   (prompt 0, its completions a and b; prompt 1, its completion c)
    want = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0],
        [0, 0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(packed.allowed(), want)
    # the first token of each completion is predicted by its family's last prompt token
    assert packed.predictor.tolist() == [1, 2, 1, 5]


def test_packing_is_refused_where_the_mask_cannot_be_expressed(tiny_model):
    batch = BATCHES["grpo-group"]()
    model = _policy(tiny_model)
    with pytest.raises(HumanlineError, match="layout must be one of padded, packed, not 'pcked'"):
        completion_logprobs(model, *batch, layout="pcked")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(HumanlineError, match="flash-attention cannot express the shared-prompt mask"):
        completion_logprobs(model, *batch, layout="packed")
    model = _policy(tiny_model)
    model.config.layer_types = ["sliding_attention", "full_attention"]
    with pytest.raises(HumanlineError, match="needs full attention in every layer; llama has full_attention, sliding"):
        completion_logprobs(model, *batch, layout="packed")

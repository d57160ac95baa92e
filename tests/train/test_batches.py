"""Shards -> batches: row layouts per loss, determinism, length grouping, truncation, bad shards."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from real_shards import group_rows, pair_rows, unpaired_rows, write, write_unchecked
from humanline_data.errors import HumanlineError, WrongKindError
from humanline_data.schema import prompt_id
from humanline_train.batches import ShardError, ShardLoader

from conftest import TOKENIZER_DIR


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def shards(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    pairs = pair_rows(shared_data, 40)
    return {
        "pairs": write(root / "pairs", "pairs", pairs),
        "unpaired": write(root / "unpaired", "unpaired", unpaired_rows(pairs[:10])),
        "groups": write(root / "groups", "groups", group_rows(shared_data, 8)),
        "rows": pairs,
    }


def _decode_rows(tokenizer, batch):
    """(prompt text, completion text) of every row, from the masks."""
    out = []
    for ids, att, comp in zip(batch.input_ids, batch.attention_mask, batch.completion_mask):
        n = int(att.sum())
        out.append((tokenizer.decode(ids[:n][~comp[:n]]), tokenizer.decode(ids[:n][comp[:n]])))
    return out


def test_dpo_rows_are_chosen_then_rejected_with_chat_prompt_and_eos(tokenizer, shards):
    by_prompt = {r["prompt_id"]: r for r in shards["rows"]}
    by_template = {tokenizer.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=False): r
                   for r in by_prompt.values()}
    loader = ShardLoader(shards["pairs"], "dpo", tokenizer, batch_size=3, max_length=4096)
    batch = next(iter(loader))
    rows = _decode_rows(tokenizer, batch)
    assert batch.input_ids.shape[0] == 6 and batch.num_examples == 3
    for i in range(3):
        (prompt, chosen), (prompt_r, rejected) = rows[i], rows[3 + i]
        assert prompt == prompt_r
        row = by_template[prompt]
        assert chosen == row["chosen"] + "<|im_end|>"
        assert rejected == row["rejected"] + "<|im_end|>"


def test_kto_kl_rows_pair_each_prompt_with_the_next_other_prompts_completion(tokenizer, shards):
    step = next(ShardLoader(shards["unpaired"], "kto", tokenizer, batch_size=2, grad_accum=2,
                            max_length=4096).iter_steps())
    examples = [row for b in step.batches for row in _decode_rows(tokenizer, b)]
    kl = [row for b in step.batches for row in _decode_rows(tokenizer, b.kl)]
    assert len(examples) == len(kl) == 4
    for i in range(4):  # prompt i with the completion of the next example of the STEP whose prompt differs
        j = next(j % 4 for j in range(i + 1, i + 4) if examples[j % 4][0] != examples[i][0])
        assert kl[i][0] == examples[i][0] and kl[i][1] == examples[j][1]
    assert step.batches[0].desirable.dtype == torch.bool and step.batches[0].kl.desirable is None
    # pairs split for KTO: each pair gives a desirable (chosen) and an undesirable (rejected) example
    loader = ShardLoader(shards["pairs"], "kto", tokenizer, batch_size=4, max_length=4096)
    flags = torch.cat([b.desirable for b in loader])
    assert int(flags.sum()) == int((~flags).sum()) == 40


def test_grpo_reads_groups_and_pairs_as_groups_of_two(tokenizer, shards):
    loader = ShardLoader(shards["groups"], "grpo", tokenizer, batch_size=4, max_length=4096)
    advantages = torch.cat([b.advantages for b in loader])
    assert len(advantages) == 24  # 8 groups x 3 completions
    assert sorted(set(advantages.round(decimals=4).tolist())) == pytest.approx([-0.6924, 1.3848], abs=1e-4)
    pairs = ShardLoader(shards["pairs"], "grpo", tokenizer, batch_size=4, max_length=4096)
    assert sorted(set(torch.cat([b.advantages for b in pairs]).tolist())) == [-1.0, 1.0]  # no scores: exactly +/-1


def test_order_is_seeded_resumable_and_split_across_processes(tokenizer, shards):
    def keys(**kw):
        args = dict(batch_size=2, max_length=256, epochs=2) | kw
        return [b.keys for b in ShardLoader(shards["pairs"], "dpo", tokenizer, **args)]

    first, again, other = keys(seed=1), keys(seed=1), keys(seed=2)
    assert first == again and first != other
    assert keys(seed=1)[:20] != keys(seed=1)[20:]  # each epoch reshuffles
    loader = ShardLoader(shards["pairs"], "dpo", tokenizer, batch_size=2, max_length=256, seed=1, epochs=2)
    assert [b.keys for step in loader.iter_steps(7) for b in step.batches] == first[7:]
    # a step of 2 processes x 1 micro-batch holds the micro-batches of 1 process accumulating 2
    accumulating = keys(seed=1, grad_accum=2)
    procs = [keys(seed=1, process_index=p, num_processes=2) for p in (0, 1)]
    assert procs[0] == accumulating[0::2] and procs[1] == accumulating[1::2]


def test_length_grouping_cuts_padding(tokenizer, shards):
    def padding(pool_batches):
        batches = ShardLoader(shards["pairs"], "dpo", tokenizer, batch_size=4, max_length=4096,
                              pool_batches=pool_batches)
        return sum(b.attention_mask.numel() - b.num_tokens for b in batches)

    assert padding(pool_batches=10) < 0.5 * padding(pool_batches=1)


def test_truncation_is_counted(tokenizer, shards):
    loader = ShardLoader(shards["pairs"], "dpo", tokenizer, batch_size=2, max_length=64)
    batches = list(loader)
    t = loader.truncation
    assert t.examples == 2 * len(batches) or t.examples == 2 * len(batches) + 1
    assert t.skipped_prompts > 0 and t.truncated_completions > 0
    assert t.skipped_prompts + t.examples == 40
    assert all(b.input_ids.shape[1] <= 64 for b in batches)
    # every cut completion fills the row to exactly max_length
    cut = sum(int((b.attention_mask.sum(1) == 64).sum()) for b in batches)
    assert cut == t.truncated_completions


def test_bad_shards(tokenizer, shared_data, shards, tmp_path):
    prompts = [{"prompt_id": prompt_id(m), "messages": m, "source": "gsm8k", "split": "train"}
               for m in ([{"role": "user", "content": "What is 2+2?"}],)]
    with pytest.raises(WrongKindError, match="kind 'prompts'.*loss dpo"):
        ShardLoader(write(tmp_path / "prompts", "prompts", prompts), "dpo", tokenizer, 2, 64)
    with pytest.raises(WrongKindError, match="kind 'unpaired'"):
        ShardLoader(shards["unpaired"], "dpo", tokenizer, 2, 64)
    with pytest.raises(ShardError, match="empty shard"):
        ShardLoader(write(tmp_path / "empty", "pairs", []), "dpo", tokenizer, 2, 64)
    nan_pair = dict(shards["rows"][0], chosen_reward=float("nan"), rejected_reward=0.0)
    with pytest.raises(ShardError, match="chosen_reward holds NaN"):
        ShardLoader(write_unchecked(tmp_path / "nan", "pairs", [nan_pair]), "dpo", tokenizer, 2, 64)
    group = dict(group_rows(shared_data, 1)[0], advantages=[1.0, float("nan"), 0.0])
    with pytest.raises(ShardError, match="advantages holds NaN"):
        ShardLoader(write_unchecked(tmp_path / "nan_adv", "groups", [group]), "grpo", tokenizer, 2, 64)
    with pytest.raises(ShardError, match="no example fits --max-length 8"):
        next(iter(ShardLoader(shards["pairs"], "dpo", tokenizer, 2, 8)))
    assert issubclass(ShardError, HumanlineError)


def test_cycling_a_shard_too_small_for_one_micro_batch_fails_instead_of_spinning(tokenizer, shards, tmp_path):
    """An online round can be tiny; cycling it (epochs=None) must raise, not loop forever."""
    one_pair = write(tmp_path / "one_pair", "pairs", shards["rows"][:1])
    loader = ShardLoader(one_pair, "dpo", tokenizer, batch_size=2, max_length=4096, epochs=None)
    with pytest.raises(ShardError, match="1 examples make no whole optimizer step of 2 x 1 x 1 processes"):
        next(iter(loader))


def test_prompt_token_ids_are_the_samplers_own(tokenizer, tiny_model, shards):
    """The ids the transformers sampler feeds the model for a prompt are the ids the training
    batch holds for it (one tokenizer, one chat-template rendering for both)."""
    from humanline_data.backends import SamplingParams, load_backend

    loader = ShardLoader(shards["pairs"], "dpo", tokenizer, batch_size=2, max_length=4096)
    batch = next(loader.iter_steps()).batches[0]
    by_key = {r["prompt_id"]: r for r in shards["rows"]}
    backend = load_backend("transformers", tiny_model)
    fed = []
    hook = backend.model.get_input_embeddings().register_forward_hook(lambda m, args, out: fed.append(args[0].clone()))
    rows = list(by_key.values())[:40]
    trained = {}
    for r in range(batch.num_examples):
        n = int(batch.attention_mask[r].sum()) - int(batch.completion_mask[r].sum())
        trained[tuple(batch.input_ids[r, :n].tolist())] = r
    try:
        for row in rows:
            fed.clear()
            backend.generate([row["messages"]], [[0]], SamplingParams(n=1, temperature=0.0, max_new_tokens=1))
            ids = tuple(torch.cat([f[0] for f in fed]).tolist())  # prefill + the step that samples one token
            if ids in trained:
                trained[ids] = None
    finally:
        hook.remove()
        backend.close()
    assert all(v is None for v in trained.values())  # every prompt of the batch was fed to the sampler identically

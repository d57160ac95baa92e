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
    assert t.trained == sum(b.num_examples for b in batches) and t.dropped == 0
    assert t.skipped_prompts > 0 and t.truncated_completions > 0
    assert t.skipped_prompts + t.examples == 40
    assert all(b.input_ids.shape[1] <= 64 for b in batches)
    # every cut completion fills the row to exactly max_length
    cut = sum(int((b.attention_mask.sum(1) == 64).sum()) for b in batches)
    assert cut == t.truncated_completions


@pytest.mark.parametrize(("batch_size", "grad_accum", "drop_last", "sizes", "dropped"), [
    (6, 1, False, [6] * 6 + [4], 0),  # 40 pairs: the last, partial step trains
    (6, 1, True, [6] * 6, 4),  # --drop-last leaves it out
    (2, 3, False, [6] * 6 + [4], 0),  # 4 left over 3 micro-batches: 2 + 1 + 1
    (13, 3, False, [39], 1),  # 1 left, fewer than the 3 micro-batches a step needs
])
def test_the_last_partial_step_trains_and_the_counts_are_true(tokenizer, shards, batch_size, grad_accum, drop_last,
                                                             sizes, dropped):
    loader = ShardLoader(shards["pairs"], "dpo", tokenizer, batch_size=batch_size, grad_accum=grad_accum,
                         max_length=4096, drop_last=drop_last)
    steps = list(loader.iter_steps())
    assert [s.examples for s in steps] == sizes and loader.count_steps() == len(sizes)
    assert all(len(s.batches) == grad_accum and all(b.num_examples for b in s.batches) for s in steps)
    assert (loader.truncation.trained, loader.truncation.dropped) == (40 - dropped, dropped)


def _mixed_groups(shared_data, tmp_path):
    """A groups shard of 12 GSM8K prompts with 2, 3 or 4 completions each (sizes repeat 2, 3, 4)."""
    rows = [dict(group_rows(shared_data, 12, size)[i], prompt_id=None) for i, size in
            zip(range(12), [2, 3, 4] * 4)]
    for row in rows:
        row["prompt_id"] = prompt_id(row["messages"])
    return write(tmp_path / "mixed", "groups", rows), {row["prompt_id"]: len(row["completions"]) for row in rows}


def _prompt_key(batch, r: int) -> tuple[int, ...]:
    n = int(batch.attention_mask[r].sum()) - int(batch.completion_mask[r].sum())
    return tuple(batch.input_ids[r, :n].tolist())


@pytest.mark.parametrize(("batch_size", "grad_accum"), [(4, 1), (4, 3), (8, 2), (2, 4), (3, 3)])
def test_groups_stay_whole(tokenizer, shared_data, tmp_path, batch_size, grad_accum):
    """Every prompt's completions are in one step (its advantages sum to 0 there) and in
    consecutive micro-batches; a group that fits a micro-batch is whole in one, unless the step
    holds fewer groups than micro-batches (an epoch's last, partial step)."""
    shard, sizes = _mixed_groups(shared_data, tmp_path)
    loader = ShardLoader(shard, "grpo", tokenizer, batch_size=batch_size, grad_accum=grad_accum, max_length=4096,
                         epochs=2)
    steps = list(loader.iter_steps())
    per_epoch = {}
    for step in steps[: len(steps) // 2]:
        for b in step.batches:
            for r in range(b.num_examples):
                per_epoch[_prompt_key(b, r)] = per_epoch.get(_prompt_key(b, r), 0) + 1
    assert sorted(per_epoch.values()) == sorted(sizes.values())  # the key is the prompt: one group each
    for step in steps:
        where: dict[tuple, list[int]] = {}
        for j, b in enumerate(step.batches):
            assert 0 < b.num_examples <= batch_size
            for r in range(b.num_examples):
                where.setdefault(_prompt_key(b, r), []).append(j)
        for key, batches in where.items():
            assert len(batches) == per_epoch[key]  # the whole group is in this step
            assert sorted(set(batches)) == list(range(min(batches), max(batches) + 1))  # in consecutive micro-batches
            if per_epoch[key] <= batch_size and len(where) >= grad_accum:
                assert len(set(batches)) == 1  # ... in one, where it fits
        assert abs(sum(float(b.advantages.sum()) for b in step.batches)) < 1e-4
    assert loader.count_steps() == len(steps)


def test_a_group_larger_than_a_step_is_one_error(tokenizer, shared_data, tmp_path):
    shard, _ = _mixed_groups(shared_data, tmp_path)
    with pytest.raises(ShardError, match=r"a group of 4 completions does not fit one optimizer step of 1 x 3 x 1 "
                                         r"processes = 3 examples"):
        ShardLoader(shard, "grpo", tokenizer, batch_size=1, grad_accum=3, max_length=4096)


def test_a_packed_step_runs_each_prompt_once(tokenizer, shared_data, tiny_model, tmp_path):
    """Under the packed layout a micro-batch runs each of its distinct prompts once, and whole
    groups make that once per step: the tokens the model runs are the step's distinct prompts
    plus its completions (but in a step of fewer groups than micro-batches, whose groups must
    be cut)."""
    from transformers import AutoModelForCausalLM

    from humanline_train.logprobs import LogprobModel

    shard, _ = _mixed_groups(shared_data, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    run = []
    model.model.register_forward_hook(lambda m, args, kwargs, out: run.append(int(kwargs["input_ids"].numel())),
                                      with_kwargs=True)
    packed = LogprobModel(model, layout="packed")
    loader = ShardLoader(shard, "grpo", tokenizer, batch_size=4, grad_accum=2, max_length=4096, epochs=2)
    whole_steps = 0
    for step in loader.iter_steps():
        run.clear()
        prompts = [{_prompt_key(b, r) for r in range(b.num_examples)} for b in step.batches]
        with torch.no_grad():
            for b in step.batches:
                packed(b.input_ids, b.attention_mask, b.completion_mask)
        completions = sum(b.num_tokens_completion for b in step.batches)
        step_prompts = set().union(*prompts)
        if len(step_prompts) >= len(step.batches):
            assert sum(run) == sum(map(len, step_prompts)) + completions
            whole_steps += 1
        else:
            assert sum(run) == sum(len(p) for mb in prompts for p in mb) + completions
    assert whole_steps >= 4


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


def test_cycling_a_shard_too_small_for_one_step_fails_instead_of_spinning(tokenizer, shards, tmp_path):
    """An online round can be tiny; cycling it (epochs=None) must raise, not loop forever."""
    one_pair = write(tmp_path / "one_pair", "pairs", shards["rows"][:1])
    loader = ShardLoader(one_pair, "dpo", tokenizer, batch_size=2, grad_accum=2, max_length=4096, epochs=None)
    with pytest.raises(ShardError, match=r"1 examples make no optimizer step of 2 x 2 x 1 processes \(one needs at "
                                         r"least 2\)"):
        next(iter(loader))
    loader = ShardLoader(one_pair, "dpo", tokenizer, batch_size=2, max_length=4096, epochs=None, drop_last=True)
    with pytest.raises(ShardError, match=r"1 examples make no optimizer step of 2 x 1 x 1 processes \(--drop-last\)"):
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

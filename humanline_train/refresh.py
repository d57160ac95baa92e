"""One online round (SPEC §4): the next slice of prompts -> policy samples -> scores -> shard.

:func:`make_shard` chains the data plane's own stage functions (the same code the
``humanline-data`` CLI runs) and writes one new version into each dataset under ``out``::

    out/prompts/vN       the round's prompts: rows [offset, offset + num_prompts) of the prompt
                         set, wrapping around at its end (parent: the prompt set's version)
    out/completions/vN   n samples per prompt from the policy checkpoint (generate stage;
                         its manifest's producer names the checkpoint path and content hash)
    out/scored/vN        rewards (score stage)
    out/<mode>/vN        the shard: pairs, groups or unpaired (pair stage)

so the shard's lineage (shard -> scored -> completions -> prompts -> prompt set) names the
policy that sampled it. Arguments are plain values and nothing is global, so a round can run in
another process (``--refresh-async``).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from humanline_data.errors import HumanlineError
from humanline_data.generate import distinct_prompts, generate
from humanline_data.pair import build
from humanline_data.scorers import score
from humanline_data.store import open_version, write_version


def make_shard(
    model_dir: Path,
    prompts: str,
    offset: int,
    num_prompts: int,
    out: Path,
    scorer: str,
    mode: str,
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    threshold: float = 0.01,
) -> Path:
    """Sample, score and pair one round with the policy at ``model_dir``; return the shard version.

    ``prompts``: a prompts (or completions/scored) version or dataset; the round takes its
    distinct prompts ``offset .. offset + num_prompts - 1`` modulo their count (all of them, each
    once, when ``num_prompts`` exceeds the count). ``mode``: pairs, groups or unpaired;
    ``threshold``: the reward gap a pair needs (pairs/unpaired). Groups keep flat groups (all
    advantages 0, as TRL's GRPO does), so a round in which no sample beats another still trains
    (KL term only) instead of ending the run with an empty shard.
    """
    out = Path(out)
    round_prompts = write_prompt_slice(prompts, offset, num_prompts, out / "prompts")
    completions = generate(
        round_prompts, out / "completions", str(model_dir), n=n, temperature=temperature, top_p=top_p,
        max_new_tokens=max_new_tokens, seed=seed,
    )
    scored = score(completions, out / "scored", scorer)
    return build(scored, out / mode, mode=mode, threshold=threshold, keep_flat=(mode == "groups"))


def write_prompt_slice(prompts, offset: int, num_prompts: int, out: Path) -> Path:
    """Write prompts ``[offset, offset + num_prompts)`` (wrapping) of ``prompts`` as the next
    prompts version of ``out`` and return it; ``params`` record offset, count and the round."""
    if num_prompts < 1:
        raise HumanlineError(f"refresh: prompts per round must be >= 1, got {num_prompts}")
    if offset < 0:
        raise HumanlineError(f"refresh: prompt offset must be >= 0, got {offset}")
    source = open_version(prompts, kinds=("prompts", "completions", "scored"))
    table = distinct_prompts(source)
    total = table.num_rows
    if total == 0:
        raise HumanlineError(f"refresh: {source.path} holds no prompts")
    taken = min(num_prompts, total)
    rows = table.take(pa.array([(offset + i) % total for i in range(taken)], pa.int64()))
    params = {"offset": offset, "num_prompts": num_prompts, "round": offset // num_prompts, "prompt_set_size": total}
    with write_version(
        out, "prompts", params=params, parents=[source.parent_ref()], producer={"stage": "refresh"},
        stats={"prompts": taken, "wrapped": offset % total + taken > total, "capped_at_prompt_set_size": taken < num_prompts},
    ) as writer:
        writer.write(rows)
    return writer.path

"""Pairs (DPO), groups (GRPO) and unpaired rows (KTO) from scored completions (method.md §5, §6).

Modes, from a ``scored`` version with several samples per prompt:

``pairs``     per prompt, the highest-reward completion is ``chosen`` and the lowest-reward one
              ``rejected``; the pair is kept when ``max - min > threshold`` (strictly).
              Ties on reward: ``chosen`` is the tied sample with the lowest ``sample_idx``,
              ``rejected`` the tied sample with the highest one, so the two are never the same
              row. Prompt columns (messages, answer, source, metadata) come from the chosen row.
``unpaired``  the pairs above, each split into two rows: chosen -> ``desirable=True`` (reward =
              chosen_reward), then rejected -> ``desirable=False``.
``groups``    all samples of a prompt ordered by ``sample_idx`` with GRPO advantages
              ``A_i = (s_i - mean(s)) / (std(s) + 0.01)`` (population std). Groups with fewer than
              ``min_group_size`` samples are dropped; so are *flat* groups (all rewards equal,
              every advantage 0, no GRPO signal) unless ``keep_flat``. ``threshold`` does not apply.

Dropped prompts are counted by reason in the manifest's ``stats``. Output rows follow the order
in which prompts first appear in the input.

The selection (which rows, group order, advantages) is computed by polars on the small columns
(prompt_id, sample_idx, reward); the selected rows' text columns are then read part by part and
gathered with Arrow ``take``, so long completions never pass through Python objects and memory
holds one input part plus the output, not the whole input.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from humanline_data.advantages import group_advantages
from humanline_data.errors import HumanlineError
from humanline_data.outputs import check_output
from humanline_data.schema import SCHEMAS
from humanline_data.store import Version, open_version, write_version

MODES = ("pairs", "groups", "unpaired")
THRESHOLD = 0.01  # reward units: the gap a pair needs (pairs/unpaired)
MIN_GROUP_SIZE = 2  # samples a group needs (groups)
_INPUT_COLUMNS = ["prompt_id", "messages", "answer", "source", "metadata", "sample_idx", "completion", "reward"]
_PROMPT_COLUMNS = ["prompt_id", "messages", "answer", "source"]


def build(
    inp: str | os.PathLike,
    out: str | os.PathLike,
    mode: str = "pairs",
    threshold: float = THRESHOLD,
    min_group_size: int = MIN_GROUP_SIZE,
    keep_flat: bool = False,
) -> Path:
    """Write the next version of ``out`` (kind = ``mode``) built from the scored version ``inp``.

    ``threshold`` (reward units) applies to pairs/unpaired, ``min_group_size`` (samples) and
    ``keep_flat`` to groups. Returns the new version's path.
    """
    _check_args(mode, threshold, min_group_size)
    check_output(out, "dataset")
    version = open_version(inp, kinds=("scored",))
    keys = pl.from_arrow(version.read(columns=["prompt_id", "sample_idx", "reward"])).with_row_index("row")
    if mode == "groups":
        rows, stats = _groups(version, keys, min_group_size, keep_flat)
        params = {"mode": mode, "min_group_size": min_group_size, "keep_flat": keep_flat}
    else:
        chosen, rejected, stats = _select_pairs(keys, threshold)
        rows = _pairs(version, chosen, rejected) if mode == "pairs" else _unpaired(version, chosen, rejected)
        params = {"mode": mode, "threshold": threshold}
    stats = {"input_rows": keys.height, "output_rows": rows.num_rows, **stats}
    with write_version(
        out, mode, params=params, parents=[version.parent_ref()], producer={"stage": "pair"}, stats=stats
    ) as writer:
        writer.write(rows)
    return writer.path


def _read_rows(version: Version, rows: np.ndarray) -> pa.Table:
    """The input columns of ``version``'s rows numbered ``rows`` (in that order, repeats allowed).

    Reads one part at a time and keeps only the rows asked for, so memory holds one part's text
    plus the selection, not the whole version.
    """
    wanted = np.unique(rows)
    pieces, start = [], 0
    for part, entry in zip(version.files, version.manifest["files"]):
        local = wanted[(wanted >= start) & (wanted < start + entry["rows"])] - start
        if len(local):
            pieces.append(pq.read_table(part, columns=_INPUT_COLUMNS).take(local))
        start += entry["rows"]
    if not pieces:
        return SCHEMAS["scored"].empty_table().select(_INPUT_COLUMNS)
    return pa.concat_tables(pieces).take(np.searchsorted(wanted, rows))


def _check_args(mode: str, threshold: float, min_group_size: int) -> None:
    if mode not in MODES:
        raise HumanlineError(f"unknown pair mode {mode!r} (expected one of {', '.join(MODES)})")
    if not (math.isfinite(threshold) and threshold >= 0):
        raise HumanlineError(f"threshold must be a finite number >= 0, got {threshold}")
    if min_group_size < 2:
        raise HumanlineError(f"min group size must be >= 2 (a single sample has no advantage), got {min_group_size}")


def _select_pairs(keys: pl.DataFrame, threshold: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """Row numbers of the chosen and rejected completion of every kept prompt, and drop counts."""
    per_prompt = (
        keys.group_by("prompt_id")
        .agg(
            first_row=pl.col("row").min(),
            samples=pl.len(),
            gap=pl.col("reward").max() - pl.col("reward").min(),
            chosen=pl.col("row").sort_by(["reward", "sample_idx"], descending=[True, False]).first(),
            rejected=pl.col("row").sort_by(["reward", "sample_idx"], descending=[False, True]).first(),
        )
        .sort("first_row")
    )
    single = pl.col("samples") < 2
    kept = per_prompt.filter(~single & (pl.col("gap") > threshold))
    stats = {
        "prompts": per_prompt.height,
        "kept_prompts": kept.height,
        "dropped": {
            "single_sample": per_prompt.filter(single).height,
            "gap_at_most_threshold": per_prompt.height - kept.height - per_prompt.filter(single).height,
        },
    }
    return kept["chosen"].to_numpy(), kept["rejected"].to_numpy(), stats


def _pairs(version: Version, chosen: np.ndarray, rejected: np.ndarray) -> pa.Table:
    both = _read_rows(version, np.concatenate([chosen, rejected]))
    head, tail = both.slice(0, len(chosen)), both.slice(len(chosen))
    rejected_reward = tail.column("reward")
    return pa.table(
        {
            **{name: head.column(name) for name in _PROMPT_COLUMNS},
            "chosen": head.column("completion"),
            "rejected": tail.column("completion"),
            "chosen_reward": head.column("reward"),
            "rejected_reward": rejected_reward,
            "margin": pc.subtract(head.column("reward"), rejected_reward),
            "metadata": head.column("metadata"),
        }
    )


def _unpaired(version: Version, chosen: np.ndarray, rejected: np.ndarray) -> pa.Table:
    order = np.empty(2 * len(chosen), dtype=np.int64)
    order[0::2], order[1::2] = chosen, rejected
    rows = _read_rows(version, order)
    return pa.table(
        {
            **{name: rows.column(name) for name in _PROMPT_COLUMNS},
            "completion": rows.column("completion"),
            "desirable": pa.array(np.tile([True, False], len(chosen))),
            "reward": rows.column("reward"),
            "metadata": rows.column("metadata"),
        }
    )


def _groups(version: Version, keys: pl.DataFrame, min_group_size: int, keep_flat: bool) -> tuple[pa.Table, dict]:
    """One row per kept prompt: completions, rewards and advantages in ``sample_idx`` order."""
    by_prompt = pl.col("prompt_id")
    sized = keys.with_columns(
        first_row=pl.col("row").min().over(by_prompt),
        samples=pl.len().over(by_prompt),
        flat=(pl.col("reward").max() == pl.col("reward").min()).over(by_prompt),
    )
    big = sized.filter(pl.col("samples") >= min_group_size)
    kept = (big if keep_flat else big.filter(~pl.col("flat"))).sort(["first_row", "sample_idx"])
    kept = kept.with_columns(advantage=pl.Series(group_advantages(kept["reward"].to_numpy(), kept["first_row"].to_numpy())))
    sizes = kept.group_by("first_row", maintain_order=True).len()["len"].to_numpy()
    offsets = pa.array(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32))
    table = _read_rows(version, kept["row"].to_numpy())
    head = table.take(offsets.to_numpy()[:-1])

    def listed(values: pa.Array) -> pa.ListArray:
        return pa.ListArray.from_arrays(offsets, values)

    groups = pa.table(
        {
            **{name: head.column(name) for name in _PROMPT_COLUMNS},
            "completions": listed(table.column("completion").combine_chunks()),
            "rewards": listed(pa.array(kept["reward"].to_numpy(), pa.float64())),
            "advantages": listed(pa.array(kept["advantage"].to_numpy(), pa.float64())),
            "metadata": head.column("metadata"),
        }
    )
    prompts = sized["prompt_id"].n_unique()
    big_prompts = big["prompt_id"].n_unique()
    flat = big.filter(pl.col("flat"))["prompt_id"].n_unique()
    stats = {
        "prompts": prompts,
        "kept_prompts": len(sizes),
        "flat_kept": flat if keep_flat else 0,
        "dropped": {"below_min_group_size": prompts - big_prompts, "flat": 0 if keep_flat else flat},
    }
    return groups, stats

"""One online round (method.md §6): the next slice of prompts -> policy samples -> scores -> shard.

:func:`make_shard` chains the data plane's own stage functions (the same code the
``humanline-data`` CLI runs) and writes one new version into each dataset under ``out``::

    out/prompts/vN       the round's prompts: rows [offset, offset + num_prompts) of the prompt
                         set, wrapping around at its end (parent: the prompt set's version)
    out/completions/vN   n samples per prompt from the policy checkpoint (generate stage;
                         its manifest's producer names the checkpoint path and content hash,
                         the engine, live or reload, and the training step)
    out/scored/vN        rewards (score stage)
    out/<mode>/vN        the shard: pairs, groups or unpaired (pair stage)

so the shard's lineage (shard -> scored -> completions -> prompts -> prompt set) names the
policy that sampled it. A round samples with the run's live engine (``engine.LiveEngine``, the
policy's weights pushed into it in memory) or, ``--refresh-engine reload``, with a backend
loaded from the checkpoint for this round only; its arguments are then plain values, so it can
run in another process.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pyarrow as pa

from humanline_data.backends import SamplingParams
from humanline_data.errors import HumanlineError
from humanline_train import checkpoint
from humanline_train.batches import ShardLoader, StepStream
from humanline_train.export import is_adapter, loadable_model


def make_shard(
    model_dir: Path,
    prompts: str,
    offset: int,
    num_prompts: int,
    out: Path,
    scorer: str,
    mode: str,
    sampling: SamplingParams,
    backend=None,
    lineage: dict | None = None,
) -> Path:
    """Sample, score and pair one round with the policy at ``model_dir``; return the shard version.

    ``prompts``: a prompts (or completions/scored) version or dataset; the round takes its
    distinct prompts ``offset .. offset + num_prompts - 1`` modulo their count (all of them, each
    once, when ``num_prompts`` exceeds the count). ``mode``: pairs, groups or unpaired (a pair
    needs ``pair.THRESHOLD``'s reward gap). Groups keep flat groups (all advantages 0, as TRL's
    GRPO does), so a round in which no sample beats another still trains (KL term only)
    instead of ending the run with an empty shard. ``backend``: a loaded backend
    holding ``model_dir``'s weights (the live engine's), None: load one for this round;
    ``lineage``: more producer keys of the completions (engine, step, weights fingerprint).
    """
    from humanline_data.generate import generate
    from humanline_data.pair import build
    from humanline_data.scorers import score

    out = Path(out)
    round_prompts = write_prompt_slice(prompts, offset, num_prompts, out / "prompts")
    completions = generate(
        round_prompts, out / "completions", str(model_dir), n=sampling.n, temperature=sampling.temperature,
        top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens, seed=sampling.seed,
        backend=backend or "auto", lineage=lineage,
    )
    scored = score(completions, out / "scored", scorer)
    return build(scored, out / mode, mode=mode, keep_flat=(mode == "groups"))


def write_prompt_slice(prompts, offset: int, num_prompts: int, out: Path) -> Path:
    """Write prompts ``[offset, offset + num_prompts)`` (wrapping) of ``prompts`` as the next
    prompts version of ``out`` and return it; ``params`` record offset, count and the round."""
    from humanline_data.generate import distinct_prompts
    from humanline_data.store import open_version, write_version

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


class Rounds:
    """The shard version each segment of a run trains on, and its optimizer steps: the run's
    shards offline (one segment), one round's shard per segment online (method.md §6).

    Round ``r`` starts at step ``r * refresh_every`` and trains on prompts
    ``[r * refresh_prompts, (r + 1) * refresh_prompts)``, sampled with the policy at its start
    (or, ``refresh_async``, with the policy one refresh earlier while the previous round trains:
    in a thread of this process with the live engine, in a spawned process with ``reload``).
    Each round's shard is recorded in ``refreshes.json`` so a resumed run reuses it. The main
    process samples; the others read its record.
    """

    def __init__(self, config, run_dir: Path, model_path: Path, tokenizer, accel) -> None:
        self.config, self.run_dir, self.model_path, self.tokenizer, self.accel = config, run_dir, model_path, tokenizer, accel
        self.pending: dict[int, Future] = {}
        self.pool: Executor | None = None
        self.engine = None  # live: the run's LiveEngine, loaded from model_path at the first round sampled

    def first_segment(self, data: dict | None, step: int, pinned=None) -> tuple[dict, StepStream]:
        """The data position ``{shard, segment_start, round}`` a run starts at and its steps from
        ``step`` on: a resumed run's ``data``, else the run's shards (``pinned``: that version,
        opened); an online run without them samples round 0 with the initial model now, and an
        async one starts sampling round 1 with it (round 0 trains meanwhile)."""
        config, online = self.config, self.config.online
        data = data or {"shard": config.data.shards, "segment_start": 0, "round": 0}
        if data["shard"] is None:
            data["shard"] = str(self.shard_for_round(0, step, self.model_path, online.refresh_every >= config.data.max_steps))
        elif online.refresh_async and step == 0 and online.refresh_every < config.data.max_steps and self.accel.is_main_process:
            self.prefetch(1, self.model_path)
        stream = self.stream(pinned if data["shard"] == config.data.shards else data["shard"], step - data["segment_start"])
        if not stream.peek(1):
            raise HumanlineError(f"{stream.loader.version.path}: fewer examples than one optimizer step needs")
        return data, stream

    def stream(self, shards, start: int = 0) -> StepStream:
        """This process's optimizer steps of ``shards`` (a version path or an opened version),
        from its step ``start`` on."""
        config, data = self.config, self.config.data
        loader = ShardLoader(
            shards, config.objective_class, self.tokenizer, batch_size=data.batch_size, max_length=data.max_length,
            grad_accum=data.grad_accum, seed=data.seed, epochs=None if config.online.refresh_every else data.epochs,
            drop_last=data.drop_last, process_index=self.accel.process_index, num_processes=self.accel.num_processes,
        )
        return StepStream(loader, start)

    def next_round(self, data: dict, step: int, total: int, policy, save: Callable[[], None]) -> tuple[dict, StepStream]:
        """The data position and steps of the round that starts at ``step`` of ``total``, sampled
        with ``policy`` as it is now: ``save()`` checkpoints it first where the sampler loads it
        (reload) or a resumed async run would sample from it again; live, its weights are pushed
        into the engine (every process gathers them; a LoRA run's are a merged copy, freed here)."""
        live = self.config.online.refresh_engine == "live"
        if (not live or self.config.online.refresh_async) and not checkpoint.has_checkpoint(self.run_dir, step):
            save()
        weights = checkpoint.policy_weights(policy, self.accel) if live else None
        saved = checkpoint.has_checkpoint(self.run_dir, step)
        policy_dir = checkpoint.checkpoint_dir(self.run_dir, step) if saved else self.model_path
        round_index = data["round"] + 1
        shard = self.shard_for_round(round_index, step, policy_dir, step + self.config.online.refresh_every >= total, weights)
        del weights
        data = {"shard": str(shard), "segment_start": step, "round": round_index}
        return data, self.stream(data["shard"])

    def shard_for_round(self, round_index: int, step: int, policy_dir: Path, last_round: bool = False,
                        weights: dict | None = None) -> Path:
        """The shard of round ``round_index`` (starting at ``step``; ``policy_dir`` holds the policy
        at ``step``, ``weights`` its state dict for the live engine, None while it is the initial
        model); starts sampling the next round in the background when async and not ``last_round``."""
        online = self.config.online
        if not self.accel.is_main_process:
            self.accel.wait_for_everyone()
            return Path(checkpoint.read_refreshes(self.run_dir)[round_index])
        recorded = checkpoint.read_refreshes(self.run_dir)
        if round_index in recorded:
            shard = Path(recorded[round_index])
        elif round_index in self.pending:
            shard = self.pending.pop(round_index).result()
        elif online.refresh_async and round_index > 0:  # resumed: the background round was lost
            previous = step - online.refresh_every  # its policy is only on disk now: load it for this round
            source = loadable_model(checkpoint.checkpoint_dir(self.run_dir, previous)) if previous > 0 else self.model_path
            shard = make_shard(**self._arguments(source, round_index, previous))
        else:
            shard = make_shard(**self._sampling(round_index, step, policy_dir, weights))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.record_refresh(self.run_dir, round_index, shard)
        if online.refresh_async and not last_round and round_index + 1 not in recorded:
            self.prefetch(round_index + 1, policy_dir, step, weights)
        self.accel.wait_for_everyone()
        return shard

    def prefetch(self, round_index: int, model_dir: Path, step: int = 0, weights: dict | None = None) -> None:
        """Start sampling round ``round_index`` with the policy at ``step`` (``model_dir``,
        ``weights``: see :meth:`shard_for_round`) in the background."""
        arguments = self._sampling(round_index, step, model_dir, weights)  # pushes now, before training goes on
        if self.pool is None:
            live = self.config.online.refresh_engine == "live"
            self.pool = ThreadPoolExecutor(max_workers=1) if live else \
                ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        self.pending[round_index] = self.pool.submit(make_shard, **arguments)

    def _sampling(self, round_index: int, step: int, model_dir: Path, weights: dict | None) -> dict:
        """make_shard's arguments for a round sampled with the policy at ``step``; live: with the
        run's engine, into which ``weights`` are pushed first (None: it still holds the initial model).
        A LoRA checkpoint (an adapter) is named by the engine's own folder (live: ``weights`` are what
        it samples with) or merged into a model folder to load (reload)."""
        live = self.config.online.refresh_engine == "live"
        model_dir = (self.model_path if is_adapter(model_dir) else model_dir) if live else loadable_model(model_dir)
        arguments = self._arguments(model_dir, round_index, step)
        if live:
            from humanline_train.engine import LiveEngine

            if self.engine is None:
                self.engine = LiveEngine(self.model_path, seed=self.config.data.seed)
            if weights is not None:
                self.engine.push(weights, step)
            arguments.update(backend=self.engine.backend, lineage=self.engine.lineage)
        return arguments

    def _arguments(self, model_dir: Path, round_index: int, step: int) -> dict:
        """make_shard's arguments for a round sampled by a backend loaded from ``model_dir``."""
        config, online = self.config, self.config.online
        return dict(
            model_dir=Path(model_dir), prompts=online.prompts, offset=round_index * online.refresh_prompts,
            num_prompts=online.refresh_prompts, out=self.run_dir / "shards", scorer=online.scorer,
            mode=online.pair_mode or config.objective_class.shard_kinds[0],
            sampling=dataclasses.replace(online.sampling, seed=config.data.seed + round_index),
            lineage={"engine": "reload", "step": step},
        )

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.engine is not None:
            self.engine.close()

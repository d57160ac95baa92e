"""Run directories, atomic checkpoints and resume.

Layout of ``RUN_DIR``::

    settings.json            the run's settings (a resume must match them)
    metrics.jsonl            one JSON object per optimizer step
    refreshes.json           online runs: the shard version each refresh round trained on
    checkpoints/step-N/      after N optimizer steps: an HF model folder (config, safetensors,
                             tokenizer; a LoRA run's holds the PEFT adapter instead of the model:
                             adapter_config.json, adapter_model.safetensors) plus
      trainer_state.pt       optimizer, scheduler, RNG states (python, numpy, torch), data
                             position, step, number of processes
      optimizer-rank-R.pt    FSDP / DeepSpeed: process R's shard of the optimizer state
      reference.pt           reference state: synced weights (copy) or cached look-ahead
                             log-probs (lookahead) or the disk cache's path (cached)

A checkpoint is written into ``checkpoints/.tmp-<uuid>`` and renamed into place, so a killed
run leaves only whole checkpoints.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch

from humanline_data.errors import HumanlineError

SETTINGS = "settings.json"
METRICS = "metrics.jsonl"
REFRESHES = "refreshes.json"
TRAINER_STATE = "trainer_state.pt"
REFERENCE_STATE = "reference.pt"
_STEP_RE = re.compile(r"^step-(\d+)$")


class RunDirError(HumanlineError):
    """--out/--resume does not name a run directory that can be used."""


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse to start a fresh run in a directory that already holds something."""
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise RunDirError(f"{run_dir} already exists and is not empty; pass --resume {run_dir} or another --out")


def read_settings(run_dir: Path) -> dict:
    """The resolved settings a run was started with (its settings.json)."""
    try:
        return json.loads((Path(run_dir) / SETTINGS).read_text())
    except FileNotFoundError:
        raise RunDirError(f"--resume {run_dir}: not a run directory (no {SETTINGS})") from None
    except (OSError, ValueError) as err:
        raise RunDirError(f"--resume {run_dir}: unreadable {SETTINGS} ({type(err).__name__})") from None


def check_resume(run_dir: Path, settings: dict) -> Path:
    """The latest checkpoint of ``run_dir`` after checking its settings equal ``settings``."""
    saved = _flat(read_settings(run_dir))
    settings = _flat(settings)
    differ = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
    if differ:
        what = ", ".join(f"{k}: run has {saved.get(k)!r}, now {settings.get(k)!r}" for k in differ)
        raise RunDirError(f"--resume {run_dir}: settings differ from the run's ({what})")
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise RunDirError(f"--resume {run_dir}: no checkpoint to resume from")
    return latest


def _flat(settings: dict, prefix: str = "") -> dict:
    """Nested settings as {"section.name": value} (for naming what differs)."""
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def start_run_dir(run_dir: Path, settings: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / SETTINGS, json.dumps(settings, indent=2, sort_keys=True))


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step}"


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = [(int(m.group(1)), p) for p in (run_dir / "checkpoints").glob("step-*") if (m := _STEP_RE.match(p.name))]
    found = [(n, p) for n, p in found if (p / TRAINER_STATE).is_file()]
    return max(found)[1] if found else None


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_policy(policy: torch.nn.Module, tokenizer, target: Path, weights: dict | None = None) -> None:
    """Save ``policy`` with its tokenizer into ``target``, files readable as any other file
    written here (:func:`make_readable`): an HF model folder, or for a peft LoRA model its adapter
    folder (``PeftModel.save_pretrained``: what ``PeftModel.from_pretrained(base, target)`` loads).
    ``weights``: a state dict to write instead of the module's own (gathered from FSDP shards)."""
    policy.save_pretrained(target, **({} if is_lora(policy) else {"state_dict": weights}))
    tokenizer.save_pretrained(target)
    make_readable(target)


def make_readable(folder: Path) -> None:
    """Give every file under ``folder`` the mode a new file gets here (0666 less the umask: 0644
    under the usual 022). safetensors (0.8) writes a weight file through a temporary file, created
    0600 whatever the umask, that it renames into place."""
    probe = folder / f".mode-{uuid.uuid4().hex}"
    probe.touch()
    mode = probe.stat().st_mode & 0o777
    probe.unlink()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


def is_lora(model: torch.nn.Module) -> bool:
    return hasattr(model, "merge_and_unload")


def merged_weights(model: torch.nn.Module) -> dict:
    """The HF state dict of a peft LoRA ``model`` with each adapter's delta added to its base
    weight (``W + scale * B @ A``), computed tensor by tensor: no copy of the model (a deepcopy and
    ``merge_and_unload`` took ~1.6 s per call for the 135M model on 2 CPU cores)."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    weights = {k.replace(".base_layer.", "."): v.detach() for k, v in base.state_dict().items() if ".lora_" not in k}
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer) and not module.merged:
                key = f"{name}.weight"
                for adapter in module.active_adapters:
                    weights[key] = weights[key] + module.get_delta_weight(adapter)
    return weights


def policy_weights(policy, accel) -> dict | None:
    """The prepared policy's full HF state dict (LoRA merged: :func:`merged_weights`; FSDP / DeepSpeed shards
    gathered, so every process must call this) on the main process; None on the others.
    Tensors may be the live parameters: copy them before the next optimizer step."""
    inner = accel.unwrap_model(policy).model
    if is_lora(inner):  # LoRA runs are never sharded (check_distributed)
        return merged_weights(inner) if accel.is_main_process else None
    weights = gathered_weights(policy, accel)
    return weights if accel.is_main_process else None


def gathered_weights(policy, accel) -> dict:
    """``accel.get_state_dict(policy)`` with the HF model's own names (no ``model.`` prefix)."""
    return {k.removeprefix("model."): v for k, v in accel.get_state_dict(policy).items()}


def _optimizer_file(rank: int) -> str:
    return f"optimizer-rank-{rank}.pt"


def stage_optimizer(run_dir: Path, step: int, optimizer_state: dict, rank: int) -> Path:
    """Write process ``rank``'s optimizer shard where ``save`` of ``step`` will pick it up."""
    staged = run_dir / "checkpoints" / f".staged-step-{step}"
    staged.mkdir(parents=True, exist_ok=True)
    torch.save(optimizer_state, staged / _optimizer_file(rank))
    return staged


def save(
    run_dir: Path, step: int, policy: torch.nn.Module, tokenizer, state: dict, reference_state: dict,
    weights: dict | None = None, staged: Path | None = None,
) -> Path:
    """Write ``checkpoints/step-<step>`` atomically (replacing one of the same step); return it.
    ``weights`` replace the policy's own state dict; ``staged`` optimizer shards move in."""
    target = checkpoint_dir(run_dir, step)
    tmp = target.parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        save_policy(policy, tokenizer, tmp, weights)
        if staged is not None:
            for shard in staged.iterdir():
                os.replace(shard, tmp / shard.name)
            staged.rmdir()
        torch.save({**state, "rng": rng_state()}, tmp / TRAINER_STATE)
        torch.save(reference_state, tmp / REFERENCE_STATE)
        if target.exists():
            old = target.parent / f".old-{uuid.uuid4().hex}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old)
        else:
            os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def prune(run_dir: Path, keep_last: int, protect: set[int] = frozenset()) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints (0: keep all), never a step in
    ``protect`` (a policy an online round still samples from); return what was deleted."""
    if keep_last < 1:
        return []
    found = sorted((int(m.group(1)), p) for p in (run_dir / "checkpoints").glob("step-*") if (m := _STEP_RE.match(p.name)))
    doomed = [p for n, p in found[:-keep_last] if n not in protect]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def check_world_size(checkpoint: Path, state: dict, num_processes: int) -> None:
    """A run resumes with as many processes as wrote its checkpoint (data split, optimizer shards)."""
    saved = state.get("world_size", 1)
    if saved != num_processes:
        raise RunDirError(f"--resume: {checkpoint} was written by {saved} processes, now {num_processes}; launch {saved}")


def load_optimizer(checkpoint: Path, state: dict, rank: int) -> dict:
    """The optimizer state of process ``rank``: in the trainer state, or its own shard file."""
    if state["optimizer"] is not None:
        return state["optimizer"]
    return torch.load(checkpoint / _optimizer_file(rank), map_location="cpu", weights_only=False)


def load(checkpoint: Path) -> tuple[dict, dict]:
    """(trainer state, reference state) of a checkpoint, on the CPU."""
    state = torch.load(checkpoint / TRAINER_STATE, map_location="cpu", weights_only=False)
    reference = torch.load(checkpoint / REFERENCE_STATE, map_location="cpu", weights_only=False)
    return state, reference


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep only metrics of the first ``step`` steps (a resumed run re-logs the rest)."""
    path = run_dir / METRICS
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        write_atomic(path, "".join(line + "\n" for line in kept))


def read_refreshes(run_dir: Path) -> dict[int, str]:
    path = run_dir / REFRESHES
    return {int(k): v for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}


def record_refresh(run_dir: Path, round_index: int, shard: Path) -> None:
    rounds = read_refreshes(run_dir)
    rounds[round_index] = str(shard)
    write_atomic(run_dir / REFRESHES, json.dumps({str(k): v for k, v in sorted(rounds.items())}, indent=2))


def has_checkpoint(run_dir: Path, step: int) -> bool:
    return (checkpoint_dir(run_dir, step) / TRAINER_STATE).is_file()


def sharded(accel) -> bool:
    """Whether each process holds only part of the optimizer state (FSDP, DeepSpeed ZeRO)."""
    from accelerate.utils import DistributedType

    return accel.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def trainer_state(config, step: int, optimizer, scheduler, data: dict) -> dict:
    """What a checkpoint holds besides the weights (or LoRA adapter) and the reference."""
    return {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "data": dict(data),
            "settings": config.settings()}


def save_run(run_dir: Path, step: int, policy, tokenizer, state: dict, reference, accel) -> None:
    """Checkpoint after ``step`` steps; every process takes part (FSDP gathers the weights to the
    main process, and sharded optimizer states are written one file per process). A LoRA run
    saves its adapter (LoRA runs are never sharded: ``trainer.check_distributed``)."""
    model = accel.unwrap_model(policy).model
    weights = None if is_lora(model) else gathered_weights(policy, accel)
    staged = None
    if sharded(accel):
        staged = stage_optimizer(run_dir, step, state.pop("optimizer"), accel.process_index)
        state["optimizer"] = None
    accel.wait_for_everyone()
    if accel.is_main_process:
        state["world_size"] = accel.num_processes
        save(run_dir, step, model, tokenizer, state, reference.state_dict(), weights=weights, staged=staged)
    accel.wait_for_everyone()


def restore(checkpoint: Path, state: dict, reference_state: dict, optimizer, scheduler, reference, accel,
            run_dir: Path) -> None:
    """Put a resumed run back where ``checkpoint`` left it (optimizer, schedule, reference, RNG, metrics)."""
    check_world_size(checkpoint, state, accel.num_processes)
    optimizer.load_state_dict(load_optimizer(checkpoint, state, accel.process_index))
    scheduler.load_state_dict(state["scheduler"])
    reference.load_state_dict(reference_state)
    set_rng_state(state["rng"])
    if accel.is_main_process:
        truncate_metrics(run_dir, state["step"])

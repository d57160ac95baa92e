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
      checkpoint.json        written last: the step and every file's size and sha256

A checkpoint is written into ``checkpoints/.tmp-<uuid>`` and renamed into place, so a killed
run leaves only whole checkpoints; a disk that fills up is one line naming the checkpoint. A
resume takes the newest checkpoint whose files match its ``checkpoint.json`` (a damaged one is
named on stderr and passed over; with none intact the run starts again from step 0), removes
what killed saves left in ``checkpoints/``, and holds an exclusive ``flock`` on the run
directory while it trains, so two trainers never share one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import random
import re
import shutil
import sys
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from humanline_data.errors import HumanlineError, os_errors
from humanline_data.store import sha256_file

SETTINGS = "settings.json"
METRICS = "metrics.jsonl"
REFRESHES = "refreshes.json"
TRAINER_STATE = "trainer_state.pt"
REFERENCE_STATE = "reference.pt"
CHECKPOINT_MANIFEST = "checkpoint.json"
_LEFTOVER_PREFIXES = (".tmp-", ".old-", ".staged-step-")  # what a killed save leaves in checkpoints/
_STEP_RE = re.compile(r"^step-(\d+)$")


class RunDirError(HumanlineError):
    """--out/--resume does not name a run directory that can be used."""


class DivergedError(HumanlineError):
    """A step's loss or gradient is not finite: the run stops before the update."""


def check_finite_step(run_dir: Path, step: int, loss: float, grad_norm) -> None:
    """Stop the run at ``step`` (1-based) when its loss or gradient norm is NaN or infinite,
    before the optimizer applies it, naming the newest checkpoint to go back to."""
    norm = None if grad_norm is None else float(grad_norm)
    if math.isfinite(loss) and (norm is None or math.isfinite(norm)):
        return
    latest = latest_checkpoint(run_dir)
    back = f"the last good checkpoint is {latest}" if latest else "no checkpoint was saved before it"
    raise DivergedError(f"step {step}: loss {loss} and gradient norm {norm} are not finite, so the run stopped before "
                        f"applying it; {back} (lower --lr and start again, or --resume {run_dir})")


def check_finite_weights(weights: dict, where: Path) -> None:
    """Refuse to save weights holding NaN or infinity (a diverged run never writes a broken model)."""
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise DivergedError(f"{where}: not saved, weight {name} holds NaN or infinity")


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


def check_resume(run_dir: Path, settings: dict) -> Path | None:
    """The newest intact checkpoint of ``run_dir`` (None: start again from step 0) after
    checking the run's settings equal ``settings``."""
    saved = _flat(read_settings(run_dir))
    settings = _flat(settings)
    differ = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
    if differ:
        what = ", ".join(f"{k}: run has {saved.get(k)!r}, now {settings.get(k)!r}" for k in differ)
        raise RunDirError(f"--resume {run_dir}: settings differ from the run's ({what})")
    return intact_checkpoint(run_dir)


def intact_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint whose files match its manifest and whose step metrics.jsonl has
    logged whole (a torn last line is re-run); each one passed over is named on stderr."""
    logged = _logged_steps(run_dir)
    for path in sorted(_checkpoints(run_dir), key=lambda p: -_step_of(p)):
        problem = checkpoint_problem(path)
        problem = problem and f"damaged ({problem})"
        if problem is None and logged is not None and _step_of(path) > logged:
            problem = f"{METRICS} ends at step {logged}, so its later steps run again"
        if problem is None:
            return path
        print(f"warning: passing over {path}: {problem}", file=sys.stderr)
    print(f"warning: {run_dir} holds no intact checkpoint; training starts again from step 0", file=sys.stderr)
    return None


def checkpoint_problem(path: Path) -> str | None:
    """What is wrong with checkpoint folder ``path`` against its ``checkpoint.json``, or None."""
    try:
        manifest = json.loads((path / CHECKPOINT_MANIFEST).read_text())
        listed = manifest["files"]
    except FileNotFoundError:
        return f"no {CHECKPOINT_MANIFEST}: its save did not finish"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{CHECKPOINT_MANIFEST} unreadable ({type(err).__name__})"
    for name, entry in listed.items():
        file = path / name
        try:
            size = file.stat().st_size
            if size != entry["bytes"]:
                return f"{name}: {size} bytes, {entry['bytes']} written"
            if sha256_file(file) != entry["sha256"]:
                return f"{name}: content changed since it was written"
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as err:
            return f"{name}: {err.strerror}"
    return None


def _logged_steps(run_dir: Path) -> int | None:
    """Steps 1..N that metrics.jsonl holds whole, in order (None without the file)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return None
    logged = 0
    for line in path.read_text(errors="replace").splitlines():
        if not _step_line(line, logged + 1) or json.loads(line)["step"] != logged + 1:
            break
        logged += 1
    return logged


def _checkpoints(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / "checkpoints"
    return [p for p in folder.iterdir() if _STEP_RE.match(p.name)] if folder.is_dir() else []


def _step_of(path: Path) -> int:
    return int(_STEP_RE.match(path.name).group(1))


@contextlib.contextmanager
def held_run_dir(run_dir: Path, settings: dict | None, step: int, is_main: bool) -> Iterator[None]:
    """The run directory, held by this run while the block runs: a new one created with
    ``settings`` (:func:`start_run_dir`), else a resumed one reopened at ``step``
    (:func:`reopen_run_dir`). Only the main process (``is_main``) touches it."""
    if not is_main:
        yield
        return
    lock = start_run_dir(run_dir, settings) if settings is not None else reopen_run_dir(run_dir, step)
    try:
        yield
    finally:
        os.close(lock)


def reopen_run_dir(run_dir: Path, step: int) -> int:
    """Hold the run directory of a resumed run (the :func:`lock_run_dir` descriptor), remove what
    killed writes left in it (temporary, replaced and staged files and folders) and keep the
    metrics of its first ``step`` steps."""
    lock = lock_run_dir(run_dir)
    with os_errors(run_dir, error=RunDirError):
        for folder in (run_dir, run_dir / "checkpoints"):
            for path in folder.iterdir() if folder.is_dir() else ():
                if path.name.startswith(_LEFTOVER_PREFIXES):
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        truncate_metrics(run_dir, step)
    return lock


def lock_run_dir(run_dir: Path) -> int:
    """An exclusive ``flock`` on the run directory, held by the returned descriptor until it is
    closed (or the process dies); a second trainer on the same directory is refused."""
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirError(f"{run_dir} is in use by another humanline-train process") from None
    except OSError:
        pass  # a file system without locks: nothing to exclude with
    return fd


def _flat(settings: dict, prefix: str = "") -> dict:
    """Nested settings as {"section.name": value} (for naming what differs)."""
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def start_run_dir(run_dir: Path, settings: dict) -> int:
    """Create the run directory with its settings; the held :func:`lock_run_dir` descriptor."""
    with os_errors(run_dir, error=RunDirError):
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_run_dir(run_dir)
        write_atomic(run_dir / SETTINGS, json.dumps(settings, indent=2, sort_keys=True))
    return lock


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step}"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint whose save finished (its files are not verified: :func:`intact_checkpoint`)."""
    done = [p for p in _checkpoints(run_dir) if (p / CHECKPOINT_MANIFEST).is_file()]
    return max(done, key=_step_of) if done else None


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
    check_finite_weights(weights if weights is not None else policy.state_dict(), target)
    tmp = target.parent / f".tmp-{uuid.uuid4().hex}"
    try:
        with os_errors(target, error=RunDirError):
            tmp.mkdir(parents=True)
            save_policy(policy, tokenizer, tmp, weights)
            if staged is not None:
                for shard in staged.iterdir():
                    os.replace(shard, tmp / shard.name)
                staged.rmdir()
            torch.save({**state, "rng": rng_state()}, tmp / TRAINER_STATE)
            torch.save(reference_state, tmp / REFERENCE_STATE)
            _write_manifest(tmp, step)
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


def _write_manifest(folder: Path, step: int) -> None:
    """``checkpoint.json``: the step and each file's size and sha256, written after every file."""
    files = {str(f.relative_to(folder)): {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
             for f in sorted(folder.rglob("*")) if f.is_file()}
    write_atomic(folder / CHECKPOINT_MANIFEST, json.dumps({"step": step, "files": files}, indent=1))


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
    return _load(checkpoint / TRAINER_STATE), _load(checkpoint / REFERENCE_STATE)


def _load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a file that passed its checksum but does not unpickle (another torch)
        raise RunDirError(f"{path}: cannot be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None


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
    """Keep only metrics of the first ``step`` steps (a resumed run re-logs the rest); a line
    that does not parse (torn by a kill mid-write) goes too."""
    path = run_dir / METRICS
    if path.is_file():
        kept = [line for line in path.read_text(errors="replace").splitlines() if _step_line(line, step)]
        write_atomic(path, "".join(line + "\n" for line in kept))


def _step_line(line: str, step: int) -> bool:
    """Whether ``line`` is a whole metrics row of a step up to ``step``."""
    try:
        row = json.loads(line)
        return isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step
    except ValueError:
        return False


def read_refreshes(run_dir: Path) -> dict[int, str]:
    path = run_dir / REFRESHES
    return {int(k): v for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}


def record_refresh(run_dir: Path, round_index: int, shard: Path) -> None:
    rounds = read_refreshes(run_dir)
    rounds[round_index] = str(shard)
    write_atomic(run_dir / REFRESHES, json.dumps({str(k): v for k, v in sorted(rounds.items())}, indent=2))


def has_checkpoint(run_dir: Path, step: int) -> bool:
    return (checkpoint_dir(run_dir, step) / CHECKPOINT_MANIFEST).is_file()


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


def restore(checkpoint: Path, state: dict, reference_state: dict, optimizer, scheduler, reference, accel) -> None:
    """Put a resumed run back where ``checkpoint`` left it (optimizer, schedule, reference, RNG)."""
    check_world_size(checkpoint, state, accel.num_processes)
    optimizer.load_state_dict(load_optimizer(checkpoint, state, accel.process_index))
    scheduler.load_state_dict(state["scheduler"])
    reference.load_state_dict(reference_state)
    set_rng_state(state["rng"])

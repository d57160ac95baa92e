"""``humanline-train export``: a run's checkpoint as a Hugging Face folder others load.

``humanline-train export RUN [--step N] --out DIR [--merge] [--dtype bf16|fp16|fp32]`` writes

- a full fine-tuning run: the model (config, generation config, safetensors weights, tokenizer
  with its chat template), which ``AutoModelForCausalLM.from_pretrained(DIR)`` and vLLM load;
- a LoRA run: its PEFT adapter folder (``adapter_config.json``, ``adapter_model.safetensors``,
  tokenizer), which ``PeftModel.from_pretrained(base, DIR)`` and vLLM's LoRA support load onto
  the run's initial model; with ``--merge``, the initial model with the adapter merged in (a
  full model, as above).

``--step`` defaults to the newest checkpoint; the weights keep the run's training dtype unless
``--dtype`` asks for another (adapters: the dtype they trained in, float32). ``DIR`` must not
exist or be empty, and may not lie in a dataset folder; it appears whole or not at all (written
next to it, then renamed). Files get the mode the umask gives (``checkpoint.make_readable``).

:func:`loadable_model` gives a LoRA checkpoint a model folder on demand (its merged weights in
``step-N/merged``, kept with the checkpoint), for what loads checkpoints as models: online rounds
sampled by a freshly loaded engine, pipelines evaluating a run's final checkpoint.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

import click
import torch

from humanline_data.errors import HumanlineError
from humanline_data.outputs import check_output
from humanline_train import checkpoint

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
ADAPTER_CONFIG = "adapter_config.json"  # peft's CONFIG_NAME: a folder holding it is an adapter
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft's SAFETENSORS_WEIGHTS_NAME
MERGED = "merged"  # a LoRA checkpoint's merged model folder, written on demand


def is_adapter(folder: Path) -> bool:
    """Whether ``folder`` holds a PEFT adapter (a LoRA run's checkpoint or export)."""
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def export_run(run_dir: Path, out: Path, step: int | None = None, merge: bool = False, dtype: str | None = None) -> Path:
    """Write checkpoint ``step`` (None: the newest) of ``run_dir`` as an HF folder at ``out``
    (see the module docstring); return ``out``. Every argument is checked before anything is written."""
    run_dir, out = Path(run_dir), Path(out)
    source = find_checkpoint(run_dir, step)
    check_export_out(out)
    torch_dtype = DTYPES[dtype] if dtype else None
    if is_adapter(source) and not merge:
        return _write_whole(out, lambda tmp: _save_adapter(source, tmp, torch_dtype))
    base = base_model(source) if is_adapter(source) else None  # found before anything is written
    return _write_whole(out, lambda tmp: _save_model(source, tmp, torch_dtype, base))


def loadable_model(folder: Path) -> Path:
    """``folder`` if it is a model folder; for a LoRA checkpoint, its merged model (in the training
    dtype) in ``folder/merged``, written the first time it is asked for."""
    folder = Path(folder)
    if not is_adapter(folder):
        return folder
    merged = folder / MERGED
    if not (merged / "config.json").is_file():
        _write_whole(merged, lambda tmp: _save_model(folder, tmp, None, base_model(folder)))
    return merged


def find_checkpoint(run_dir: Path, step: int | None) -> Path:
    """Checkpoint ``step`` of ``run_dir`` (None: the newest), or a one-line error naming what there is."""
    if not (run_dir / checkpoint.SETTINGS).is_file():
        raise HumanlineError(f"{run_dir}: not a run directory (no {checkpoint.SETTINGS})")
    if step is None:
        latest = checkpoint.latest_checkpoint(run_dir)
        if latest is None:
            raise HumanlineError(f"{run_dir}: no checkpoint to export")
        return latest
    if not checkpoint.has_checkpoint(run_dir, step):
        names = [p.name.removeprefix("step-") for p in (run_dir / "checkpoints").glob("step-*")]
        have = sorted(int(n) for n in names if n.isdigit() and checkpoint.has_checkpoint(run_dir, int(n)))
        raise HumanlineError(f"{run_dir}: no checkpoint at --step {step} (checkpoints at steps: "
                             f"{', '.join(map(str, have)) or 'none'})")
    return checkpoint.checkpoint_dir(run_dir, step)


def check_export_out(out: Path) -> None:
    """Refuse an ``out`` that holds something or is no folder of its own (outside every dataset
    folder and version: :func:`humanline_data.outputs.check_output`)."""
    check_output(out, "run")
    if out.exists() and any(out.iterdir()):
        raise HumanlineError(f"--out {out}: already exists and is not an empty folder")


def base_model(folder: Path) -> Path:
    """The initial model of the run whose checkpoint is ``folder`` (``RUN_DIR/checkpoints/step-N``)."""
    from humanline_data.models import resolve_model

    return resolve_model(checkpoint.read_settings(folder.parents[1])["model"]["model"])


def training_dtype(folder: Path) -> torch.dtype:
    """The weight dtype of the run whose checkpoint is ``folder``."""
    from humanline_train.policy import weight_dtype

    return weight_dtype(checkpoint.read_settings(folder.parents[1])["model"]["precision"])


def merge_adapter(adapter: Path, base: Path) -> torch.nn.Module:
    """``base`` (a model folder) with the LoRA adapter folder ``adapter`` merged in, in float32."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()


def _save_model(source: Path, target: Path, dtype: torch.dtype | None, base: Path | None) -> None:
    """A model folder of checkpoint ``source`` in ``dtype`` (None: the training dtype); a LoRA
    checkpoint's adapter is merged onto ``base``, the run's initial model."""
    from transformers import AutoModelForCausalLM

    from humanline_data.backends import load_tokenizer

    dtype = dtype or training_dtype(source)
    if base is not None:
        model = merge_adapter(source, base).to(dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    checkpoint.save_policy(model, load_tokenizer(source), target)


def _save_adapter(source: Path, target: Path, dtype: torch.dtype | None) -> None:
    """The adapter folder of LoRA checkpoint ``source`` (its tensors in ``dtype``, None: as trained) with the tokenizer."""
    from safetensors.torch import load_file, save_file

    from humanline_data.backends import load_tokenizer

    shutil.copyfile(source / ADAPTER_CONFIG, target / ADAPTER_CONFIG)
    tensors = load_file(source / ADAPTER_WEIGHTS)
    save_file({k: v.to(dtype or v.dtype) for k, v in tensors.items()}, target / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    load_tokenizer(source).save_pretrained(target)
    checkpoint.make_readable(target)


def _write_whole(out: Path, fill: Callable[[Path], None]) -> Path:
    """Run ``fill(tmp)`` on a new folder next to ``out``, then rename it to ``out`` (absent or empty)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{uuid.uuid4().hex}-{out.name}"
    tmp.mkdir()
    try:
        fill(tmp)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@click.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--step", type=int, default=None, help="The checkpoint's step (default: the newest).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder to write (new or empty).")
@click.option("--merge", is_flag=True, help="LoRA run: the initial model with the adapter merged in (default: the adapter).")
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default=None,
              help="Weight dtype (default: the run's training dtype).")
def export_command(run_dir: Path, step: int | None, out: Path, merge: bool, dtype: str | None) -> None:
    """Write a checkpoint of RUN_DIR as a Hugging Face folder (model, or LoRA adapter) and print its path."""
    click.echo(export_run(run_dir, out, step, merge, dtype))


COMMANDS = [export_command]

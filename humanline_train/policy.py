"""The trained model and its optimizer: precision, LoRA, gradient checkpointing, AdamW + warmup.

LoRA (``--lora-r``, ``--lora-alpha``, ``--lora-dropout``, ``--lora-target-modules``) wraps the
initial model in a PEFT model; its checkpoints hold the adapter folder that
``PeftModel.from_pretrained`` loads (``checkpoint.save_policy``).

Precision (``--precision``): ``fp32`` keeps weights, activations and AdamW states in float32
(TF32 matmuls on a GPU); ``bf16-mixed`` keeps float32 weights and optimizer states and runs
the forward under bf16 autocast; ``bf16`` stores the weights in bfloat16. ``auto`` is
``bf16-mixed`` on a GPU that supports bf16 and ``fp32`` elsewhere (on CPU bf16 distorts token
log-ratios: 20x errors were seen with the embedded model). In every mode the LM head's
log-softmax, the log-ratios, the humanline clip and the losses are float32 (``logprobs``).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch

from humanline_data.errors import HumanlineError
from humanline_train import tracking
from humanline_train.logprobs import LogprobModel
from humanline_train.settings import ModelSettings, TrainConfig


def resolve_precision(precision: str) -> str:
    """``auto`` -> the precision this machine runs (see the module docstring)."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def make_accelerator(config: TrainConfig):
    """The run's Accelerator. Its state is a per-process singleton fixed at first use; it is
    re-made per run so that runs of other precisions can follow each other in one process
    (``train()`` called from Python), the process group staying as it is. Its trackers are the
    run's ``--report-to`` (``tracking``; a tracker that is not installed is an error here, before
    anything is written)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    precision = resolve_precision(config.model.precision)
    if precision == "fp32" and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Accelerator(cpu=not torch.cuda.is_available(), gradient_accumulation_steps=config.data.grad_accum,
                       mixed_precision="bf16" if precision == "bf16-mixed" else "no", **tracking.accelerator_args(config))


def prepare_training(model_path: Path, config: TrainConfig, checkpoint: Path | None, accel, total_steps: int):
    """The run's policy (:func:`load_policy`, as a ``LogprobModel``), optimizer and scheduler, the
    first two prepared by ``accel``. DeepSpeed reads the micro-batch size, gradient accumulation
    and clipping from its own config: they are made the run's first."""
    from accelerate.utils import DistributedType

    # on CPU, forwards of <= max_length padded tokens (length-sorted) waste less on padding than one wide forward
    forward_tokens = config.data.max_length if accel.device.type == "cpu" else None
    policy = LogprobModel(load_policy(model_path, config, checkpoint).to(accel.device), forward_tokens=forward_tokens,
                          layout=config.model.layout)
    optimizer, scheduler = make_optimizer(policy, config, total_steps)
    if accel.distributed_type == DistributedType.DEEPSPEED:
        accel.state.deepspeed_plugin.deepspeed_config.update(
            train_micro_batch_size_per_gpu=config.data.batch_size, gradient_accumulation_steps=config.data.grad_accum,
            gradient_clipping=config.optimizer.max_grad_norm)
    policy, optimizer = accel.prepare(policy, optimizer)
    return policy, optimizer, scheduler


def weight_dtype(precision: str) -> torch.dtype:
    """The dtype the weights are trained (and checkpointed) in under ``precision``."""
    return torch.bfloat16 if resolve_precision(precision) == "bf16" else torch.float32


def check_lora(model: ModelSettings) -> None:
    """Refuse LoRA settings that cannot apply (before anything is written; their ranges: ``TrainConfig.check``)."""
    given = [f"--{f.name.replace('_', '-')}" for f in fields(ModelSettings)
             if f.name.startswith("lora_") and f.name != "lora_r" and getattr(model, f.name) != f.default]
    if not model.lora_r and given:
        raise HumanlineError(f"{given[0]} applies to LoRA runs only: pass --lora-r too")
    if not model.lora_targets:
        raise HumanlineError(f"--lora-target-modules {model.lora_target_modules!r}: no module names")
    if model.lora_r and model.lora_targets != "all-linear":
        _check_lora_targets(model)


def lora_config(model: ModelSettings):
    """peft's ``LoraConfig`` of a run's LoRA settings."""
    from peft import LoraConfig

    return LoraConfig(r=model.lora_r, lora_alpha=model.lora_scale_alpha, lora_dropout=model.lora_dropout,
                      target_modules=model.lora_targets)


def _check_lora_targets(model: ModelSettings) -> None:
    """Every --lora-target-modules name names modules of the model: peft puts the adapters on a
    weightless copy of it (no memory, nothing loaded)."""
    from accelerate import init_empty_weights
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from humanline_data.models import resolve_model

    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model(model.model)))
    try:
        get_peft_model(skeleton, lora_config(model))
    except ValueError as err:
        raise HumanlineError(f"--lora-target-modules {model.lora_target_modules}: {str(err).splitlines()[0]}") from None


def load_policy(model_path: Path, config: TrainConfig, checkpoint: Path | None = None) -> torch.nn.Module:
    """The policy in train mode, in the weight dtype of the run's precision (flex attention for
    packed rows on a GPU). ``checkpoint``: the one a run resumes from. A LoRA run (``lora_r``)
    puts adapters on ``model_path`` (the initial model): new ones, or the checkpoint's (a PEFT
    adapter folder); a full fine-tuning run loads the checkpoint's weights instead of ``model_path``."""
    from transformers import AutoModelForCausalLM

    settings = config.model
    weights = checkpoint if checkpoint is not None and not settings.lora_r else model_path
    # packed rows need a document mask: flex attention's block mask on a GPU, the default (sdpa) elsewhere
    flex = settings.layout == "packed" and torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=weight_dtype(settings.precision),
                                                 **({"attn_implementation": "flex_attention"} if flex else {}))
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if settings.lora_r:
        from peft import PeftModel, get_peft_model

        if settings.gradient_checkpointing:
            model.enable_input_require_grads()
        if checkpoint is not None:
            return PeftModel.from_pretrained(model, checkpoint, is_trainable=True).train()
        model = get_peft_model(model, lora_config(settings))
    return model.train()


def make_optimizer(policy: torch.nn.Module, config: TrainConfig, total_steps: int):
    """(AdamW over the trainable parameters per method.md §8, its learning-rate schedule over
    ``total_steps``: linear warmup from 0, then constant, linear decay or cosine decay to 0 as
    transformers' ``get_scheduler`` makes them)."""
    from transformers import get_scheduler

    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.optimizer.lr, betas=(0.9, 0.999), eps=1e-5, weight_decay=0.01)
    warmup = config.optimizer.warmup
    warmup_steps = round(warmup * total_steps) if warmup < 1 else int(warmup)
    name = config.optimizer.lr_scheduler
    scheduler = get_scheduler("constant_with_warmup" if name == "constant" else name, optimizer,
                              num_warmup_steps=warmup_steps, num_training_steps=total_steps)
    return optimizer, scheduler

"""The trained model and its optimizer: precision, LoRA, gradient checkpointing, AdamW + warmup.

Precision (``--precision``): ``fp32`` keeps weights, activations and AdamW states in float32
(TF32 matmuls on a GPU); ``bf16-mixed`` keeps float32 weights and optimizer states and runs
the forward under bf16 autocast; ``bf16`` stores the weights in bfloat16. ``auto`` is
``bf16-mixed`` on a GPU that supports bf16 and ``fp32`` elsewhere (on CPU bf16 distorts token
log-ratios: 20x errors were seen with the embedded model). In every mode the LM head's
log-softmax, the log-ratios, the humanline clip and the losses are float32 (``logprobs``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from humanline_train import tracking
from humanline_train.settings import TrainConfig


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


def load_policy(weights: Path, config: TrainConfig, lora_state: dict | None) -> torch.nn.Module:
    """The policy in train mode, in the weight dtype of the run's precision (flex attention for
    packed rows on a GPU); LoRA adapters on
    every linear layer when ``lora_r``. ``lora_state``: the adapters of a resumed LoRA run (its
    base is the initial model)."""
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if resolve_precision(config.model.precision) == "bf16" else torch.float32
    # packed rows need a document mask: flex attention's block mask on a GPU, the default (sdpa) elsewhere
    flex = config.model.layout == "packed" and torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=dtype, **({"attn_implementation": "flex_attention"} if flex else {}))
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if config.model.lora_r:
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

        if config.model.gradient_checkpointing:
            model.enable_input_require_grads()
        r = config.model.lora_r
        model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear"))
        if lora_state is not None:
            set_peft_model_state_dict(model, lora_state)
    return model.train()


def make_optimizer(policy: torch.nn.Module, config: TrainConfig, total_steps: int):
    """(AdamW over the trainable parameters, warmup-then-constant LambdaLR) per SPEC §3."""
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.optimizer.lr, betas=(0.9, 0.999), eps=1e-5, weight_decay=0.01)
    warmup = config.optimizer.warmup
    warmup_steps = round(warmup * total_steps) if warmup < 1 else int(warmup)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))
    return optimizer, scheduler

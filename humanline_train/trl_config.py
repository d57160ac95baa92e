"""TRL's config keys, read as ours: a ``DPOConfig`` / ``KTOConfig`` / ``GRPOConfig`` YAML (with
TRL's ``ModelConfig`` keys) runs with ``humanline-train --config``.

A TRL key whose setting means the same thing here is renamed to ours (:data:`RENAMED`; ``beta``
is the KL coefficient ``beta_kl`` under GRPO, the objective's ``beta`` elsewhere; many keys,
such as ``lora_r`` or ``temperature``, already share our name), and the few value conventions
that differ are converted (:data:`CONVERTED`). A key that is neither ours nor TRL's for one of
our settings is refused in one line naming it, never dropped.
"""

from __future__ import annotations

from typing import Any, Callable

from humanline_data.errors import HumanlineError

# TRL key -> our setting (flat flag name), where the two mean the same thing under other names
RENAMED = {
    "learning_rate": "lr",
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "num_train_epochs": "epochs",
    "bf16": "precision",
    "output_dir": "out",
    "model_name_or_path": "model",
    "lr_scheduler_type": "lr_scheduler",
    "warmup_steps": "warmup",  # as ours: below 1 a fraction of the steps, from 1 a number of them
    "warmup_ratio": "warmup",  # TRL before transformers 5 (a fraction; warmup_steps wins when both are given)
    "save_steps": "save_every",
    "save_total_limit": "keep_last",
    "use_peft": "lora_r",
    "epsilon": "eps_low",  # GRPO's ratio clip (also eps_high unless epsilon_high is given)
    "epsilon_high": "eps_high",
    "num_generations": "samples",
    "max_completion_length": "max_new_tokens",
}
TRL_PEFT_RANK = 16  # TRL ModelConfig's lora_r default: the rank of use_peft: true without a lora_r


def _comma(value: Any) -> Any:
    return ",".join(map(str, value)) if isinstance(value, list) else value


# TRL key -> its value in our convention (None: sets nothing, our default stands)
CONVERTED: dict[str, Callable[[Any], Any]] = {
    "bf16": lambda v: ("bf16-mixed" if v else "fp32") if isinstance(v, bool) else v,
    "use_peft": lambda v: (TRL_PEFT_RANK if v else 0) if isinstance(v, bool) else v,
    "report_to": lambda v: _comma(v) or "none",  # a list or a name; [] or "none": no tracker
    "lora_target_modules": _comma,
    "max_steps": lambda v: None if v == -1 else v,  # TRL's -1: no limit
    "lr_scheduler_type": lambda v: "constant" if v == "constant_with_warmup" else v,  # ours warms up in each
}


def translate(values: dict, loss: str | None) -> dict:
    """Our flat settings from a config's flat ``values``: TRL keys renamed and converted, our own
    keys as they are. Raises one line for a key that is neither, or for two keys that set one
    setting to different values."""
    from humanline_train.settings import known_setting

    unknown = [key for key in values if not known_setting(_name(key, loss))]
    if unknown:
        raise HumanlineError(f"{', '.join(unknown)}: not a setting of humanline-train, nor a TRL key it reads "
                             "(docs/training.md lists both)")
    out: dict[str, Any] = {}
    set_by: dict[str, str] = {}
    for key, value in values.items():
        if (key == "use_peft" and value is True and "lora_r" in values) or (key == "warmup_ratio" and "warmup_steps" in values):
            continue  # the rank given beside it; the steps given beside it
        value = CONVERTED[key](value) if key in CONVERTED else value
        if value is None:
            continue
        names = [_name(key, loss)] + (["eps_high"] if key == "epsilon" and "epsilon_high" not in values else [])
        for name in names:
            if name in out and out[name] != value:
                raise HumanlineError(f"{set_by[name]} and {key} both set {name} ({out[name]!r}, {value!r}); keep one")
            out[name], set_by[name] = value, key
    return out


def _name(key: str, loss: str | None) -> str:
    """Our name of a config key (TRL's GRPO ``beta`` is the KL coefficient)."""
    return "beta_kl" if key == "beta" and loss == "grpo" else RENAMED.get(key, key)

"""The reward-model scorer: any ``AutoModelForSequenceClassification`` (ArmoRM included).

Each row becomes one conversation, its prompt ``messages`` followed by the completion as the
assistant turn, rendered with the RM tokenizer's chat template (or, without one, as
``"role: content"`` blocks joined by blank lines). Rows are scored in batches (right padding),
in float32 without gradients. reward = ``output.score[:, 0]`` when the model's output has a
``score`` (ArmoRM's remote code: the preference score after its gating layer), else
``output.logits[:, 0]`` of a one-label head.

Models load from local folders only (``models.resolve_model``) with ``trust_remote_code=True``,
which ArmoRM (RLHFlow/ArmoRM-Llama3-8B-v0.1) needs: only point it at folders you trust.
The weights load at the first call, so a driver that only reads the scorer's identity (the
``ray`` executor's) never loads them.
"""

from __future__ import annotations

from humanline_data.errors import HumanlineError
from humanline_data.models import model_identity, resolve_model
from humanline_data.scorers.base import Scorer


def render_conversation(tokenizer, messages: list[dict], completion: str) -> str:
    """The text the RM reads: prompt messages plus the completion as the assistant turn."""
    conversation = [*messages, {"role": "assistant", "content": completion}]
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(conversation, tokenize=False)
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in conversation)


class RewardModel(Scorer):
    """Scores rows with a sequence-classification reward model loaded from ``model``."""

    def __init__(self, model: str, device: str | None = None) -> None:
        path = resolve_model(model)
        self.path = path
        self.device = device
        self.model = self.tokenizer = None
        self.producer = model_identity(path)
        self.identity = f"rm:{path.resolve().name}@{self.producer['model_sha256']}"
        self.params = {"model": str(path.resolve())}

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            self.path, dtype=torch.float32, trust_remote_code=True
        ).to(self.device).eval()
        _agree_on_padding(self.tokenizer, self.model.config)

    def __call__(self, rows: list[dict]) -> list[tuple[float, dict[str, float]]]:
        import torch

        if self.model is None:
            self._load()
        texts = [render_conversation(self.tokenizer, r["messages"], r["completion"]) for r in rows]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        with torch.no_grad():
            output = self.model(**enc)
        rewards = _reward_column(output).float().cpu().tolist()
        return [(r, {"rm": r}) for r in rewards]


def _agree_on_padding(tokenizer, config) -> None:
    """Pad on the right with the token the model treats as padding (its config's, else the
    tokenizer's pad or eos token), so the model pools at each row's last real token."""
    tokenizer.padding_side = "right"
    if config.pad_token_id is not None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(config.pad_token_id)
    else:
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        config.pad_token_id = tokenizer.pad_token_id


def _reward_column(output):
    """``output.score[:, 0]`` (ArmoRM) or the one-label head's ``output.logits[:, 0]``."""
    score = getattr(output, "score", None)
    if score is not None:
        return score.reshape(score.shape[0], -1)[:, 0]
    logits = output.logits
    if logits.shape[-1] != 1:
        raise HumanlineError(
            f"reward model has {logits.shape[-1]} output labels; the rm scorer needs a one-label head (or an output with .score)"
        )
    return logits[:, 0]

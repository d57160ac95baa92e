"""Per-token log-prob error of bf16 autocast (--precision bf16-mixed) against fp32, with the LM head
computed outside autocast in float32 (what logprobs does) vs inside it in bf16.

The embedded model on CPU, 4 chat pairs (8 rows) of ../shared/data, max length 256.
Usage: python benchmarks/bench_head_precision.py  (writes benchmarks/results/head_precision.json)
"""
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "train"))
from transformers import AutoModelForCausalLM  # noqa: E402
from humanline_data.backends import load_tokenizer  # noqa: E402
from humanline_data.models import resolve_model  # noqa: E402
from humanline_train import logprobs  # noqa: E402
from humanline_train.batches import ShardLoader  # noqa: E402
from real_shards import pair_rows, write  # noqa: E402
path = resolve_model("smollm2-135m-instruct")
tok = load_tokenizer(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
shard = write(Path(tempfile.mkdtemp()) / "p", "pairs", pair_rows(ROOT.parent / "shared" / "data", 8))
batch = next(iter(ShardLoader(shard, "dpo", tok, batch_size=4, max_length=256)))
args = (batch.input_ids, batch.attention_mask, batch.completion_mask)
with torch.no_grad():
    ref = logprobs.completion_logprobs(model, *args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fp32_head = logprobs.completion_logprobs(model, *args)
    original = logprobs._head_logps
    def bf16_head(head, softcap, hidden, labels):
        logits = head(hidden).float()
        return logits.gather(-1, labels[:, None]).squeeze(-1) - logits.logsumexp(-1)
    logprobs._head_logps = bf16_head
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = logprobs.completion_logprobs(model, *args)
m = batch.completion_mask
out = {"tokens": int(m.sum()),
       "fp32_head_mean_abs": float((fp32_head - ref)[m].abs().mean()), "fp32_head_max_abs": float((fp32_head - ref)[m].abs().max()),
       "bf16_head_mean_abs": float((bf16 - ref)[m].abs().mean()), "bf16_head_max_abs": float((bf16 - ref)[m].abs().max()),
       "fp32_head_seq_logratio_mean_abs": float(((fp32_head - ref) * m).sum(-1).abs().mean()),
       "bf16_head_seq_logratio_mean_abs": float(((bf16 - ref) * m).sum(-1).abs().mean())}
(ROOT / "benchmarks" / "results" / "head_precision.json").write_text(json.dumps(out, indent=1) + "\n")
print(json.dumps(out, indent=1))

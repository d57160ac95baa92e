"""humanline-train: humanline DPO/KTO/GRPO streamed from versioned shards."""

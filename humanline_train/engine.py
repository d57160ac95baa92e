"""The live generation engine of an online run (``--refresh-engine live``, the default).

Instead of a fresh backend loaded from each round's checkpoint (``reload``: vLLM start-up is
17-80 s per round on CPU, a minute or more for an 8B model on a GPU), one backend (vLLM when
importable, else transformers; ``humanline_data.backends``) is loaded once from the run's
initial model, at its first round, and kept until the run ends. At each refresh
:meth:`LiveEngine.push` copies the policy's current weights (LoRA merged) into it in memory, as
TRL's vLLM colocate mode, OpenRLHF and verl do.

The round's completions name the engine's weights: producer ``model`` is the folder it
sampled as (the run's initial model, or the checkpoint of that step where one was saved:
``--save-every``, an async run) plus :attr:`LiveEngine.lineage`: ``engine: live``, the training
``step`` and, after a push, ``weights_sha256`` (:func:`weights_fingerprint` of the pushed
tensors, equal to that of a checkpoint saved at that step). A synchronous live run saves no
checkpoint per round (the weights go to the engine in memory; resuming reuses the rounds
recorded in ``refreshes.json``), which saves 1-3 s per round for the 135M model on 2 CPU cores.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

FINGERPRINT_VALUES = 4096  # values sampled (evenly strided) from each tensor by weights_fingerprint


def weights_fingerprint(weights: dict) -> str:
    """sha256 (16 hex digits) over every tensor's name, shape and dtype and up to
    :data:`FINGERPRINT_VALUES` evenly strided values of it: cheap (no pass over all the weights)
    and different after any optimizer step, which moves every trained tensor."""
    h = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach()
        flat = tensor.reshape(-1)
        sample = flat[:: max(1, flat.numel() // FINGERPRINT_VALUES)].to("cpu", torch.float32)
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


class LiveEngine:
    """One backend (``backend``: a name in ``humanline_data.backends.BACKENDS``) loaded from
    ``model`` for the whole run; ``self.backend`` samples (``humanline_data.generate.generate``
    takes it as is), :meth:`push` swaps its weights. Not thread-safe: push only while no round
    is sampling from it (``refresh.Rounds`` pushes after the previous round's result is in)."""

    def __init__(self, model: Path, seed: int = 0, backend: str = "auto") -> None:
        from humanline_data.backends import load_backend

        self.backend = load_backend(backend, Path(model), seed=seed)
        self.lineage: dict = {"engine": "live", "step": 0}

    def push(self, weights: dict, step: int) -> None:
        """Copy ``weights`` (HF name -> tensor, the policy after ``step`` optimizer steps) into
        the engine; the caller may change its tensors afterwards."""
        self.backend.load_weights(weights)
        self.lineage = {"engine": "live", "step": step, "weights_sha256": weights_fingerprint(weights)}

    def close(self) -> None:
        self.backend.close()

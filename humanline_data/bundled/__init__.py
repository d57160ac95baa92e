"""Small real data shipped with the package (see README.md here for sources and license).

- ``gsm8k_train.jsonl``: the 300 GSM8K train problems with the shortest questions
- ``gsm8k_test.jsonl``: the 100 GSM8K test problems with the shortest questions (held out)

Both are unchanged GSM8K lines (question, answer with ``#### `` final answer), in source order;
import one with ``importers.import_sources([bundled.path(bundled.GSM8K_TRAIN)], out)``.
"""

from __future__ import annotations

from pathlib import Path

from humanline_data.errors import HumanlineError

GSM8K_TRAIN = "gsm8k_train.jsonl"
GSM8K_TEST = "gsm8k_test.jsonl"
_HERE = Path(__file__).resolve().parent


def names() -> list[str]:
    """The bundled data files."""
    return sorted(p.name for p in _HERE.glob("*.jsonl"))


def path(name: str) -> Path:
    """Absolute path of the bundled file ``name`` (e.g. :data:`GSM8K_TRAIN`)."""
    if name not in names():
        raise HumanlineError(f"no bundled file {name!r} (have {', '.join(names())})")
    return _HERE / name

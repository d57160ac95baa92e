"""What every scorer is: a callable from a batch of rows to (reward, components) per row."""

from __future__ import annotations

from typing import Any

import pyarrow as pa


class Scorer:
    """A scorer turns rows into rewards.

    ``identity`` is the string stored in the ``scorer`` column, ``params`` and ``producer`` go
    into the manifest. ``__call__`` takes a batch of row dicts with keys ``prompt_id``, ``sample_idx``,
    ``messages`` (list of ``{role, content}``), ``completion``, ``answer`` (str or None) and
    ``metadata`` (dict or None) and returns, per row and in order, ``(reward, components)``:
    a float and a ``{name: float}`` dict of the parts the reward was built from.
    """

    identity: str = ""
    params: dict[str, Any] = {}
    producer: dict[str, Any] = {}

    def check(self, table: pa.Table) -> None:
        """Raise a one-line HumanlineError if ``table`` (the whole input) cannot be scored."""

    def __call__(self, rows: list[dict]) -> list[tuple[float, dict[str, float]]]:
        raise NotImplementedError

    def close(self) -> None:
        """Release worker processes or devices the scorer holds."""

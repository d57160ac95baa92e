"""When the reference changes, and which steps each setting of it serves (method.md §2, §4).

The run is cut into *segments*: the whole run offline, one per shard-refresh round online
(``refresh_every`` steps each). The reference is set

- at a segment's first step, to the current policy, when it ever changes (humanline sync or
  online rounds; an offline never-synced reference is the initial model, prepared once);
- under humanline sync, after the backward and gradient clipping of every ``k``-th step of a
  segment and BEFORE ``optimizer.step()``, to the weights that computed that gradient, so the
  next step trains against theta_t (lag 1..k updates). An engine that updates inside backward
  (DeepSpeed) gets that sync before the step's first backward instead; the step's own
  reference log-probs were taken before it, and theta_t changes only at the update.

A setting of the reference serves the steps of its *window*: up to the next sync point or the
segment's end, whichever comes first.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SyncSchedule:
    total: int  # planned optimizer steps
    sync: bool  # humanline sync
    k: int
    refresh_every: int | None  # online segment length (None: offline)
    update_in_backward: bool = False
    segment_start: int = 0

    @property
    def changes(self) -> bool:
        """Whether the reference is ever re-set (else it is the initial model throughout)."""
        return self.sync or bool(self.refresh_every)

    def segment_end(self) -> int:
        return min(self.total, self.segment_start + self.refresh_every) if self.refresh_every else self.total

    def refresh_due(self, step: int) -> bool:
        return bool(self.refresh_every) and step - self.segment_start >= self.refresh_every

    def at_segment_start(self, step: int) -> bool:
        return self.changes and step == self.segment_start

    def sync_after(self, step: int) -> bool:
        """Whether the humanline sync follows the backward of ``step`` (its window starts at ``step + 1``)."""
        return self.sync and (step + 1 - self.segment_start) % self.k == 0

    def sync_before_backward(self, step: int) -> bool:
        """Whether ``step``'s sync runs before its first backward: the engine updates inside
        backward, and theta_t holds until then (the step's reference log-probs are taken)."""
        return self.update_in_backward and self.sync_after(step)

    def sync_before_update(self, step: int) -> bool:
        """Whether ``step``'s sync runs after its backward and gradient clipping, BEFORE
        ``optimizer.step()`` (method.md §2)."""
        return not self.update_in_backward and self.sync_after(step)

    def window(self, first: int) -> int:
        """Number of steps from ``first`` that a reference set now serves."""
        last = self.segment_end()
        if self.sync:
            last = min(last, first + self.k)
        return max(0, last - first)


def syncs_through(steps: int, sync: bool, k: int, refresh_every: int | None) -> int:
    """Times the reference was set to the current policy during the first ``steps`` optimizer
    steps of a run with :class:`SyncSchedule` ``(sync, k, refresh_every)``: humanline syncs
    (after every ``k``-th step of a segment) plus online round starts after the first (segments
    start every ``refresh_every`` steps); the initial reference is not counted."""
    if not refresh_every:
        return steps // k if sync else 0
    full, rest = divmod(steps, refresh_every)
    syncs = full * (refresh_every // k) + rest // k if sync else 0
    return syncs + max(0, steps - 1) // refresh_every

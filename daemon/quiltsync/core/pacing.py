"""Pacing: how often a folder may make a revision, from the size of its manifests.

Every revision writes a whole manifest (about 270 bytes per file), whatever
changed: a 100,000-file folder under continuous edits, pushed every 30 s, writes
about 78 GB of manifests a day to store a few MB of changes. A folder has a daily
budget of manifest bytes (``max_manifest_bytes_per_day``); the pacer is a token
bucket over it, pure (the clock is passed in):

- it holds at most an hour's budget (a burst: a folder that is quiet most of the
  time pushes each change at once), refilled at ``budget / 86,400`` bytes a second;
- a revision spends its manifest's size; the next may start once the bucket holds
  as much as the last manifest cost (or a full hour's worth, for manifests larger
  than that): under continuous edits, a floor between revisions of
  ``manifest bytes / budget`` days, growing with the folder;
- so a folder never writes more than about budget + budget / 24 a day. Changes are
  never dropped: they gather in the pending batch and go in the next revision.

A budget of 0 turns pacing off.
"""

from __future__ import annotations

from dataclasses import dataclass

DAY_S = 86_400.0
BURST_S = 3_600.0  # the bucket holds this long a budget


@dataclass(slots=True)
class Pacer:
    per_day: float  # manifest bytes a day; 0: no pacing
    tokens: float | None = None  # None: full (nothing spent yet)
    at: float = 0.0  # when ``tokens`` was counted
    last_cost: int = 0  # the size of the last manifest

    @property
    def burst(self) -> float:
        return self.per_day * BURST_S / DAY_S

    def _level(self, now: float) -> float:
        if self.tokens is None:
            return self.burst
        return min(self.burst, self.tokens + max(0.0, now - self.at) * self.per_day / DAY_S)

    def spend(self, now: float, cost: int) -> None:
        """A revision with a manifest of ``cost`` bytes was written at ``now``."""
        self.last_cost = cost
        if self.per_day <= 0:
            return
        self.tokens = self._level(now) - cost
        self.at = now

    def ready_at(self, now: float) -> float:
        """When the next revision may start (``now`` if at once): the bucket must hold
        what the last manifest cost, or an hour's budget if that was larger."""
        if self.per_day <= 0:
            return now
        need = min(float(self.last_cost), self.burst)
        level = self._level(now)
        return now if level >= need else now + (need - level) * DAY_S / self.per_day

    def retune(self, per_day: float) -> None:
        """A reload changed the budget: what was spent stays spent."""
        self.per_day = per_day

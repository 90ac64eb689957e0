"""When is a folder's push due? Pure: events and a clock in, due folders out.

Per folder, a push is due when no change came for ``settle`` seconds, and at the
latest ``max_delay`` seconds after the first pending change even while writes go
on. Past ``max_paths`` dirty paths the batch becomes a full rescan (the paths are
no longer worth tracking one by one). ``urgent`` changes (start-up reconcile,
overflow, retry) are due at once; ``hold_until`` postpones a folder (backoff after
a failed push).
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_MAX_PATHS = 10_000


@dataclass(slots=True)
class Batch:
    """What a due push should look at."""

    paths: set[str] = field(default_factory=set)
    full: bool = False
    first: float = 0.0
    last: float = 0.0
    urgent: bool = False

    @property
    def size(self) -> int:
        return len(self.paths)


@dataclass(frozen=True, slots=True)
class Timing:
    settle: float
    max_delay: float


class Debouncer:
    def __init__(self, max_paths: int = DEFAULT_MAX_PATHS) -> None:
        self.max_paths = max_paths
        self._timing: dict[str, Timing] = {}
        self._pending: dict[str, Batch] = {}
        self._hold: dict[str, float] = {}

    def configure(self, key: str, settle: float, max_delay: float) -> None:
        self._timing[key] = Timing(settle, max_delay)

    def forget(self, key: str) -> None:
        self._timing.pop(key, None)
        self._pending.pop(key, None)
        self._hold.pop(key, None)

    def note(self, key: str, now: float, path: str | None = None, *, urgent: bool = False) -> None:
        """A change under ``key``; ``path=None`` asks for a full rescan."""
        if key not in self._timing:
            return
        b = self._pending.get(key)
        if b is None:
            b = self._pending[key] = Batch(first=now, last=now)
        b.last = now
        b.urgent = b.urgent or urgent
        if path is None:
            b.full = True
        elif not b.full:
            b.paths.add(path)
            if len(b.paths) > self.max_paths:
                b.full = True
                b.paths.clear()

    def hold_until(self, key: str, when: float) -> None:
        self._hold[key] = when

    def release(self, key: str) -> None:
        self._hold.pop(key, None)

    def _due_at(self, key: str) -> float | None:
        b = self._pending.get(key)
        if b is None:
            return None
        t = self._timing[key]
        at = b.first if b.urgent else min(b.last + t.settle, b.first + t.max_delay)
        return max(at, self._hold.get(key, at))

    def due(self, now: float) -> list[str]:
        return sorted(k for k in self._pending if (at := self._due_at(k)) is not None and at <= now)

    def next_deadline(self) -> float | None:
        times = [at for k in self._pending if (at := self._due_at(k)) is not None]
        return min(times) if times else None

    def take(self, key: str) -> Batch | None:
        return self._pending.pop(key, None)

    def overdue(self, key: str, now: float) -> bool:
        """True when the pending batch has waited max_delay already."""
        b = self._pending.get(key)
        return b is not None and now - b.first >= self._timing[key].max_delay

    def pending(self, key: str) -> Batch | None:
        return self._pending.get(key)

    def pending_total(self) -> int:
        return sum(max(1, b.size) for b in self._pending.values())

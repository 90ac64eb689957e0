"""When does each folder push? Pure: events and a clock in, pushes to start out.

The :class:`Scheduler` does no I/O, starts no threads and never reads a clock:
every call that depends on time takes ``now`` (monotonic seconds). The daemon
(the "shell") feeds it changes and push outcomes, and starts what ``due()``
returns. Per folder (keyed by its package name) the rules are:

Batching
    Changes gather in one pending :class:`Batch`. ``path=None`` asks for a full
    rescan. Past ``max_paths`` dirty paths a batch turns into a full rescan (the
    paths are no longer worth tracking one by one).

When a batch is due
    An urgent batch (start-up reconcile, overflow, retry, release) is due at its
    first change. Otherwise it is due once no change came for ``settle``
    seconds, and at the latest ``max_delay`` seconds after its first change even
    while writes go on: ``min(last + settle, first + max_delay)``. While backing
    off after a failure it is not due before the retry time.

One push at a time
    ``due()`` hands a due batch out in a :class:`Start` and marks the folder in
    flight until ``finished()`` reports the outcome of that push. Changes noted
    meanwhile gather in a new batch. A folder removed while its push runs stays
    in flight, so re-adding it cannot start a second push of the same package.

Outcomes
    :class:`Pushed` ends any failure streak and hold. :class:`Failed` retries a
    full rescan with backoff: ``2 ** (failures - 1)`` seconds for a transient
    error, up to ``backoff_cap``; ``30 * 2 ** (failures - 1)`` for a permanent one (a
    misclassified network fault costs half a minute, not the cap), which is
    reported once rather than at every retry. :class:`Refused` (an unsafe push,
    such as a mass deletion) holds the folder: a full rescan is owed, but it is
    not retried until an operator releases the hold or a new change is noted
    (the folder may have recovered; that change is then debounced as usual).

Generations
    ``configure()`` (a new folder, or a reload) bumps the folder's generation
    and gives it a fresh start: failures, backoff and hold are cleared, the
    pending batch is kept and an urgent full rescan is added. A failure or a
    refusal of a push started under an older generation says nothing about the
    new config: it only asks for an urgent full rescan.

Pacing
    ``pace(package, until)``: the folder's next push is not due before ``until``
    (its manifests are large: core/pacing.py); changes gather meanwhile and go in
    that push. Pacing outlives a reload, and counts as progress for ``stuck()``.

Pause and block
    While paused (a reload waits for the pushes in flight), nothing is due.
    While a folder is blocked (its share does not answer), nothing of it is due;
    its changes gather, and are due as usual once the block is lifted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quiltsync.errors import BucketRefuses, PermanentError, PushRefused

DEFAULT_BACKOFF_CAP = 300.0
PERMANENT_FIRST_DELAY = 30.0  # a permanent error is retried after this, doubling up to the cap
DEFAULT_MAX_PATHS = 10_000
STUCK_FAILURES = 5  # consecutive failures that make a folder "stuck"
_MAX_EXPONENT = 1023  # 2.0 ** 1024 overflows a float


@dataclass(frozen=True, slots=True)
class Timing:
    """How long a folder's changes may settle, and how long they may wait at most."""

    settle: float
    max_delay: float


@dataclass(slots=True)
class Batch:
    """What a due push should look at: these paths, or everything when ``full``."""

    paths: set[str] = field(default_factory=set)
    full: bool = False
    first: float = 0.0
    last: float = 0.0
    urgent: bool = False

    @property
    def size(self) -> int:
        return len(self.paths)


@dataclass(frozen=True, slots=True)
class Start:
    """A push the shell must start now; report its end with ``finished()``."""

    package: str
    generation: int
    batch: Batch
    overdue: bool  # the batch waited max_delay already: push files even if they still move


@dataclass(frozen=True, slots=True)
class Pushed:
    """The push succeeded (or there was nothing to push)."""

    changed_during_push: bool = False


@dataclass(frozen=True, slots=True)
class Failed:
    """The push failed: errors back off (permanent ones from 30 s), up to the cap."""

    error: str
    permanent: bool


@dataclass(frozen=True, slots=True)
class Refused:
    """The push was unsafe (mass deletion etc.): the folder is held."""

    reason: str


Outcome = Pushed | Failed | Refused


@dataclass(frozen=True, slots=True)
class Retry:
    """When a failed push is retried, and whether the failure is worth a log line."""

    delay: float  # seconds until the retry
    attempt: int  # consecutive failures so far
    report: bool  # False for a permanent error already reported just before


@dataclass(slots=True)
class _Folder:
    """The scheduling state of one configured folder."""

    timing: Timing
    generation: int
    batch: Batch | None = None
    hold: str | None = None  # why the folder is held
    woken: bool = False  # a change was noted since the hold
    failures: int = 0
    error: str | None = None  # the last failure's error
    reported: str | None = None  # the last failure's error that was reported
    retry_at: float | None = None  # backing off until then
    blocked: str | None = None  # why nothing may start now (its share does not answer)
    paced_until: float | None = None  # no push before then (pacing, see pace())

    @property
    def asleep(self) -> bool:
        """Held, and nothing asked for a push since."""
        return self.hold is not None and not self.woken


class Scheduler:
    """Decides when each folder pushes; see the module docstring for the rules."""

    def __init__(self, *, backoff_cap: float = DEFAULT_BACKOFF_CAP,
                 max_paths: int = DEFAULT_MAX_PATHS) -> None:
        self.backoff_cap = backoff_cap
        self.max_paths = max_paths
        self._folders: dict[str, _Folder] = {}
        self._generations: dict[str, int] = {}  # kept after remove(): generations never repeat
        self._flying: dict[str, int] = {}  # package -> generation of the push in flight
        self._paused = False

    # -- config -------------------------------------------------------------------------
    def configure(self, package: str, timing: Timing, now: float) -> int:
        """Add a folder or replace its config; returns its new generation.

        A fresh start: failures, backoff and hold are cleared. A pending batch is
        kept, and an urgent full rescan (start-up reconcile) is added to it.
        """
        generation = self._generations.get(package, 0) + 1
        self._generations[package] = generation
        old = self._folders.get(package)
        folder = _Folder(timing, generation, batch=old.batch if old is not None else None,
                         paced_until=old.paced_until if old is not None else None)
        self._folders[package] = folder
        self._record(folder, now, None, urgent=True)
        return generation

    def remove(self, package: str) -> None:
        """Forget a folder; a push of it in flight still counts until it finishes."""
        self._folders.pop(package, None)

    def packages(self) -> list[str]:
        return sorted(self._folders)

    # -- changes ------------------------------------------------------------------------
    def note(self, package: str, now: float, path: str | None = None, *,
             urgent: bool = False, since: float | None = None) -> None:
        """A change under ``package``; ``path=None`` asks for a full rescan.

        ``since``: the change was first seen then (a poll that held a file back
        while it was still being written): ``max_delay`` counts from there.
        Unknown packages are ignored. The first change noted on a held folder
        wakes it: the full rescan it owes is debounced from now on.
        """
        folder = self._folders.get(package)
        if folder is None:
            return
        if folder.asleep:
            self._wake(folder, now)
        self._record(folder, now, path, urgent=urgent)
        if since is not None and folder.batch is not None:
            folder.batch.first = min(folder.batch.first, since)

    def _wake(self, folder: _Folder, now: float) -> None:
        folder.woken = True
        folder.batch = Batch(full=True, first=now, last=now)

    def _record(self, folder: _Folder, now: float, path: str | None, *, urgent: bool) -> None:
        batch = folder.batch
        if batch is None:
            batch = folder.batch = Batch(first=now, last=now)
        batch.last = now
        batch.urgent = batch.urgent or urgent
        if path is None:
            batch.full = True
        elif not batch.full:
            batch.paths.add(path)
            if len(batch.paths) > self.max_paths:
                batch.full = True
                batch.paths.clear()

    # -- pushes -------------------------------------------------------------------------
    def due(self, now: float) -> list[Start]:
        """The pushes to start now, by package; each is in flight until finished()."""
        if self._paused:
            return []
        return [self._start(package, folder, now)
                for package, folder in sorted(self._folders.items())
                if (at := self._due_at(package, folder)) is not None and at <= now]

    def _start(self, package: str, folder: _Folder, now: float) -> Start:
        batch, folder.batch, folder.retry_at = folder.batch, None, None
        assert batch is not None  # _due_at() is None without a batch
        self._flying[package] = folder.generation
        overdue = now - batch.first >= folder.timing.max_delay
        return Start(package, folder.generation, batch, overdue)

    def finished(self, package: str, generation: int, now: float,
                 outcome: Outcome) -> Retry | None:
        """A push ended; returns when it is retried if it failed.

        It is no longer in flight if ``generation`` is the one it started with
        (so an outcome the shell makes up for a newer generation, with no push
        behind it, cannot end the real push in flight).
        """
        if self._flying.get(package) == generation:
            del self._flying[package]
        folder = self._folders.get(package)
        if folder is None:
            return None
        if isinstance(outcome, Pushed):
            self._pushed(folder, now, outcome)
            return None
        if generation < folder.generation:
            # the config changed since the push started: its failure says nothing now
            self._record(folder, now, None, urgent=True)
            return None
        if isinstance(outcome, Failed):
            return self._failed(folder, now, outcome)
        self._refused(folder, now, outcome)
        return None

    def _pushed(self, folder: _Folder, now: float, outcome: Pushed) -> None:
        folder.failures, folder.error, folder.reported, folder.retry_at = 0, None, None, None
        folder.hold, folder.woken = None, False
        if outcome.changed_during_push:
            self._record(folder, now, None, urgent=False)

    def _failed(self, folder: _Folder, now: float, outcome: Failed) -> Retry:
        folder.failures += 1
        folder.error = outcome.error
        delay = self._backoff(folder.failures, PERMANENT_FIRST_DELAY if outcome.permanent else 1.0)
        report = not outcome.permanent or outcome.error != folder.reported
        if report:
            folder.reported = outcome.error
        folder.retry_at = now + delay
        self._record(folder, now, None, urgent=True)
        return Retry(delay, folder.failures, report)

    def _backoff(self, failures: int, first: float) -> float:
        return min(self.backoff_cap, first * 2.0 ** min(failures - 1, _MAX_EXPONENT))

    def _refused(self, folder: _Folder, now: float, outcome: Refused) -> None:
        folder.hold, folder.woken, folder.retry_at = outcome.reason, False, None
        folder.batch = Batch(full=True, first=now, last=now)  # owed, not due while asleep

    def release(self, package: str, now: float) -> bool:
        """An operator released the hold: an urgent full rescan is due now.

        Returns whether the folder was held (if not, nothing changes).
        """
        folder = self._folders.get(package)
        if folder is None or folder.hold is None:
            return False
        folder.hold, folder.woken, folder.retry_at = None, False, None
        self._record(folder, now, None, urgent=True)
        return True

    def retry_now(self, package: str, now: float) -> bool:
        """What failed the folder's pushes was fixed (a bucket's workflows config
        now accepts it): its retry is due now instead of after the backoff.

        Returns whether the folder was backing off (if not, nothing changes).
        """
        folder = self._folders.get(package)
        if folder is None or folder.retry_at is None or folder.failures == 0:
            return False
        folder.retry_at = None
        self._record(folder, now, None, urgent=True)
        return True

    def pause(self) -> None:
        self._paused = True

    def block(self, package: str, reason: str | None) -> None:
        """While ``reason`` is set, no push of the folder starts (changes still gather):
        its filesystem does not answer, and a push would hang on it. None lifts it."""
        folder = self._folders.get(package)
        if folder is not None:
            folder.blocked = reason

    def resume(self) -> None:
        self._paused = False

    def pace(self, package: str, until: float | None) -> None:
        """No push of the folder is due before ``until`` (None lifts it)."""
        folder = self._folders.get(package)
        if folder is not None:
            folder.paced_until = until

    def paced(self, package: str, now: float) -> float | None:
        """Until when pacing holds the folder's pending changes back, or None."""
        folder = self._folders.get(package)
        if folder is None or folder.paced_until is None or folder.paced_until <= now or folder.batch is None:
            return None
        return folder.paced_until

    # -- queries ------------------------------------------------------------------------
    def due_at(self, package: str) -> float | None:
        """When the folder's push is due (whether paused or not); None: not pending.

        Also None while its push is in flight, or while it is held and nothing
        was noted since.
        """
        folder = self._folders.get(package)
        return None if folder is None else self._due_at(package, folder)

    def _due_at(self, package: str, folder: _Folder) -> float | None:
        batch = folder.batch
        if batch is None or package in self._flying or folder.asleep or folder.blocked is not None:
            return None
        timing = folder.timing
        at = batch.first if batch.urgent else min(batch.last + timing.settle,
                                                  batch.first + timing.max_delay)
        if folder.paced_until is not None:
            at = max(at, folder.paced_until)
        return at if folder.retry_at is None else max(at, folder.retry_at)

    def next_deadline(self) -> float | None:
        """The earliest time something becomes due; None if nothing can while paused."""
        if self._paused:
            return None
        times = [at for package, folder in self._folders.items()
                 if (at := self._due_at(package, folder)) is not None]
        return min(times, default=None)

    def in_flight(self, package: str | None = None) -> bool:
        """Whether a push of ``package`` (or of any package) is in flight."""
        return bool(self._flying) if package is None else package in self._flying

    def pending(self, package: str) -> Batch | None:
        """A copy of the folder's pending batch, if any."""
        folder = self._folders.get(package)
        if folder is None or folder.batch is None:
            return None
        batch = folder.batch
        return Batch(set(batch.paths), batch.full, batch.first, batch.last, batch.urgent)

    def blocked(self, package: str) -> str | None:
        """Why no push of the folder may start now, or None."""
        folder = self._folders.get(package)
        return None if folder is None else folder.blocked

    def held(self, package: str) -> str | None:
        """Why the folder is held, or None."""
        folder = self._folders.get(package)
        return None if folder is None else folder.hold

    def failures(self, package: str) -> tuple[int, str | None]:
        """Consecutive failures, and the last error."""
        folder = self._folders.get(package)
        return (0, None) if folder is None else (folder.failures, folder.error)

    def stuck(self, now: float, package: str, max_delay: float) -> str | None:
        """Why changes of the folder do not get pushed, or None when they flow."""
        folder = self._folders.get(package)
        if folder is None:
            return None
        if folder.hold is not None:
            return f"held: {folder.hold}"
        if folder.blocked is not None:
            return f"blocked: {folder.blocked}"
        if folder.failures >= STUCK_FAILURES:
            return f"pushes failing {folder.failures} times in a row: {folder.error}"
        bound = 3 * max_delay + 60
        since = folder.batch.first if folder.batch is not None else now
        if folder.paced_until is not None:
            since = max(since, folder.paced_until)  # waiting for pacing is no stall
        waited = now - since
        if waited > bound:
            return f"changes pending for {waited:.0f}s (bound {bound:.0f}s)"
        return None


def outcome_of(error: Exception) -> Failed | Refused:
    """What a push's exception means for its folder's schedule.

    Refused (held until a change or a release): an unsafe push, except one the
    bucket's settings refuse (no versioning, a workflow that rejects the package),
    which no change in the folder can fix (a permanent failure, retried with
    backoff, so a fixed bucket is picked up). Permanent: errors retrying cannot fix soon
    (access denied, no such bucket). Everything else, bugs included, is transient.
    """
    if isinstance(error, PushRefused) and not isinstance(error, BucketRefuses):
        return Refused(str(error))
    return Failed(str(error), isinstance(error, (PermanentError, BucketRefuses)))

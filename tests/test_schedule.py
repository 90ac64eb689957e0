"""The scheduler decides when each folder pushes, from events and a clock alone."""

from __future__ import annotations

import copy

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from quiltsync.core.schedule import (
    PERMANENT_FIRST_DELAY,
    Batch,
    Failed,
    Pushed,
    Refused,
    Retry,
    Scheduler,
    Start,
    Timing,
)


def _ready(settle: float = 2.0, max_delay: float = 10.0, max_paths: int = 100,
           cap: float = 300.0) -> Scheduler:
    """A scheduler with folder "f" configured at t=0 and its start-up rescan pushed."""
    s = Scheduler(backoff_cap=cap, max_paths=max_paths)
    s.configure("f", Timing(settle, max_delay), 0.0)
    (start,) = s.due(0.0)
    s.finished("f", start.generation, 0.0, Pushed())
    return s


def _one(starts: list[Start]) -> Start:
    assert len(starts) == 1, starts
    return starts[0]


# -- ported from test_debounce.py ----------------------------------------------------------
def test_a_push_is_due_once_changes_settle() -> None:
    """No push while changes keep coming within the settle period; due right after it."""
    s = _ready()
    s.note("f", 0.0, "a")
    s.note("f", 1.5, "b")
    assert s.due(3.4) == [] and s.next_deadline() == 3.5
    start = _one(s.due(3.5))
    assert start.package == "f" and start.batch.paths == {"a", "b"} and not start.batch.full


def test_continuous_writes_are_pushed_at_max_delay() -> None:
    """A change every second never settles, but is due max_delay after the first."""
    s = _ready(settle=2.0, max_delay=10.0)
    for t in range(0, 12):
        s.note("f", float(t), "log")
        if t < 10:
            assert s.due(float(t)) == []
    assert _one(s.due(10.0)).overdue


def test_too_many_paths_turn_into_a_full_rescan() -> None:
    """Past max_paths dirty paths, the batch stops listing them and asks for a full rescan."""
    s = _ready(max_paths=3)
    for i in range(5):
        s.note("f", 0.0, f"p{i}")
    batch = _one(s.due(100.0)).batch
    assert batch.full and batch.paths == set()


def test_urgent_changes_are_due_at_once_but_a_backoff_postpones_them() -> None:
    """Start-up and overflow rescans are due immediately; a failed push backs off."""
    s = _ready()
    s.note("f", 5.0, None, urgent=True)
    start = _one(s.due(5.0))
    assert start.batch.full and start.batch.urgent and not start.overdue
    assert s.finished("f", start.generation, 5.0, Failed("boom", False)) == Retry(1.0, 1, True)
    assert s.due(5.9) == [] and s.next_deadline() == 6.0
    assert _one(s.due(6.0)).batch.full


def test_unknown_and_removed_folders_are_ignored() -> None:
    """Events for folders removed by a reload do not schedule pushes."""
    s = _ready()
    s.remove("f")
    s.note("f", 0.0, "a")
    s.note("other", 0.0, "a")
    assert s.due(100.0) == [] and s.next_deadline() is None and s.packages() == []


# -- configure and remove ------------------------------------------------------------------
def test_configure_starts_with_an_urgent_full_rescan_and_counts_generations() -> None:
    """Each configure returns the next generation; the start-up reconcile is due at once."""
    s = Scheduler()
    assert s.configure("f", Timing(2.0, 10.0), 7.0) == 1
    assert s.configure("f", Timing(1.0, 5.0), 8.0) == 2
    start = _one(s.due(8.0))
    assert start == Start("f", 2, Batch(set(), True, 7.0, 8.0, True), False)


def test_a_reload_keeps_pending_changes() -> None:
    """Paths pending when the config changes are still pending after it (merged)."""
    s = _ready()
    s.note("f", 1.0, "a")
    s.note("f", 2.0, "b")
    s.configure("f", Timing(3.0, 30.0), 3.0)
    batch = s.pending("f")
    assert batch is not None and {"a", "b"} <= batch.paths and batch.full and batch.first == 1.0


def test_a_reload_gives_a_fresh_try() -> None:
    """A changed config clears failures, backoff and a hold."""
    s = _ready(cap=60.0)
    s.note("f", 1.0, None, urgent=True)
    s.finished("f", _one(s.due(1.0)).generation, 1.0, Failed("denied", True))
    assert s.failures("f") == (1, "denied") and s.due(2.0) == []
    s.configure("f", Timing(2.0, 10.0), 2.0)
    assert s.failures("f") == (0, None)
    start = _one(s.due(2.0))
    s.finished("f", start.generation, 2.0, Refused("mass deletion"))
    assert s.held("f") == "mass deletion"
    s.configure("f", Timing(2.0, 10.0), 3.0)
    assert s.held("f") is None and _one(s.due(3.0)).batch.full


def test_a_removed_folder_in_flight_blocks_its_readded_twin() -> None:
    """Re-adding a folder whose push still runs does not start a second push meanwhile."""
    s = _ready()
    s.note("f", 1.0, None, urgent=True)
    old = _one(s.due(1.0))
    s.remove("f")
    assert s.in_flight("f") and s.in_flight()
    generation = s.configure("f", Timing(2.0, 10.0), 2.0)
    assert generation > old.generation
    assert s.due(100.0) == [] and s.next_deadline() is None
    assert s.finished("f", old.generation, 100.0, Failed("gone", False)) is None
    assert not s.in_flight() and _one(s.due(100.0)).generation == generation


def test_a_made_up_outcome_for_a_newer_generation_keeps_the_push_in_flight() -> None:
    """A hold restored at reload (Refused for the new generation) does not end the old push."""
    s = _ready()
    s.note("f", 1.0, None, urgent=True)
    old = _one(s.due(1.0))
    generation = s.configure("f", Timing(2.0, 10.0), 2.0)
    s.finished("f", generation, 2.0, Refused("held by an earlier run"))
    assert s.in_flight("f") and s.held("f") == "held by an earlier run"
    s.finished("f", old.generation, 3.0, Failed("boom", False))
    assert not s.in_flight("f") and s.due(1000.0) == []  # still held: not due


# -- outcomes ------------------------------------------------------------------------------
def test_changes_during_a_push_make_a_full_rescan_pending() -> None:
    """Pushed(changed_during_push) asks for a full, non-urgent rescan."""
    s = _ready(settle=2.0)
    s.note("f", 1.0, None, urgent=True)
    start = _one(s.due(1.0))
    assert s.finished("f", start.generation, 4.0, Pushed(changed_during_push=True)) is None
    assert s.pending("f") == Batch(set(), True, 4.0, 4.0, False)
    assert s.due(5.9) == [] and _one(s.due(6.0)).batch.full


def test_changes_noted_during_a_push_wait_for_it() -> None:
    """A push in flight is never due again; its changes are due once it finished."""
    s = _ready()
    s.note("f", 1.0, "a")
    start = _one(s.due(3.0))
    s.note("f", 3.5, "b")
    assert s.in_flight("f") and s.due(50.0) == [] and s.next_deadline() is None
    s.finished("f", start.generation, 50.0, Pushed())
    assert _one(s.due(50.0)).batch.paths == {"b"}


def test_transient_failures_back_off_exponentially_up_to_the_cap() -> None:
    """Delays 1, 2, 4, ... seconds, capped; every transient failure is reported."""
    s = _ready(cap=10.0)
    s.note("f", 0.0, None, urgent=True)
    now, delays = 0.0, []
    for attempt in range(1, 7):
        start = _one(s.due(now))
        retry = s.finished("f", start.generation, now, Failed("timeout", False))
        assert retry is not None and retry.attempt == attempt and retry.report
        assert s.due(now + retry.delay - 0.01) == []
        delays.append(retry.delay)
        now += retry.delay
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    start = _one(s.due(now))
    s.finished("f", start.generation, now, Pushed())
    assert s.failures("f") == (0, None)


def test_a_permanent_error_backs_off_from_30s_and_is_reported_once() -> None:
    """The same permanent error is reported once; a different one is reported again; retries
    wait 30 s, doubling up to the cap."""
    s = _ready(cap=100.0)
    s.note("f", 0.0, None, urgent=True)
    now, reports, delays = 0.0, [], []
    for error in ["denied", "denied", "denied", "no bucket", "denied"]:
        retry = s.finished("f", _one(s.due(now)).generation, now, Failed(error, True))
        assert retry is not None
        reports.append(retry.report)
        delays.append(retry.delay)
        now += retry.delay
    assert delays == [30.0, 60.0, 100.0, 100.0, 100.0]
    assert reports == [True, False, False, True, True]
    assert s.failures("f") == (5, "denied")


def test_a_refused_push_holds_the_folder_until_a_change_or_a_release() -> None:
    """Held: no retry by itself; a new change makes it due after settle; release at once."""
    s = _ready(settle=2.0, max_delay=10.0)
    s.note("f", 1.0, "a")
    start = _one(s.due(3.0))
    assert s.finished("f", start.generation, 3.0, Refused("mass deletion")) is None
    assert s.held("f") == "mass deletion" and s.stuck(3.0, "f", 10.0) == "held: mass deletion"
    pending = s.pending("f")
    assert pending is not None and pending.full
    assert s.due(10_000.0) == [] and s.next_deadline() is None
    s.note("f", 10_000.0, "b")  # it may have recovered
    assert s.held("f") == "mass deletion" and s.next_deadline() == 10_002.0
    start = _one(s.due(10_002.0))
    assert start.batch.full and not start.overdue
    s.finished("f", start.generation, 10_003.0, Refused("mass deletion"))
    assert s.due(20_000.0) == []
    assert s.release("f", 20_000.0) and not s.release("f", 20_000.0)
    assert s.held("f") is None and _one(s.due(20_000.0)).batch.urgent


def test_a_release_ends_a_backoff_too() -> None:
    """A held folder woken by a change whose push then failed is due at once when released."""
    s = _ready(settle=0.0, cap=300.0)
    s.note("f", 1.0, None, urgent=True)
    s.finished("f", _one(s.due(1.0)).generation, 1.0, Refused("mass deletion"))
    s.note("f", 2.0, "a")
    start = _one(s.due(2.0))
    s.finished("f", start.generation, 2.0, Failed("denied", True))
    assert s.held("f") == "mass deletion" and s.next_deadline() == 32.0
    assert s.release("f", 3.0) and _one(s.due(3.0)).batch.full


def test_retry_now_cuts_a_backoff_short_and_nothing_else() -> None:
    """A fixed bucket config makes a backing-off folder due at once; a folder that is
    not failing is left alone, and a failure after it backs off further."""
    s = _ready(settle=0.0, cap=300.0)
    assert not s.retry_now("f", 1.0) and s.next_deadline() is None
    s.note("f", 1.0, "a")
    s.finished("f", _one(s.due(1.0)).generation, 1.0, Failed("workflow rejects", True))
    assert s.next_deadline() == 31.0
    assert s.retry_now("f", 5.0) and not s.retry_now("f", 5.0)
    start = _one(s.due(5.0))
    assert start.batch.full and start.batch.urgent
    retry = s.finished("f", start.generation, 5.0, Failed("workflow rejects", True))
    assert retry is not None and retry.delay == 60.0 and not retry.report  # reported once
    assert not s.retry_now("g", 5.0)  # unknown folder


def test_a_reload_reports_a_lasting_permanent_error_again() -> None:
    """Reported once per config: after a reload the same permanent error is logged once more."""
    s = _ready(cap=60.0)
    s.note("f", 0.0, None, urgent=True)
    retry = s.finished("f", _one(s.due(0.0)).generation, 0.0, Failed("denied", True))
    assert retry is not None and retry.report
    generation = s.configure("f", Timing(2.0, 10.0), 1.0)
    assert _one(s.due(1.0)).generation == generation
    retry = s.finished("f", generation, 1.0, Failed("denied", True))
    assert retry == Retry(30.0, 1, True)


def test_outcomes_of_an_older_generation_ask_only_for_a_rescan() -> None:
    """A failure or refusal from before a reload neither backs off nor holds."""
    s = _ready()
    for outcome in (Failed("boom", False), Failed("denied", True), Refused("unsafe")):
        s.note("f", 1.0, None, urgent=True)
        old = _one(s.due(1.0))
        s.configure("f", Timing(2.0, 10.0), 2.0)
        s.due(2.0)  # nothing: the old push is still in flight
        assert s.finished("f", old.generation, 3.0, outcome) is None
        assert s.held("f") is None and s.failures("f") == (0, None)
        start = _one(s.due(3.0))
        assert start.batch.full and start.batch.urgent
        s.finished("f", start.generation, 3.0, Pushed())


def test_pause_stops_everything_being_due() -> None:
    """While paused (a reload waits for pushes in flight) nothing is due."""
    s = _ready()
    s.note("f", 1.0, None, urgent=True)
    s.pause()
    assert s.due(100.0) == [] and s.next_deadline() is None
    s.resume()
    assert s.next_deadline() == 1.0 and _one(s.due(100.0)).package == "f"


def test_due_pushes_come_sorted_by_package() -> None:
    """Several due folders start together, in package order."""
    s = Scheduler()
    for package in ["c", "a", "b"]:
        s.configure(package, Timing(1.0, 5.0), 0.0)
    assert [start.package for start in s.due(0.0)] == ["a", "b", "c"]
    assert s.packages() == ["a", "b", "c"] and s.in_flight("b") and not s.in_flight("d")


def test_stuck_reasons() -> None:
    """Held, failing five times in a row, or pending far beyond max_delay."""
    s = _ready(max_delay=10.0, cap=1.0)
    s.note("f", 0.0, "a")
    assert s.stuck(90.0, "f", 10.0) is None
    assert s.stuck(91.0, "f", 10.0) == "changes pending for 91s (bound 90s)"
    now = 91.0
    for _ in range(5):
        s.finished("f", _one(s.due(now)).generation, now, Failed("timeout", False))
        now += 1.0
    assert s.stuck(now, "f", 10.0) == "pushes failing 5 times in a row: timeout"
    assert s.stuck(now, "unknown", 10.0) is None


# -- the state machine ---------------------------------------------------------------------
PACKAGES = ["a", "b", "c"]
PATHS = [f"p{i}" for i in range(6)]
ERRORS = ["access denied", "bucket gone"]
TIMINGS = st.tuples(st.floats(0, 20), st.floats(0, 40)).map(lambda t: Timing(t[0], t[0] + t[1]))
CONFIG_CHANGES = st.sampled_from(["add or reload"] * 3 + ["held before", "remove"])


class SchedulerMachine(RuleBasedStateMachine):
    """Random events and a fake clock; a small model of what must hold after each step."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.cap = 300.0
        self.s = Scheduler()
        self.generation: dict[str, int] = {}  # never reset: generations never repeat
        self.timing: dict[str, Timing] = {}  # configured folders
        self.flying: dict[str, Start] = {}  # pushes started and not finished
        self.unsent: dict[str, set[str]] = {}  # paths noted and not handed out yet
        self.first: dict[str, float] = {}  # the pending batch's first and last change
        self.last: dict[str, float] = {}
        self.hold: dict[str, str] = {}
        self.woken: set[str] = set()  # held folders with a change noted since
        self.fails: dict[str, int] = {}
        self.reported: dict[str, str] = {}  # the last failure reported
        self.retry_at: dict[str, float] = {}  # retry times handed out (may be stale)
        self.paused = False

    @initialize(cap=st.sampled_from([1.5, 5.0, 300.0]), max_paths=st.integers(1, 8),
                timings=st.lists(TIMINGS, min_size=len(PACKAGES), max_size=len(PACKAGES)))
    def setup(self, cap: float, max_paths: int, timings: list[Timing]) -> None:
        """Every package configured at t=0."""
        self.cap = cap
        self.s = Scheduler(backoff_cap=cap, max_paths=max_paths)
        for package, timing in zip(PACKAGES, timings, strict=True):
            self.configure(package, timing)

    # -- model helpers ---------------------------------------------------------------------
    def _noted(self, package: str, path: str | None = None, *, wake: bool = True) -> None:
        if package not in self.timing:
            return
        if wake and self._asleep(package):
            self.woken.add(package)
            self.first[package] = self.now
        self.first.setdefault(package, self.now)
        self.last[package] = self.now
        if path is not None:
            self.unsent.setdefault(package, set()).add(path)

    def _forget(self, package: str) -> None:
        for d in (self.unsent, self.first, self.last, self.hold, self.fails, self.reported,
                  self.retry_at):
            d.pop(package, None)
        self.woken.discard(package)

    def _asleep(self, package: str) -> bool:
        return package in self.hold and package not in self.woken

    def _take_due(self) -> list[Start]:
        starts = self.s.due(self.now)
        if self.paused:
            assert starts == []
        assert [x.package for x in starts] == sorted({x.package for x in starts})
        for start in starts:
            p = start.package
            assert p not in self.flying, f"a second push of {p} in flight"  # invariant 1
            assert p in self.timing and start.generation == self.generation[p]
            assert not self._asleep(p)
            unsent = self.unsent.pop(p, set())
            assert start.batch.paths <= unsent
            assert start.batch.full or unsent <= start.batch.paths  # invariant 4
            assert start.overdue == (self.now - self.first[p] >= self.timing[p].max_delay)
            self.flying[p] = start
            del self.first[p], self.last[p]
        return starts

    # -- rules -----------------------------------------------------------------------------
    @rule(package=st.sampled_from(PACKAGES), timing=TIMINGS, change=CONFIG_CHANGES)
    def change_config(self, package: str, timing: Timing, change: str) -> None:
        """A reload adds, replaces or removes one folder."""
        if change == "remove":
            self.remove(package)
        else:
            self.configure(package, timing, held_before=change == "held before")

    def configure(self, package: str, timing: Timing, *, held_before: bool = False) -> None:
        """held_before: as the daemon restores a hold of an earlier run (a Refused for the
        new generation, with no push behind it)."""
        generation = self.s.configure(package, timing, self.now)
        assert generation == self.generation.get(package, 0) + 1
        self.generation[package] = generation
        self.timing[package] = timing
        for d in (self.hold, self.fails, self.reported, self.retry_at):
            d.pop(package, None)
        self.woken.discard(package)
        self._noted(package)
        if package not in self.flying:  # the start-up reconcile is due at once
            due_at = self.s.due_at(package)
            assert due_at is not None and due_at <= self.now
        if held_before:
            assert self.s.finished(package, generation, self.now, Refused("unsafe")) is None
            self._refused(package, "unsafe")

    def remove(self, package: str) -> None:
        self.s.remove(package)
        self.timing.pop(package, None)
        self._forget(package)

    @rule(package=st.sampled_from(PACKAGES), path=st.none() | st.sampled_from(PATHS),
          urgent=st.sampled_from([False, False, False, True]))
    def note(self, package: str, path: str | None, urgent: bool) -> None:
        self.s.note(package, self.now, path, urgent=urgent)
        self._noted(package, path)

    @rule(package=st.sampled_from(PACKAGES), path=st.sampled_from(PATHS),
          gaps=st.lists(st.floats(0, 5), min_size=1, max_size=8))
    def keep_writing(self, package: str, path: str, gaps: list[float]) -> None:
        """A file written again and again (a log), without a pause as long as settle."""
        self.note(package, path, urgent=False)
        for gap in gaps:
            self.advance(gap)
            self.note(package, path, urgent=False)

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0, 30) | st.floats(0, 400))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def due(self) -> None:
        self._take_due()

    @rule()
    def advance_to_next_deadline(self) -> None:
        deadline = self.s.next_deadline()
        if deadline is not None:
            self.now = max(self.now, deadline)
            assert self._take_due() != []

    _when_in_flight = precondition(lambda self: bool(self.flying))

    @_when_in_flight
    @rule(data=st.data(), changed=st.booleans())
    def finish_pushed(self, data: st.DataObject, changed: bool) -> None:
        self._finish(data, Pushed(changed))

    @_when_in_flight
    @rule(data=st.data(), error=st.sampled_from(ERRORS),
          permanent=st.sampled_from([False, False, True]))
    def finish_failed(self, data: st.DataObject, error: str, permanent: bool) -> None:
        self._finish(data, Failed(error, permanent))

    @_when_in_flight
    @rule(data=st.data())
    def finish_refused(self, data: st.DataObject) -> None:
        self._finish(data, Refused("mass deletion"))

    def _finish(self, data: st.DataObject, outcome: Pushed | Failed | Refused) -> None:
        package = data.draw(st.sampled_from(sorted(self.flying)))
        start = self.flying.pop(package)
        retry = self.s.finished(package, start.generation, self.now, outcome)
        if package not in self.timing:
            assert retry is None
        elif isinstance(outcome, Pushed):
            assert retry is None
            self._pushed(package, outcome)
        elif start.generation < self.generation[package]:
            assert retry is None
            self._noted(package, wake=False)  # a rescan; it does not wake a held folder
            if not self._asleep(package):
                due_at = self.s.due_at(package)
                assert due_at is not None and due_at <= self.now  # a rescan due now
        elif isinstance(outcome, Failed):
            self._failed(package, outcome, retry)
        else:
            assert retry is None
            self._refused(package, outcome.reason)

    def _pushed(self, package: str, outcome: Pushed) -> None:
        for d in (self.hold, self.fails, self.reported):
            d.pop(package, None)
        self.woken.discard(package)
        if outcome.changed_during_push:
            self._noted(package)
            batch = self.s.pending(package)
            assert batch is not None and batch.full

    def _failed(self, package: str, outcome: Failed, retry: Retry | None) -> None:
        attempt = self.fails[package] = self.fails.get(package, 0) + 1
        first = PERMANENT_FIRST_DELAY if outcome.permanent else 1.0
        delay = min(self.cap, first * 2.0 ** (attempt - 1))
        report = not outcome.permanent or self.reported.get(package) != outcome.error
        assert retry == Retry(delay, attempt, report)  # invariant 5: reported once in a row
        assert retry.delay <= self.cap  # invariant 3
        if retry.report:
            self.reported[package] = outcome.error
        self.retry_at[package] = self.now + retry.delay
        self._noted(package)
        assert self.s.due_at(package) == self.now + retry.delay <= self.now + self.cap

    def _refused(self, package: str, reason: str) -> None:
        self.hold[package] = reason
        self.woken.discard(package)
        self.first[package] = self.last[package] = self.now
        assert self.s.due_at(package) is None

    @precondition(lambda self: bool(self.hold))
    @rule(package=st.sampled_from(PACKAGES))
    def release(self, package: str) -> None:
        was_held = package in self.hold
        assert self.s.release(package, self.now) == was_held
        if was_held:
            del self.hold[package]
            self.woken.discard(package)
            self._noted(package)
            if package not in self.flying:
                due_at = self.s.due_at(package)
                assert due_at is not None and due_at <= self.now

    @rule(paused=st.booleans())
    def pause_or_resume(self, paused: bool) -> None:
        if paused:
            self.s.pause()
        else:
            self.s.resume()
        self.paused = paused

    # -- invariants ------------------------------------------------------------------------
    @invariant()
    def one_push_per_package(self) -> None:
        """Invariant 1: the scheduler's in-flight view is exactly the pushes started."""
        assert self.s.in_flight() == bool(self.flying)
        for p in PACKAGES:
            assert self.s.in_flight(p) == (p in self.flying)

    @invariant()
    def folder_state_matches_the_model(self) -> None:
        assert self.s.packages() == sorted(self.timing)
        for p in PACKAGES:
            assert self.s.held(p) == self.hold.get(p)
            assert self.s.failures(p)[0] == self.fails.get(p, 0)
            batch = self.s.pending(p)
            if p not in self.first:
                assert batch is None
            else:
                assert batch is not None
                assert (batch.first, batch.last) == (self.first[p], self.last[p])

    @invariant()
    def no_noted_path_is_lost(self) -> None:
        """Invariant 4: every path noted and not handed out is pending (or the batch is full)."""
        for p, paths in self.unsent.items():
            if paths:
                batch = self.s.pending(p)
                assert batch is not None and (batch.full or paths <= batch.paths)

    @invariant()
    def backoff_stays_under_the_cap(self) -> None:
        """Invariant 3: a folder backing off is due by its retry time, at most cap away."""
        for p, retry_at in self.retry_at.items():
            due_at = self.s.due_at(p)
            if retry_at > self.now and due_at is not None:
                assert due_at <= retry_at

    @invariant()
    def next_deadline_is_the_earliest_due_time(self) -> None:
        times = [at for p in PACKAGES if (at := self.s.due_at(p)) is not None]
        expected = None if self.paused or not times else min(times)
        assert self.s.next_deadline() == expected

    @invariant()
    def pending_changes_are_pushed_in_time(self) -> None:
        """Invariant 2: a pending change is due by max(first + max_delay, last change).

        Checked on a copy (the scheduler is a pure object): advance its clock to each
        folder's bound in turn and see due() hand the folder out. A folder that
        failed may in addition wait until its retry time; a held one until woken.
        """
        if self.paused:
            return
        bounds = sorted(
            (max(self.first[p] + self.timing[p].max_delay, self.last[p],
                 self.retry_at.get(p, self.now), self.now), p)
            for p in self.first if p not in self.flying and not self._asleep(p))
        if not bounds:
            return
        ghost, started = copy.deepcopy(self.s), set()
        for bound, p in bounds:
            started |= {start.package for start in ghost.due(bound)}
            assert p in started, f"{p} not due by {bound}"


SchedulerMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40,
                                              deadline=None)
TestSchedulerMachine = SchedulerMachine.TestCase


def test_what_a_push_error_means_for_the_schedule() -> None:
    """Unsafe pushes hold the folder; a bucket without versioning and access problems are
    permanent failures; network faults, conflicts and bugs are transient."""
    from quiltsync.core.schedule import outcome_of
    from quiltsync.errors import (
        DeletionsHeld,
        NotVersioned,
        PermanentError,
        PushConflict,
        PushRefused,
        TransientError,
        WorkflowRefused,
    )

    assert outcome_of(DeletionsHeld("8 of 10")) == Refused("8 of 10")
    assert outcome_of(PushRefused("root gone")) == Refused("root gone")
    assert outcome_of(NotVersioned("off")) == Failed("off", True)
    assert outcome_of(WorkflowRefused("no metadata")) == Failed("no metadata", True)  # not held
    assert outcome_of(PermanentError("denied")) == Failed("denied", True)
    assert outcome_of(TransientError("reset")) == Failed("reset", False)
    assert outcome_of(PushConflict("moved")) == Failed("moved", False)
    assert outcome_of(KeyError("bug")) == Failed("'bug'", False)

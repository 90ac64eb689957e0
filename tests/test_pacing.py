"""Pacing: revisions of huge folders are spaced by their manifests' size (core/pacing.py)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from quiltsync.core.pacing import DAY_S, Pacer
from quiltsync.core.schedule import Pushed, Scheduler, Timing

GB = 1_000_000_000


def continuous_edits(pacer: Pacer, cost: int, seconds: float, max_delay: float = 30.0) -> list[float]:
    """A folder changed all the time: a push every max_delay, unless pacing defers it."""
    now, pushes = 0.0, []
    while now < seconds:
        now = max(now, pacer.ready_at(now))
        if now >= seconds:
            break
        pacer.spend(now, cost)
        pushes.append(now)
        now += max_delay
    return pushes


def test_a_100k_file_folder_under_continuous_edits_writes_about_1_gb_of_manifests_a_day() -> None:
    cost = 34_700_000  # 100,000 files at ~347 bytes of manifest each
    pushes = continuous_edits(Pacer(GB), cost, DAY_S)
    assert len(pushes) * cost <= 1.05 * GB
    assert len(pushes) >= 25  # about one revision every 50 minutes, not one a day
    gaps = [b - a for a, b in itertools.pairwise(pushes[1:])]
    assert min(gaps) >= cost / (GB / DAY_S) - 1e-6  # the floor grows with the manifest
    # without pacing the same edits write 2,880 manifests: 100 GB
    assert len(continuous_edits(Pacer(0), cost, DAY_S)) * cost > 99 * GB


def test_a_small_or_quiet_folder_is_never_delayed() -> None:
    small = Pacer(GB)
    assert continuous_edits(small, 350_000, 3600) == [30.0 * i for i in range(120)]
    quiet = Pacer(GB)
    for hour in range(48):  # a 35 MB manifest once an hour: within the budget, never waits
        quiet.spend(hour * 3600.0, 34_700_000)
        assert quiet.ready_at(hour * 3600.0 + 3600) == hour * 3600.0 + 3600


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10 * GB), st.lists(st.tuples(st.floats(0, 7200), st.integers(0, 500_000_000)), max_size=60))
def test_manifest_bytes_never_exceed_the_budget_plus_one_hour_plus_one_manifest(
        per_day: int, attempts: list[tuple[float, int]]) -> None:
    """Whatever the times and sizes: written bytes by time T <= burst + budget * T/day + the largest manifest."""
    pacer, now, spent, largest = Pacer(per_day), 0.0, 0, 0
    for wait, cost in attempts:
        now = max(now + wait, pacer.ready_at(now + wait))
        pacer.spend(now, cost)
        spent, largest = spent + cost, max(largest, cost)
        assert spent <= pacer.burst + per_day * now / DAY_S + largest + 1


def test_pacing_defers_a_push_keeps_every_change_and_is_not_a_stall() -> None:
    s = Scheduler()
    s.configure("p", Timing(2, 30), 0.0)
    [start] = s.due(0.0)
    s.finished("p", start.generation, 1.0, Pushed())
    s.pace("p", 3000.0)
    for i, t in enumerate(range(10, 2000, 10)):
        s.note("p", float(t), f"f{i}")
    assert s.due(1990.0) == [] and s.due_at("p") == 3000.0
    assert s.stuck(2999.0, "p", 30) is None and s.paced("p", 2999.0) == 3000.0
    [start] = s.due(3000.0)
    assert len(start.batch.paths) == 199  # nothing dropped: one revision carries them all
    assert s.paced("p", 3000.0) is None
    s.finished("p", start.generation, 3001.0, Pushed())
    s.configure("p", Timing(2, 30), 3001.0)  # a reload keeps the pacing
    s.pace("p", 5000.0)
    s.configure("p", Timing(2, 30), 3002.0)
    assert s.due_at("p") == 5000.0

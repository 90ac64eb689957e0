"""The debouncer decides when a push is due, from events and a clock alone."""

from __future__ import annotations

from quiltsync.core.debounce import Debouncer


def _deb(settle: float = 2.0, max_delay: float = 10.0, max_paths: int = 100) -> Debouncer:
    d = Debouncer(max_paths=max_paths)
    d.configure("f", settle, max_delay)
    return d


def test_a_push_is_due_once_changes_settle() -> None:
    """No push while changes keep coming within the settle period; due right after it."""
    d = _deb()
    d.note("f", 0.0, "a")
    d.note("f", 1.5, "b")
    assert d.due(3.4) == [] and d.next_deadline() == 3.5
    assert d.due(3.5) == ["f"]
    assert d.take("f").paths == {"a", "b"}


def test_continuous_writes_are_pushed_at_max_delay() -> None:
    """A change every second never settles, but is due max_delay after the first."""
    d = _deb(settle=2.0, max_delay=10.0)
    for t in range(0, 12):
        d.note("f", float(t), "log")
        if t < 10:
            assert d.due(float(t)) == []
    assert d.due(10.0) == ["f"] and d.overdue("f", 10.0)


def test_too_many_paths_turn_into_a_full_rescan() -> None:
    """Past max_paths dirty paths, the batch stops listing them and asks for a full rescan."""
    d = _deb(max_paths=3)
    for i in range(5):
        d.note("f", 0.0, f"p{i}")
    batch = d.take("f")
    assert batch.full and batch.paths == set()


def test_urgent_changes_are_due_at_once_but_a_hold_postpones_them() -> None:
    """Start-up and overflow rescans are due immediately; a backoff hold delays a folder."""
    d = _deb()
    d.note("f", 5.0, None, urgent=True)
    assert d.due(5.0) == ["f"]
    d.hold_until("f", 9.0)
    assert d.due(8.9) == [] and d.due(9.0) == ["f"]


def test_unknown_and_forgotten_folders_are_ignored() -> None:
    """Events for folders removed by a reload do not schedule pushes."""
    d = _deb()
    d.forget("f")
    d.note("f", 0.0, "a")
    d.note("other", 0.0, "a")
    assert d.due(100.0) == [] and d.next_deadline() is None

"""Which parts of a folder are polled, and when a polled change may be pushed (pure)."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from quiltsync.core.schedule import Pushed, Scheduler, Timing
from quiltsync.core.types import FileStat
from quiltsync.core.watchmode import (
    Mount,
    PollTracker,
    effective_interval,
    kind_of,
    mount_of,
    parse_mountinfo,
    plan_layout,
)

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:25 / /srv/lab rw - nfs4 server:/export/lab rw,vers=4.2
31 30 0:26 / /srv/lab/scratch rw - tmpfs tmpfs rw
40 22 0:40 / /data/my\\040share rw - cifs //pc/share rw
41 22 0:41 / /data/plain rw - ext4 /dev/sdb1 rw
42 41 0:42 / /data/plain/instrument rw - fuse.sshfs pc:/runs rw
43 42 0:43 / /data/plain/instrument/inner rw - nfs host:/x rw
44 41 0:44 / /data/plain2 rw - nfs host:/y rw
"""


def test_mountinfo_gives_points_and_types_with_escapes_undone() -> None:
    mounts = parse_mountinfo(MOUNTINFO + "garbage line\n")
    assert Mount("/data/my share", "cifs") in mounts
    assert Mount("/srv/lab", "nfs4") in mounts
    assert mount_of("/srv/lab/scratch/x", mounts) == Mount("/srv/lab/scratch", "tmpfs")
    assert mount_of("/srv/labx", mounts) == Mount("/", "ext4")


def test_kinds() -> None:
    assert [kind_of(t) for t in ("nfs4", "cifs", "fuse.sshfs", "fuseblk", "9p", "lustre", "ext4", "xfs")] == \
        ["network", "network", "fuse", "fuse", "network", "cluster", "local", "local"]


def test_auto_polls_a_remote_root_whole() -> None:
    lay = plan_layout("auto", "/srv/lab/run1", "nfs4", parse_mountinfo(MOUNTINFO))
    assert [(p.rel, p.polled) for p in lay.parts] == [("", True)]
    assert lay.describe(30.0) == "polled every 30 s: / (nfs4)"


def test_auto_polls_the_outermost_remote_mounts_inside_a_local_folder_only() -> None:
    lay = plan_layout("auto", "/data/plain", "ext4", parse_mountinfo(MOUNTINFO))
    # the nfs mount inside the sshfs one is covered by the sshfs poll; /data/plain2 is not inside
    assert [(p.rel, p.fstype, p.polled) for p in lay.parts] == [("", "ext4", False),
                                                                 ("instrument", "fuse.sshfs", True)]
    assert lay.describe(30.0, 30.0) == "events on / (ext4); polled every 30 s: instrument/ (fuse.sshfs)"
    assert "stretched from 30 s" in lay.describe(75.0, 30.0)


def test_a_local_mount_inside_a_local_folder_gets_events_and_the_last_mount_on_a_point_counts() -> None:
    mounts = [Mount("/", "ext4"), Mount("/data/plain", "ext4"), Mount("/data/plain/instrument", "fuse.sshfs"),
              Mount("/data/plain/instrument", "ext4")]  # a local disk mounted over the sshfs mount
    assert plan_layout("auto", "/data/plain", "ext4", mounts).polled == ()
    assert plan_layout("auto", "/data/plain", "ext4", mounts[:3]).polled[0].rel == "instrument"


def test_events_and_poll_are_what_they_say() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert plan_layout("events", "/srv/lab", "nfs4", mounts).polled == ()
    assert [p.rel for p in plan_layout("poll", "/data/plain", "ext4", mounts).polled] == [""]


def test_the_interval_stretches_to_keep_polls_under_two_percent_of_a_core() -> None:
    assert effective_interval(30.0, 0.1) == 30.0
    assert effective_interval(30.0, 1.2) == 60.0  # 1.2 s of CPU per poll: every 60 s is 2%


def test_a_change_first_seen_long_ago_makes_its_batch_overdue() -> None:
    s = Scheduler()
    s.configure("a/b", Timing(2.0, 30.0), 0.0)
    s.due(0.0)
    s.finished("a/b", 1, 0.0, Pushed())
    s.note("a/b", 100.0, "x", urgent=True, since=65.0)
    [start] = s.due(100.0)
    assert start.overdue and start.batch.paths == {"x"}


# -- the tracker, as a state machine: files written, deleted and polled --------------------------------
MAX_DELAY = 30.0


class PollMachine(RuleBasedStateMachine):
    """Another host writes and deletes files; polls come every few seconds.

    Safety: a path is handed out (ready) only when the poll saw it as the poll
    before did, unless it waited max_delay. Nothing lost: after every poll, a
    path whose stat differs from what was last handed out (or the baseline) is
    waiting. Liveness: two polls that see nothing new leave nothing waiting.
    """

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, FileStat] = {"a": FileStat(1, 1, 1)}
        self.tracker = PollTracker(MAX_DELAY, baseline=dict(self.files))
        self.handed: dict[str, FileStat | None] = dict(self.files)  # what the daemon was told last
        self.now = 0.0
        self.last_seen: dict[str, FileStat] = dict(self.files)
        self.clock = 1

    @rule(path=st.sampled_from(["a", "b", "c/d"]))
    def write(self, path: str) -> None:
        self.clock += 1
        old = self.files.get(path)
        self.files[path] = FileStat((old.size if old else 0) + 1, self.clock, 7)

    @rule(path=st.sampled_from(["a", "b", "c/d"]))
    def delete(self, path: str) -> None:
        self.files.pop(path, None)

    @rule(dt=st.sampled_from([2.0, 5.0, 30.0]))
    def poll(self, dt: float) -> None:
        self.now += dt
        snapshot = dict(self.files)
        obs = self.tracker.observe(self.now, snapshot, interval=dt)
        assert not obs.full and not (obs.settled & set(obs.overdue))
        for path in obs.settled:  # stood still since the poll before
            assert snapshot.get(path) == self.last_seen.get(path), path
            self.handed[path] = snapshot.get(path)
        for path, since in obs.overdue.items():  # waited the bound, and at least two intervals
            assert self.now - since >= max(MAX_DELAY, 2 * dt), path
            self.handed[path] = snapshot.get(path)
        self.last_seen = snapshot

    @invariant()
    def nothing_is_lost(self) -> None:
        waiting = set(self.tracker.waiting)
        for path in set(self.last_seen) | set(self.handed):
            if self.last_seen.get(path) != self.handed.get(path):
                assert path in waiting, (path, self.last_seen.get(path), self.handed.get(path))

    @rule()
    def two_quiet_polls(self) -> None:
        self.poll(5.0)
        self.poll(5.0)
        assert not self.tracker.waiting


TestPollMachine = PollMachine.TestCase
TestPollMachine.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)


def test_the_first_poll_without_a_baseline_asks_for_a_full_reconcile() -> None:
    t = PollTracker(MAX_DELAY)
    assert t.observe(0.0, {"a": FileStat(1, 1, 1)}).full
    obs = t.observe(2.0, {"a": FileStat(1, 1, 1)})
    assert not obs.settled and not obs.overdue


def test_a_file_written_continuously_is_handed_out_after_max_delay() -> None:
    t = PollTracker(10.0, baseline={})
    for i in range(1, 5):
        obs = t.observe(i * 4.0, {"f": FileStat(i, i, 1)}, interval=4.0)
    assert obs.overdue == {"f": 4.0} and not obs.settled  # first seen changing at 4 s, 12 s later: overdue


def test_a_max_delay_at_or_below_the_interval_still_waits_two_intervals() -> None:
    """The defaults (max_delay 30 s, poll 30 s) must not push a growing file at its second sighting."""
    t = PollTracker(30.0, baseline={})
    t.observe(0.0, {"f": FileStat(1, 1, 1)}, interval=30.0)
    obs = t.observe(30.5, {"f": FileStat(2, 2, 1)}, interval=30.0)
    assert not obs.overdue and not obs.settled and t.waiting == {"f"}
    obs = t.observe(61.0, {"f": FileStat(2, 2, 1)}, interval=30.0)
    assert obs.settled == {"f"}


def test_a_reload_keeps_a_share_that_is_not_mounted_now_as_a_polled_part() -> None:
    from quiltsync.core.watchmode import keep_polled

    before = plan_layout("auto", "/data/plain", "ext4", parse_mountinfo(MOUNTINFO))
    now = plan_layout("auto", "/data/plain", "ext4", [Mount("/", "ext4"), Mount("/data/plain", "ext4")])
    assert now.polled == ()
    kept = keep_polled(now, before)
    assert [(p.rel, p.fstype) for p in kept.polled] == [("instrument", "fuse.sshfs")]
    assert keep_polled(before, before) == before

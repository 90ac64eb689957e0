"""The folders' roots as the daemon sees them: how each is watched, failed, lost, back.

Watching a folder starts with its layout (``local.fstype.layout``): inotify
events for the parts on local filesystems, a stat-only poll (``service.polls``)
for the parts on network and FUSE filesystems, which send no events for changes
made elsewhere. ``watch.started`` and the folder's ``watches`` health row say
which parts get what, their filesystem type and the poll interval.

A root that cannot be watched (missing, unreadable, or on a filesystem that
does not answer) is reported (``watch.failed``) and tried again at every root
check; a root that vanishes or is replaced (another inode) is reported
(``watch.lost``) and unwatched; when it is back it is watched again and the
caller reconciles it. A poll that fails, or stops answering, is reported
(``watch.failed``) and the folder's pushes are blocked (a push would hang on
the share too, or push an unmounted share as deleted) until a poll succeeds
again (``watch.recovered``, then a full reconcile). When the mount table
changes, the folders are planned again: a share mounted inside a folder after
the start is polled from then on (one that left the table stays planned). Without a watcher (in-process
tests), a root counts as watched when it is a directory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from quiltsync.config import FolderConfig
from quiltsync.core.watchmode import NOT_ANSWERING, Layout, Mount, is_stretched, keep_polled
from quiltsync.local.scanner import make_ignore_spec
from quiltsync.service.health import CheckResult
from quiltsync.service.polls import PollDone

ROOT_CHECK_SECONDS = 5.0  # how often roots are checked for vanishing or coming back
FIRST_POLL = "waiting for the first poll of its share"

Note = Callable[[str | None, float | None], None]  # (path or None for a full rescan, first seen if overdue)


@dataclass(slots=True)
class RootState:
    config: FolderConfig
    watching: bool = False
    problem: str | None = None
    layout: Layout | None = None
    interval: float | None = None  # the polls' effective interval, when some parts are polled
    poll_problem: str | None = None  # why the last poll failed, or that it hangs
    waiting: frozenset[str] = field(default_factory=frozenset)  # polled changes that have not settled
    first_poll: bool = False  # the polls started and none has answered yet: pushes wait

    def describe(self) -> str:
        if self.layout is None:
            return "not watched"
        return self.layout.describe(self.interval, self.config.poll_seconds)


@dataclass(slots=True)
class Hooks:
    """What watching needs from the daemon."""

    report: Callable[[CheckResult], None] = lambda _r: None  # a watches health row
    pushed: Callable[[str], Mapping[str, Any]] | None = None  # package -> its files as last pushed
    block: Callable[[str, str | None], None] = lambda _p, _r: None  # package, why pushes must wait


class Roots:
    def __init__(self, watcher: Any, log: Any, polls: Any = None, hooks: Hooks | None = None) -> None:
        self.watcher = watcher
        self.polls = polls
        self.log = log
        self.hooks = hooks or Hooks()
        self._mounts: list[Mount] | None = None  # the mount table as the last root check read it

    def watch(self, st: RootState, previous: Layout | None = None) -> None:
        """``previous``: the layout the folder had (a reload): a share it polled that is not
        mounted now stays planned, so that its poll fails instead of its files being deleted."""
        f = st.config
        if self.watcher is None:
            st.watching = f.path.is_dir()
            return
        from quiltsync.local.fstype import layout
        from quiltsync.local.watcher import installed_watches

        lay = layout(f.path, f.watch, self._table())
        if previous is not None and previous.path == lay.path and f.watch != "events":
            lay = keep_polled(lay, previous)
        self.unwatch(f.package)  # a reload or a new mount may move a part between events and polling
        st.layout, st.interval, st.poll_problem, st.waiting = lay, None, None, frozenset()
        st.first_poll = bool(lay.polled and self.polls is not None)
        if lay.root.fstype == NOT_ANSWERING:
            self._failed(st, f"{f.path} does not answer (a hung NFS/SMB server or a stopped FUSE process?)")
            self.hooks.block(f.package, st.problem)
            return
        # pushes of a folder with polled parts wait for its first poll: it says whether the share
        # answers, and which files are still being written
        self.hooks.block(f.package, FIRST_POLL if st.first_poll else None)
        before = installed_watches()
        if lay.events and not self._watch_events(st, lay):
            st.first_poll = False  # no poll starts: pushes go on as for any folder that cannot be watched
            self.hooks.block(f.package, None)
            return
        after = installed_watches()
        if lay.polled and self.polls is not None:
            st.interval = f.poll_seconds
            baseline = self.hooks.pushed(f.package) if self.hooks.pushed is not None else None
            self.polls.watch(f, lay, baseline)
        st.watching, st.problem = True, None
        self.log.info("watch.started", package=f.package, folder=str(f.path), watch=st.describe(),
                      parts=lay.as_json(st.interval),
                      directories=(after - before) if lay.events and before >= 0 and after >= 0 else None)
        self.hooks.report(CheckResult("watches", f.package, "ok", st.describe()))

    def rewatch_around_polls(self, st: RootState) -> None:
        """After an inotify overflow: watchdog rebuilds its recursive watches only, so the
        watches around a folder's polled mounts (and directories made meanwhile) are set again."""
        lay = st.layout
        if self.watcher is not None and lay is not None and lay.events and lay.polled and st.watching:
            self._watch_events(st, lay)

    def _watch_events(self, st: RootState, lay: Layout) -> bool:
        """inotify for the local part only (the watch stops at the polled mounts); False: failed."""
        f = st.config
        try:
            self.watcher.watch(f.package, f.path, make_ignore_spec(f.ignore), [p.rel for p in lay.polled])
        except OSError as e:
            self._failed(st, f"cannot watch {f.path}: {e.strerror or e}")
            return False
        return True

    def _failed(self, st: RootState, problem: str) -> None:
        if st.problem != problem:
            self.log.error("watch.failed", package=st.config.package, path=str(st.config.path), detail=problem,
                           retry_in_s=ROOT_CHECK_SECONDS)
            self.hooks.report(CheckResult("watches", st.config.package, "fail", problem))
        st.watching, st.problem = False, problem

    def unwatch(self, package: str) -> None:
        if self.watcher is not None:
            self.watcher.unwatch(package)
        if self.polls is not None:
            self.polls.unwatch(package)

    def check(self, roots: Mapping[str, RootState], came_back: Callable[[str], None]) -> None:
        """Notice lost roots, hung polls and new mounts; re-watch what is back and call ``came_back``."""
        lost = set(self.watcher.lost()) if self.watcher is not None else set()
        stalled = self.polls.stalled() if self.polls is not None else {}
        replan = self._mounts_changed()
        for pkg, st in roots.items():
            if pkg in lost:
                self.unwatch(pkg)
                st.watching = False
                st.problem = f"folder {st.config.path} vanished or was replaced"
                self.log.error("watch.lost", package=pkg, path=str(st.config.path), detail=st.problem,
                               retry_in_s=ROOT_CHECK_SECONDS)
            elif not st.watching or (replan and self._layout_moved(st)):
                self.watch(st)
                if st.watching:
                    came_back(pkg)
            elif pkg in stalled:
                self._poll_failed(st, f"the share does not answer: a poll has waited {stalled[pkg]:.0f} s "
                                      "in a filesystem call (a hung NFS/SMB server or a stopped FUSE process?); "
                                      "pushes of this folder wait, other folders go on")

    def _table(self) -> list[Mount]:
        """The mount table, read once per root check (or per watch)."""
        from quiltsync.local.fstype import mounts

        if self._mounts is None:
            self._mounts = mounts()
        return self._mounts

    def _mounts_changed(self) -> bool:
        if self.watcher is None:
            return False
        before, self._mounts = self._mounts, None
        return before is not None and self._table() != before

    def _layout_moved(self, st: RootState) -> bool:
        """A share was mounted inside the folder (or the root's kind changed): plan again.

        A polled share that vanished from the table is *not* planned away: its poll
        fails ("unmounted?") and the folder's pushes wait, so that the empty mount
        point is never pushed as the share's files deleted.
        """
        from quiltsync.local.fstype import layout

        if st.layout is None:
            return False
        new = layout(st.config.path, st.config.watch, self._table())
        old_polled = {p.rel for p in st.layout.polled}
        new_polled = {p.rel for p in new.polled}
        return new_polled != old_polled and old_polled <= new_polled

    def polled(self, st: RootState, done: PollDone, note: Note) -> None:
        """A poll of the folder's polled parts finished: report, then note what is ready to push."""
        if done.error is not None:
            self._poll_failed(st, f"cannot poll {st.config.path}: {done.error}")
            return
        f = st.config
        stretched = is_stretched(done.interval, f.poll_seconds)
        if st.interval is not None and stretched != is_stretched(st.interval, f.poll_seconds):
            self.log.info("watch.interval", package=f.package, interval_s=round(done.interval, 1),
                          poll_seconds=f.poll_seconds, poll_cpu_s=round(done.cpu_seconds, 3),
                          detail="polls stretched to stay under 2% of a core" if stretched
                          else "polls back at poll_seconds")
        changed = st.interval is None or abs(done.interval - st.interval) > 0.1 * st.interval
        st.interval, st.waiting = done.interval, done.waiting
        if st.first_poll or st.poll_problem is not None:
            self.hooks.block(f.package, None)  # the share answers: pushes may start
        st.first_poll = False
        if st.poll_problem is not None:
            st.poll_problem = None
            self.log.info("watch.recovered", package=f.package, folder=str(f.path), watch=st.describe())
            self.hooks.report(CheckResult("watches", f.package, "ok", st.describe()))
            note(None, None)  # whatever happened while it did not answer
        elif changed:
            self.hooks.report(CheckResult("watches", f.package, "ok", st.describe()))
        if done.full:
            note(None, None)
        for path in sorted(done.settled):
            note(path, None)
        for path, since in sorted(done.overdue.items()):
            note(path, since)

    def _poll_failed(self, st: RootState, problem: str) -> None:
        """Reported once, and the folder's pushes wait; the next poll that succeeds reports the recovery."""
        if st.poll_problem is None:
            self.log.error("watch.failed", package=st.config.package, path=str(st.config.path), detail=problem)
            self.hooks.report(CheckResult("watches", st.config.package, "fail", problem))
            self.hooks.block(st.config.package, problem)
        st.poll_problem = problem

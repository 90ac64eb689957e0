"""The folders' roots as the daemon sees them: how each is watched, failed, lost, back.

Watching a folder starts with its layout (``local.fstype.layout``): inotify
events for the parts on local filesystems, a stat-only poll (``service.polls``)
for the parts on network and FUSE filesystems, which send no events for changes
made elsewhere. ``watch.started`` and the folder's ``watches`` health row say
which parts get what, their filesystem type and the poll interval.

A root that cannot be watched at start is reported (``watch.failed``) and tried
again at every root check; a root that vanishes or is replaced (another inode)
is reported (``watch.lost``) and unwatched; when it is back it is watched again
and the caller reconciles it. A polled part that fails, or stops answering, is
reported by its poll (``watch.failed``) and recovers by itself. Without a
watcher (in-process tests), a root counts as watched when it is a directory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from quiltsync.config import FolderConfig
from quiltsync.core.watchmode import Layout
from quiltsync.local.scanner import make_ignore_spec
from quiltsync.service.health import CheckResult
from quiltsync.service.polls import PollDone

ROOT_CHECK_SECONDS = 5.0  # how often roots are checked for vanishing or coming back

Note = Callable[[str | None, float | None], None]  # (path or None for a full rescan, first seen)


@dataclass(slots=True)
class RootState:
    config: FolderConfig
    watching: bool = False
    problem: str | None = None
    layout: Layout | None = None
    interval: float | None = None  # the polls' effective interval, when some parts are polled
    poll_problem: str | None = None  # why the last poll failed, or that it hangs

    def describe(self) -> str:
        if self.layout is None:
            return "not watched"
        return self.layout.describe(self.interval, self.config.poll_seconds)


class Roots:
    def __init__(self, watcher: Any, log: Any, polls: Any = None,
                 report: Callable[[CheckResult], None] | None = None,
                 pushed: Callable[[str], Mapping[str, Any]] | None = None) -> None:
        self.watcher = watcher
        self.polls = polls
        self.pushed = pushed  # package -> its files as last pushed: what a first poll compares with
        self.log = log
        self.report = report or (lambda _r: None)

    def watch(self, st: RootState) -> None:
        f = st.config
        if self.watcher is None:
            st.watching = f.path.is_dir()
            return
        from quiltsync.local.fstype import layout
        from quiltsync.local.watcher import installed_watches

        lay = layout(f.path, f.watch)
        self.unwatch(f.package)  # a reload may move a folder from events to polling or back
        before = installed_watches()
        if lay.events:
            try:
                self.watcher.watch(f.package, f.path, make_ignore_spec(f.ignore))
            except OSError as e:
                problem = f"cannot watch {f.path}: {e.strerror or e}"
                if st.problem != problem:
                    self.log.error("watch.failed", package=f.package, path=str(f.path), detail=problem,
                                   retry_in_s=ROOT_CHECK_SECONDS)
                st.watching, st.problem = False, problem
                return
        after = installed_watches()
        st.watching, st.problem, st.layout = True, None, lay
        st.interval, st.poll_problem = None, None
        if lay.polled and self.polls is not None:
            st.interval = f.poll_seconds
            pushed = self.pushed
            self.polls.watch(f, lay, (lambda: pushed(f.package)) if pushed is not None else None)
        self.log.info("watch.started", package=f.package, folder=str(f.path), watch=st.describe(),
                      parts=lay.as_json(st.interval),
                      directories=(after - before) if lay.events and before >= 0 and after >= 0 else None)
        self.report(CheckResult("watches", f.package, "ok", st.describe()))

    def unwatch(self, package: str) -> None:
        if self.watcher is not None:
            self.watcher.unwatch(package)
        if self.polls is not None:
            self.polls.unwatch(package)

    def check(self, roots: Mapping[str, RootState], came_back: Callable[[str], None], now: float) -> None:
        """Notice lost roots and hung polls; re-watch the roots that are back and call ``came_back``."""
        lost = set(self.watcher.lost()) if self.watcher is not None else set()
        stalled = self.polls.stalled(now) if self.polls is not None else {}
        for pkg, st in roots.items():
            if pkg in lost:
                self.unwatch(pkg)
                st.watching = False
                st.problem = f"folder {st.config.path} vanished or was replaced"
                self.log.error("watch.lost", package=pkg, path=str(st.config.path), detail=st.problem,
                               retry_in_s=ROOT_CHECK_SECONDS)
            elif not st.watching:
                self.watch(st)
                if st.watching:
                    came_back(pkg)
            elif pkg in stalled:
                self._poll_failed(st, f"the share does not answer: a poll has waited {stalled[pkg]:.0f} s "
                                      "in a filesystem call (a hung NFS/SMB server or a stopped FUSE process?); "
                                      "other folders go on")

    def polled(self, st: RootState, done: PollDone, note: Note) -> None:
        """A poll of the folder's polled parts finished: report, then note what is ready to push."""
        if done.error is not None:
            self._poll_failed(st, f"cannot poll {st.config.path}: {done.error}")
            return
        interval, cpu_seconds = done.interval, done.cpu_seconds
        stretched = interval > st.config.poll_seconds * 1.01
        if st.interval is not None and stretched != (st.interval > st.config.poll_seconds * 1.01):
            self.log.info("watch.interval", package=st.config.package, interval_s=round(interval, 1),
                          poll_seconds=st.config.poll_seconds, poll_cpu_s=round(cpu_seconds, 3),
                          detail="polls stretched to stay under 2% of a core" if stretched
                          else "polls back at poll_seconds")
        changed = st.interval is None or abs(interval - st.interval) > 0.1 * st.interval
        st.interval = interval
        if st.poll_problem is not None:
            st.poll_problem = None
            self.log.info("watch.recovered", package=st.config.package, folder=str(st.config.path),
                          watch=st.describe())
            self.report(CheckResult("watches", st.config.package, "ok", st.describe()))
            note(None, None)  # whatever happened while it did not answer
        elif changed:
            self.report(CheckResult("watches", st.config.package, "ok", st.describe()))
        if done.full:
            note(None, None)
        for path, since in done.ready.items():
            note(path, since)

    def _poll_failed(self, st: RootState, problem: str) -> None:
        """Reported once; the next poll that succeeds reports the recovery."""
        if st.poll_problem is None:
            self.log.error("watch.failed", package=st.config.package, path=str(st.config.path), detail=problem)
            self.report(CheckResult("watches", st.config.package, "fail", problem))
        st.poll_problem = problem

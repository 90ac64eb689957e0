"""Polled parts of folders: one thread per folder, stat-only scans, results to the loop.

A thread scans its folder's polled parts (the whole folder, or the network and
FUSE mounts inside it), asks its ``core.watchmode.PollTracker`` (which it
alone owns) which changes stood still for a poll, and posts them to the main
loop. Polls start every effective interval: the configured ``poll_seconds``,
stretched so that the scans use at most about 2% of a core (and at least
``MIN_PAUSE`` apart, however long a scan takes).

Before each scan a poll checks that every polled part is still the share it
was planned as (the mount table): a share that was unmounted leaves an empty
mount point behind, and its files must not be pushed as deleted.

A share that stops answering (a hung NFS server, a stopped FUSE process) blocks
its thread inside a filesystem call, and only that thread: the main loop, its
watchdog pings and every other folder go on. ``stalled`` tells the loop which
polls have made no progress (no directory listed, no entry looked at) for
``HANG_SECONDS``; the loop reports them, and a poll that answers again reports
itself back. A stuck thread cannot be cancelled; it is a daemon thread, left
behind when its folder is unwatched, and ends with the process at the latest.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from quiltsync.config import FolderConfig
from quiltsync.core.types import FileStat
from quiltsync.core.watchmode import Layout, PollTracker, effective_interval, is_remote, mount_of
from quiltsync.local.fstype import mounts
from quiltsync.local.scanner import RootUnavailable, make_ignore_spec, scan_folder

HANG_SECONDS = 10.0  # a poll with no progress for this long is reported as not answering
MIN_PAUSE = 1.0  # between the end of a poll and the start of the next, at least


@dataclass(frozen=True, slots=True)
class PollDone:
    package: str
    source: object  # the poll that posted this: results of a replaced poll are dropped
    error: str | None  # why the poll failed
    settled: frozenset[str]  # changes that stood still for a poll
    overdue: dict[str, float]  # changes still going on past the bound -> first seen (monotonic)
    waiting: frozenset[str]  # changes that have not stood still yet: a full rescan leaves them be
    full: bool  # reconcile the whole folder (no baseline)
    cpu_seconds: float
    interval: float  # the effective interval


class _Poll:
    def __init__(self, folder: FolderConfig, layout: Layout, baseline: Mapping[str, FileStat] | None,
                 scandir: Callable[[str], Iterator[os.DirEntry[str]]] = os.scandir,
                 stat: Callable[[str], os.stat_result] = os.stat) -> None:
        self.package = folder.package
        self.root = folder.path
        self.layout = layout
        self.ignore = make_ignore_spec(folder.ignore)
        self.poll_seconds = folder.poll_seconds
        self.tracker = PollTracker(folder.max_delay_seconds,
                                   self._polled_part(baseline) if baseline is not None else None)
        self.scandir, self.stat = scandir, stat
        self.interval = folder.poll_seconds
        self.stop = threading.Event()
        self.busy_since: float | None = None  # monotonic start of the scan in progress
        self.progress = 0.0  # monotonic time of the scan's last answered call
        self.last_wall = 0.0  # how long the last finished scan took

    def _polled_part(self, files: Mapping[str, FileStat]) -> dict[str, FileStat]:
        if self.layout.root.polled:
            return dict(files)
        prefixes = tuple(p.rel + "/" for p in self.layout.polled)
        return {k: v for k, v in files.items() if k.startswith(prefixes)}

    def _tick(self) -> None:
        self.progress = time.monotonic()

    def _check_mounted(self) -> None:
        """A planned share that is no longer mounted fails the poll (its files are not deleted)."""
        table = mounts()
        if not table:
            return  # no mount table to ask (/proc not mounted): nothing to compare with
        for part in self.layout.polled:
            if not is_remote(part.fstype) or not self.layout.path:
                continue  # polled by choice (watch = "poll" on a local disk), or never resolved
            top = os.path.join(self.layout.path, part.rel) if part.rel else self.layout.path
            m = mount_of(top, table)
            if m is None or not is_remote(m.fstype):
                raise RootUnavailable(f"{part.label} of {self.root} is not on its share anymore "
                                      f"(was {part.fstype}, now {m.fstype if m else 'unknown'}): unmounted?")

    def scan(self) -> dict[str, FileStat]:
        self._check_mounted()
        files: dict[str, FileStat] = {}
        for part in self.layout.polled:
            files.update(scan_folder(self.root, self.ignore, scandir=self.scandir, stat=self.stat,
                                     under=part.rel, progress=self._tick).files)
        return files

    def once(self, clock: Callable[[], float]) -> PollDone:
        """One poll: scan the polled parts and decide what is ready. Never raises."""
        started = self.busy_since = self.progress = time.monotonic()
        cpu0 = time.thread_time()
        error, obs = None, None
        try:
            obs = self.tracker.observe(clock(), self.scan(), self.interval)
        except RootUnavailable as e:
            error = str(e)
        except OSError as e:
            error = f"{self.root}: {e.strerror or e}"
        except Exception as e:  # a poll thread must not die silently
            error = f"{self.root}: {type(e).__name__}: {e}"
        finally:
            self.last_wall = time.monotonic() - started
            self.busy_since = None
        cpu = time.thread_time() - cpu0
        self.interval = effective_interval(self.poll_seconds, cpu)
        return PollDone(self.package, self, error, obs.settled if obs else frozenset(),
                        obs.overdue if obs else {}, self.tracker.waiting, bool(obs and obs.full), cpu,
                        self.interval)

    def pause(self) -> float:
        """Seconds until the next poll: one interval after this one began, ``MIN_PAUSE`` at least."""
        return max(self.interval - self.last_wall, MIN_PAUSE)


class Polls:
    def __init__(self, post: Callable[[PollDone], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.post = post
        self.clock = clock
        self._polls: dict[str, _Poll] = {}
        self._lock = threading.Lock()

    def watch(self, folder: FolderConfig, layout: Layout, baseline: Mapping[str, FileStat] | None = None) -> None:
        """Start polling ``layout.polled`` of the folder now and every interval; the first
        poll finds the changes since ``baseline`` (the files as last pushed)."""
        self.unwatch(folder.package)
        poll = _Poll(folder, layout, baseline)
        with self._lock:
            self._polls[folder.package] = poll
        threading.Thread(target=self._run, args=(poll,), name=f"poll {folder.package}", daemon=True).start()

    def unwatch(self, package: str) -> None:
        with self._lock:
            poll = self._polls.pop(package, None)
        if poll is not None:
            poll.stop.set()

    def current(self, package: str) -> object | None:
        with self._lock:
            return self._polls.get(package)

    def stalled(self) -> dict[str, float]:
        """Packages whose poll waits in a filesystem call: seconds since it last made progress."""
        with self._lock:
            polls = list(self._polls.values())
        now = time.monotonic()
        out = {}
        for p in polls:
            if p.busy_since is not None:
                quiet = now - max(p.progress, p.busy_since)
                if quiet >= HANG_SECONDS:
                    out[p.package] = quiet
        return out

    def shutdown(self) -> None:
        with self._lock:
            polls, self._polls = list(self._polls.values()), {}
        for p in polls:
            p.stop.set()

    def _run(self, poll: _Poll) -> None:
        while True:
            done = poll.once(self.clock)
            if poll.stop.is_set():
                return
            self.post(done)
            if poll.stop.wait(poll.pause()):
                return

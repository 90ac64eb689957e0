"""Polled parts of folders: one thread per folder, stat-only scans, results to the loop.

A thread scans its folder's polled parts (the whole folder, or the network and
FUSE mounts inside it), asks its ``core.watchmode.PollTracker`` (which it
alone owns) which changes stood still for a poll, posts those paths to the
main loop, then waits the effective interval: the configured ``poll_seconds``,
stretched so that the scans use at most about 2% of a core.

A share that stops answering (a hung NFS server, a stopped FUSE process) blocks
its thread inside a filesystem call, and only that thread: the main loop, its
watchdog pings and every other folder go on. ``stalled`` tells the loop which
polls have made no progress (no directory listed, no file stat'ed) for
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
from quiltsync.core.watchmode import Layout, PollTracker, effective_interval
from quiltsync.local.scanner import RootUnavailable, make_ignore_spec, scan_folder

HANG_SECONDS = 10.0  # a poll with no progress for this long is reported as not answering


@dataclass(frozen=True, slots=True)
class PollDone:
    package: str
    source: object  # the poll that posted this: results of a replaced poll are dropped
    error: str | None  # why the scan failed
    ready: dict[str, float]  # paths to push -> when their change was first seen (monotonic)
    full: bool  # reconcile the whole folder (the first poll)
    cpu_seconds: float
    interval: float  # the effective interval until the next poll


Baseline = Callable[[], Mapping[str, FileStat]]  # the folder's files as last pushed (the index)


class _Poll:
    def __init__(self, folder: FolderConfig, layout: Layout, baseline: Baseline | None) -> None:
        self.package = folder.package
        self.root = folder.path
        self.layout = layout
        self.ignore = make_ignore_spec(folder.ignore)
        self.poll_seconds = folder.poll_seconds
        self.tracker = PollTracker(folder.max_delay_seconds)
        self.baseline = baseline
        self.stop = threading.Event()
        self.busy_since: float | None = None  # monotonic start of the scan in progress
        self.progress = 0.0  # monotonic time of the scan's last answered call
        self.last_wall = 0.0  # how long the last finished scan took

    def scan(self) -> dict[str, FileStat]:
        def scandir(path: str) -> Iterator[os.DirEntry[str]]:
            with os.scandir(path) as it:
                entries = list(it)
            self.progress = time.monotonic()
            return iter(entries)

        files: dict[str, FileStat] = {}
        for part in self.layout.polled:
            files.update(scan_folder(self.root, self.ignore, scandir=scandir, stat=self._stat, under=part.rel).files)
        return files

    def _polled_part(self, files: Mapping[str, FileStat]) -> dict[str, FileStat]:
        if not self.layout.root.polled:
            prefixes = tuple(p.rel + "/" for p in self.layout.polled)
            return {k: v for k, v in files.items() if k.startswith(prefixes)}
        return dict(files)

    def _stat(self, path: str) -> os.stat_result:
        st = os.stat(path)
        self.progress = time.monotonic()
        return st

    def once(self, clock: Callable[[], float]) -> PollDone:
        """One poll: scan the polled parts and decide what is ready."""
        started = self.busy_since = self.progress = time.monotonic()
        cpu0 = time.thread_time()
        try:
            if self.tracker.previous is None and self.baseline is not None:
                self.tracker.previous = self._polled_part(self.baseline())
            obs = self.tracker.observe(clock(), self.scan())
        except RootUnavailable as e:
            return self._done(cpu0, str(e), {}, False)
        except OSError as e:
            return self._done(cpu0, f"{self.root}: {e.strerror or e}", {}, False)
        finally:
            self.last_wall = time.monotonic() - started
            self.busy_since = None
        return self._done(cpu0, None, obs.ready, obs.full)

    def _done(self, cpu0: float, error: str | None, ready: dict[str, float], full: bool) -> PollDone:
        cpu = time.thread_time() - cpu0
        return PollDone(self.package, self, error, ready, full, cpu, effective_interval(self.poll_seconds, cpu))


class Polls:
    def __init__(self, post: Callable[[PollDone], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.post = post
        self.clock = clock
        self._polls: dict[str, _Poll] = {}
        self._lock = threading.Lock()

    def watch(self, folder: FolderConfig, layout: Layout, baseline: Baseline | None = None) -> None:
        """Start polling ``layout.polled`` of the folder now and every interval; the first
        poll finds the changes since ``baseline`` (read on the poll's thread)."""
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

    def stalled(self, now: float) -> dict[str, float]:
        """Packages whose poll waits in a filesystem call: seconds since it last made progress."""
        with self._lock:
            polls = list(self._polls.values())
        out = {}
        for p in polls:
            if p.busy_since is not None:
                quiet = now - max(p.progress, p.busy_since)
                if quiet >= max(HANG_SECONDS, p.last_wall):
                    out[p.package] = quiet
        return out

    def shutdown(self) -> None:
        with self._lock:
            polls, self._polls = list(self._polls.values()), {}
        for p in polls:
            p.stop.set()

    def _run(self, poll: _Poll) -> None:
        delay = 0.0
        while not poll.stop.wait(delay):
            done = poll.once(self.clock)
            if poll.stop.is_set():
                return
            self.post(done)
            delay = done.interval

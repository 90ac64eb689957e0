"""The only module that imports watchdog: one observer, one recursive watch per folder.

Events are hints that mark paths dirty, never the source of truth: every push
scans the folder. Two traps from FACTS.md are handled here:
- the default event mask floods the kernel queue during watchdog's own start-up
  walk on large trees (and 7.1.0 answers each overflow by re-adding every watch):
  we schedule with the narrow ``EVENT_FILTER``;
- an overflow is never delivered to handlers, only logged by watchdog: a logging
  handler on watchdog's inotify loggers turns that warning into ``on_overflow``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from quiltsync.local.scanner import IgnoreRules

SETUP_SECONDS = 10.0  # a watch's inotify set-up is waited for at most this long
EVENT_FILTER = [FileClosedEvent, FileCreatedEvent, FileMovedEvent, FileDeletedEvent,
                FileModifiedEvent, DirCreatedEvent, DirDeletedEvent, DirMovedEvent]

OnChange = Callable[[str, str | None], None]  # (package, relative path or None for "rescan")


@dataclass(slots=True)
class _Watched:
    package: str
    root: Path
    identity: tuple[int, int]  # (st_dev, st_ino) of the root when watched
    watches: list[tuple[object, _Handler]]  # the root's recursive watch, or those around polled mounts
    subtrees: dict[str, tuple[object, _Handler]] = field(default_factory=dict)  # rel -> recursive watch
    real: str = ""  # the root, symlinks resolved (mount points are named so)


class _Handler(FileSystemEventHandler):
    def __init__(self, package: str, root: Path, ignore: IgnoreRules, on_change: OnChange) -> None:
        self.package = package
        self.root = str(root)
        self.prefix = self.root.rstrip("/") + "/"
        self.ignore = ignore
        self.on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = [event.src_path, getattr(event, "dest_path", "")]
        for p in paths:
            if isinstance(p, bytes):
                p = os.fsdecode(p)
            if not p:
                continue
            if p == self.root:
                # the root itself was deleted or moved: the daemon checks and re-watches
                self.on_change(self.package, None)
                continue
            if not p.startswith(self.prefix):
                continue
            rel = p[len(self.prefix):]
            check = rel + "/" if event.is_directory else rel
            if self.ignore.match_file(check):
                continue
            self.on_change(self.package, rel)


class _ChainHandler(_Handler):
    """A directory on the way from the root to a polled mount, watched without its subtree
    (watchdog's recursive watch would walk into the share, and hang with it). Its other
    subdirectories get recursive watches of their own, also when they appear later."""

    def __init__(self, package: str, root: Path, ignore: IgnoreRules, on_change: OnChange,
                 watcher: Watcher, chain: set[str], skip: set[str]) -> None:
        super().__init__(package, root, ignore, on_change)
        self.watcher, self.chain, self.skip = watcher, chain, skip

    def on_any_event(self, event: FileSystemEvent) -> None:
        super().on_any_event(event)
        if not event.is_directory:
            return
        src = self._rel(event.src_path)
        dest = self._rel(getattr(event, "dest_path", ""))
        if src is not None and isinstance(event, (DirDeletedEvent, DirMovedEvent)) and self._around(src):
            self.watcher._retract(self.package, src)
        if isinstance(event, DirCreatedEvent) and src is not None and self._around(src):
            self.watcher._extend(self.package, self, src)
        if isinstance(event, DirMovedEvent) and dest is not None and self._around(dest):
            self.watcher._extend(self.package, self, dest)

    def _rel(self, p: str | bytes) -> str | None:
        p = os.fsdecode(p)
        return p[len(self.prefix):] if p.startswith(self.prefix) else None

    def _around(self, rel: str) -> bool:
        """A directory that gets a recursive watch: in a chain directory, not on the way, not polled."""
        return rel.rpartition("/")[0] in self.chain and rel not in self.chain and rel not in self.skip


class _OverflowHandler(logging.Handler):
    """watchdog logs overflows and tells no handler: turn the log record into a call."""

    def __init__(self, on_overflow: Callable[[str | None], None]) -> None:
        super().__init__(logging.WARNING)
        self.on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" not in str(record.msg).lower():
            return
        path = record.args[0] if isinstance(record.args, tuple) and record.args else None
        self.on_overflow(str(path) if path is not None else None)


class Watcher:
    def __init__(self, on_change: OnChange, on_overflow: Callable[[str | None], None]) -> None:
        self.on_change = on_change
        self.observer = Observer()
        self.observer.daemon = True
        self._watched: dict[str, _Watched] = {}
        self._refs: dict[object, int] = {}  # watchdog watch -> how many of ours use it
        self._lock = threading.Lock()
        self._overflow = _OverflowHandler(on_overflow)
        for name in ("watchdog.observers.inotify_c", "watchdog.observers.inotify"):
            logging.getLogger(name).addHandler(self._overflow)

    def start(self) -> None:
        self.observer.start()

    def stop(self) -> None:
        for name in ("watchdog.observers.inotify_c", "watchdog.observers.inotify"):
            logging.getLogger(name).removeHandler(self._overflow)
        self.observer.stop()
        self.observer.join(timeout=10)

    def watch(self, package: str, root: Path, ignore: IgnoreRules, skip: Sequence[str] = ()) -> None:
        """Watch a folder recursively, except the subtrees ``skip`` (relative: polled mounts);
        raises OSError if the root is missing or unreadable."""
        self.unwatch(package)
        st = os.stat(root)
        os.listdir(root)  # unreadable roots give an observer that never fires (FACTS.md)
        watched = _Watched(package, root, (st.st_dev, st.st_ino), [], real=os.path.realpath(root))
        with self._lock:
            self._watched[package] = watched
        if not skip:
            handler = _Handler(package, root, ignore, self.on_change)
            watched.watches.append(self._schedule(handler, str(root), True))
            return
        chain = {""} | {rel.rsplit("/", i)[0] for rel in skip for i in range(1, rel.count("/") + 1)}
        chain_handler = _ChainHandler(package, root, ignore, self.on_change, self, chain, set(skip))
        shares = _shares()
        for rel in sorted(chain):
            path = os.path.join(root, rel) if rel else str(root)
            watched.watches.append(self._schedule(chain_handler, path, False))
            with os.scandir(path) as it:
                subdirs = [e.name for e in it if e.is_dir(follow_symlinks=False)]
            for name in subdirs:
                child = f"{rel}/{name}" if rel else name
                if chain_handler._around(child):
                    self._extend(package, chain_handler, child, shares)

    def _schedule(self, handler: _Handler, path: str, recursive: bool) -> tuple[object, _Handler]:
        """Watches of equal path and kind share one emitter in watchdog (two folders can
        need the same one): counted, so that unwatching one folder leaves the other's."""
        watch = self.observer.schedule(handler, path, recursive=recursive, event_filter=EVENT_FILTER)
        with self._lock:
            self._refs[watch] = self._refs.get(watch, 0) + 1
        self._installed(watch)
        return watch, handler

    def _installed(self, watch: object, timeout: float = SETUP_SECONDS) -> None:
        """Wait until the watch's emitter has added its inotify watches (watchdog adds
        them on the emitter's own thread, walking the tree): a scan that starts
        earlier could miss a change made before its directory was watched, and
        competes with that walk for the GIL. watchdog 7.1's emitter sets
        ``_inotify`` when it is done (pinned; other observers have no such field)."""
        emitter = getattr(self.observer, "_emitter_for_watch", {}).get(watch)
        deadline = time.monotonic() + timeout
        while emitter is not None and getattr(emitter, "_inotify", True) is None and emitter.is_alive() \
                and time.monotonic() < deadline:
            time.sleep(0.005)

    def _unschedule(self, scheduled: tuple[object, _Handler]) -> None:
        watch, handler = scheduled
        with self._lock:
            left = self._refs.get(watch, 1) - 1
            if left > 0:
                self._refs[watch] = left
            else:
                self._refs.pop(watch, None)
        try:
            if left > 0:
                self.observer.remove_handler_for_watch(handler, watch)  # type: ignore[arg-type]
            else:
                self.observer.unschedule(watch)  # type: ignore[arg-type]
        except (KeyError, OSError):
            pass

    def _extend(self, package: str, handler: _Handler, rel: str, shares: set[str] | None = None) -> None:
        """A recursive watch on ``rel`` (a directory around the polled mounts), unless a share
        is mounted on it now (the root check plans the folder again): watchdog would walk
        into it, on its own thread, with its lock held. ``shares``: their mount points."""
        with self._lock:
            w = self._watched.get(package)
        if w is None or rel in w.subtrees:
            return
        if os.path.join(w.real, rel) in (_shares() if shares is None else shares):
            return
        sub = _Handler(package, w.root, handler.ignore, handler.on_change)
        try:
            w.subtrees[rel] = self._schedule(sub, os.path.join(w.root, rel), True)
        except OSError:
            pass  # gone again already: its deletion is reported as a change

    def _retract(self, package: str, rel: str) -> None:
        with self._lock:
            w = self._watched.get(package)
        scheduled = w.subtrees.pop(rel, None) if w is not None else None
        if scheduled is not None:
            self._unschedule(scheduled)

    def unwatch(self, package: str) -> None:
        with self._lock:
            w = self._watched.pop(package, None)
        if w is not None:
            for scheduled in [*w.watches, *w.subtrees.values()]:
                self._unschedule(scheduled)

    def is_watching(self, package: str) -> bool:
        with self._lock:
            return package in self._watched

    def lost(self) -> list[str]:
        """Folders whose root vanished or was replaced since it was watched."""
        with self._lock:
            items = list(self._watched.values())
        out = []
        for w in items:
            try:
                st = os.stat(w.root)
                if (st.st_dev, st.st_ino) != w.identity:
                    out.append(w.package)
            except OSError:
                out.append(w.package)
        return out

    def package_for(self, path: str) -> str | None:
        with self._lock:
            for w in self._watched.values():
                if path == str(w.root) or path.startswith(str(w.root).rstrip("/") + "/"):
                    return w.package
        return None


def _shares() -> set[str]:
    """Mount points of network, cluster and FUSE filesystems."""
    from quiltsync.core.watchmode import is_remote
    from quiltsync.local.fstype import mounts

    return {m.point for m in mounts() if is_remote(m.fstype)}


def installed_watches() -> int:
    """inotify watches this process holds (from /proc/self/fdinfo), or -1 if unknown."""
    total, found = 0, False
    try:
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                    continue
                with open(f"/proc/self/fdinfo/{fd}") as f:
                    total += sum(1 for line in f if line.startswith("inotify wd:"))
                found = True
            except OSError:
                continue
    except OSError:
        return -1
    return total if found else -1

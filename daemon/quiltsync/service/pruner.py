"""The daemon's prunes: each folder with a [folder.retention] table, once every
``prune_interval_hours``, on a thread of its own (never in the main loop).

A prune holds the package's lock (engine/prune.py), so it never runs while a
push of that package does: a push that comes due meanwhile waits for it
(``push.waiting``), and a prune that comes due during a push waits for the push.
When a folder was last pruned is kept in ``state_dir/prune/<package>.last`` (its
mtime), so a daemon restarted every night still prunes once a day.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from quiltsync.config import FolderConfig
from quiltsync.errors import QuiltsyncError

CHECK_SECONDS = 300.0  # how often the daemon asks whether a prune is due


class _Stopping(Exception):
    pass


class Pruner:
    """``current(package)`` gives the folder's config as it is when its prune starts
    (a reload may have changed or removed the policy while it waited)."""

    def __init__(self, state_dir: Path, log: Any, current: Callable[[str], FolderConfig | None],
                 clock: Callable[[], float] = time.time) -> None:
        self.state_dir = state_dir
        self.log = log
        self.current = current
        self.clock = clock
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prune")
        self._running: set[str] = set()
        self._stop = threading.Event()

    def _stamp(self, package: str) -> Path:
        return self.state_dir / "prune" / (package.replace("/", "%2F") + ".last")

    def due(self, folders: Iterable[FolderConfig], interval_s: float) -> list[FolderConfig]:
        now = self.clock()
        out = []
        for f in folders:
            if f.retention is None or f.package in self._running:
                continue
            try:
                last = self._stamp(f.package).stat().st_mtime
            except OSError:
                last = 0.0
            if now - last >= interval_s:
                out.append(f)
        return out

    def start(self, folders: Iterable[FolderConfig], interval_s: float) -> None:
        for f in self.due(folders, interval_s):
            self._running.add(f.package)
            self._pool.submit(self._run, f)

    def _run(self, queued: FolderConfig) -> None:
        from quiltsync.engine.catalog import Catalog
        from quiltsync.engine.prune import prune
        from quiltsync.remote.registry import Registry

        def step(_name: str) -> None:  # between deletion steps: a stopping daemon stops here
            if self._stop.is_set():
                raise _Stopping

        folder = self.current(queued.package)
        try:
            if folder is None or folder.retention is None or self._stop.is_set():
                return
            prune(folder, Catalog(Registry(folder.registry), folder.package), self.state_dir, step=step)
        except _Stopping:
            self.log.info("prune.stopped", package=queued.package, detail="the daemon is stopping; the next "
                          "prune finishes the job")
            return
        except QuiltsyncError as e:
            self.log.error("prune.failed", package=queued.package, error=str(e),
                           detail="tried again after prune_interval_hours")
        except Exception as e:  # a bug: logged with its traceback, the daemon goes on
            self.log.exception("prune.failed", package=queued.package, error=f"{type(e).__name__}: {e}")
        finally:
            self._running.discard(queued.package)
        self._stamped(queued.package)  # done or failed: the next attempt is an interval away

    def _stamped(self, package: str) -> None:
        stamp = self._stamp(package)
        try:
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.touch()
            os.utime(stamp, (self.clock(), self.clock()))
        except OSError as e:
            self.log.warning("prune.failed", package=package, error=f"cannot record the prune's time: {e}")

    def shutdown(self) -> None:
        """Queued prunes are dropped; one that runs stops at its next step (crash-safe)."""
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

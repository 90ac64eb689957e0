"""`quiltsync run`: the service shell around the scheduler and the push pipeline.

The decisions (what is due, backoff, holds, reload generations) are made by
``core.schedule.Scheduler``, a pure object; this module only feeds it events and
carries out what it says. One main thread owns all state. Everything else talks
to it through one ``queue.SimpleQueue`` (whose put() is safe from signal
handlers): watchdog's thread posts changes, poll threads (folders on network and
FUSE shares) post what stood still, push workers post results, signal handlers
post signals. The loop waits on the queue with a timeout set by the
next deadline; it never polls in a busy loop.

Owners: the daemon holds ``state_dir``'s lock for its whole life (a second
daemon exits at once), opens the one ``Index`` of the process (shared by every
folder's pusher and by health recording, one SQLite connection per thread),
and activates the S3 settings. A reload that moves the S3 endpoint waits until
no push is in flight, then treats every folder as new on that registry.
"""

from __future__ import annotations

import math
import os
import queue
import signal
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quiltsync.config import Config, FolderConfig, load_config
from quiltsync.core.pacing import Pacer
from quiltsync.core.schedule import Scheduler, Timing
from quiltsync.errors import ConfigError, WorkflowRefused
from quiltsync.local.index import Index
from quiltsync.local.locks import DaemonLock
from quiltsync.logs import get_logger
from quiltsync.remote import settings as s3settings
from quiltsync.remote import transfer
from quiltsync.service import folders
from quiltsync.service.folders import FolderState
from quiltsync.service.health import CheckResult
from quiltsync.service.monitor import HealthMonitor, start_metrics
from quiltsync.service.notify import Notifier
from quiltsync.service.polls import PollDone, Polls
from quiltsync.service.pruner import CHECK_SECONDS as PRUNE_CHECK_SECONDS
from quiltsync.service.pruner import Pruner
from quiltsync.service.pushes import Pushes
from quiltsync.service.roots import ROOT_CHECK_SECONDS, Hooks, Roots, RootState

HEALTH_DEFER_SECONDS = 120.0  # a health run waits at most this long for a full reconcile to end
DRAIN_SECONDS = 60.0  # SIGTERM: finish and push pending changes for at most this long
HOLD_POLL_SECONDS = 1.0  # while a folder is held: how often the index is asked for a release

PusherFactory = Callable[[FolderConfig, Index], Any]


def _real_pusher(folder: FolderConfig, index: Index) -> Any:
    from quiltsync.engine.pusher import FolderPusher

    return FolderPusher(folder, index)


@dataclass(slots=True)
class _Msg:
    kind: str  # change | overflow | poll | signal | done | health
    package: str | None = None
    path: str | None = None
    value: Any = None


@dataclass
class Daemon:
    config_path: Path
    config: Config
    notifier: Notifier = field(default_factory=Notifier)
    clock: Callable[[], float] = time.monotonic
    pusher_factory: PusherFactory = _real_pusher
    watch: bool = True  # in-process tests run without inotify and feed changes themselves
    health_checks: bool = True

    def __post_init__(self) -> None:
        self.log = get_logger("quiltsync.daemon")
        self.inbox: queue.SimpleQueue[_Msg] = queue.SimpleQueue()
        self.schedule = Scheduler()
        self.folders: dict[str, FolderState] = {}
        self.pushes = Pushes(self.schedule, lambda pkg: self.inbox.put(_Msg("done", pkg)), self.log)
        self.stopping = False
        self.index: Index | None = None
        self._lock = DaemonLock(self.config.daemon.state_dir)
        self._pending_reload: Config | None = None
        self._next_ping = 0.0
        self._next_rescan = 0.0
        self._next_root_check = 0.0
        self._next_health = 0.0
        self._next_hold_poll = 0.0
        self._next_prune = 0.0
        self._watcher: Any = None
        self.polls: Polls | None = None
        self.roots = Roots(None, self.log)
        self.monitor: HealthMonitor | None = None
        self.pruner: Pruner | None = None
        self.metrics: Any = None
        self.stuck: list[str] = []  # pushes still blocked when the daemon stopped

    # -- life cycle -------------------------------------------------------------------
    def run(self) -> int:
        self.start()
        try:
            while not self.stopping:
                self.step()
        finally:
            self.shutdown()
        return 0

    def start(self) -> None:
        """Take the state dir, open the index, watch and schedule every folder."""
        self._lock.acquire()  # a second daemon on this state_dir stops here (AlreadyRunning)
        self.index = Index(self.config.daemon.state_dir / "index.sqlite3")
        s3settings.activate(s3settings.S3Settings.from_config(self.config.s3))
        transfer.apply(self.config.s3)
        s3settings.warm_up()
        self._install_signals()
        if self.watch:
            from quiltsync.local.watcher import Watcher

            self._watcher = Watcher(self._on_change, self._on_overflow)
            self._watcher.start()
            self.polls = Polls(lambda done: self.inbox.put(_Msg("poll", done.package, value=done)), self.clock)
            self.roots = Roots(self._watcher, self.log, self.polls,
                               Hooks(self._note_health, self._pushed_files, self.schedule.block))
        self.log.info("daemon.started", pid=os.getpid(), config=str(self.config_path),
                      folders=len(self.config.folder))
        self.metrics = self.pushes.metrics = start_metrics(self.config.daemon.metrics_address, self.log)
        self.monitor = HealthMonitor(self.index, self.log, self.metrics)
        self.pruner = Pruner(self.config.daemon.state_dir, self.log,
                             lambda pkg: st.config if (st := self.folders.get(pkg)) is not None else None)
        for f in self.config.folder:
            self._add_folder(f)
        now = self.clock()
        self._next_rescan = now + self.config.daemon.rescan_interval_seconds
        self._next_root_check = now + ROOT_CHECK_SECONDS
        self._next_prune = now + min(60.0, self._prune_interval())  # after the start-up reconcile
        self._next_health = now  # at once, or once the start-up reconcile is done (_reconciling)
        if not self.health_checks:
            self._next_health = math.inf
        self.notifier.ready(self._status_line())

    def _install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, _frame: self.inbox.put(_Msg("signal", value=signum)))

    def step(self, max_wait: float | None = None) -> None:
        """One round: start what is due, wait for a message or the next deadline, handle it."""
        now = self.clock()
        if not self.stopping:
            self.pushes.start_due(now, self.folders)
        timeout = self._next_wakeup(now) - now
        if max_wait is not None:
            timeout = min(timeout, max_wait)
        try:
            msg: _Msg | None = self.inbox.get(timeout=max(0.0, timeout))
        except queue.Empty:
            msg = None
        while msg is not None:  # and whatever queued meanwhile, before deciding again
            self._handle(msg)
            try:
                msg = self.inbox.get_nowait()
            except queue.Empty:
                msg = None
        self._timers(self.clock())
        self._update_gauges()

    def _next_wakeup(self, now: float) -> float:
        health = self._next_health + HEALTH_DEFER_SECONDS if self._reconciling() else self._next_health
        times = [self._next_rescan, self._next_root_check, health, self._next_prune]
        deadline = self.schedule.next_deadline()
        if deadline is not None:
            times.append(deadline)
        if self.notifier.watchdog_interval:
            times.append(self._next_ping)
        if any(self.schedule.held(p) for p in self.folders):
            times.append(self._next_hold_poll)
        return min(times)

    def _timers(self, now: float) -> None:
        if self.notifier.watchdog_interval and now >= self._next_ping:
            # Only the main loop pings: a hung loop stops the pings and systemd acts.
            self.notifier.watchdog()
            self._next_ping = now + self.notifier.watchdog_interval
        if now >= self._next_rescan:
            self._next_rescan = now + self.config.daemon.rescan_interval_seconds
            for pkg in self.folders:
                self.schedule.note(pkg, now, None, urgent=True)
        if now >= self._next_root_check:
            self._next_root_check = now + ROOT_CHECK_SECONDS
            self.roots.check({p: st.root for p, st in self.folders.items()},
                             lambda pkg: self.schedule.note(pkg, now, None, urgent=True))
        if now >= self._next_hold_poll:
            self._next_hold_poll = now + HOLD_POLL_SECONDS
            self._poll_holds(now)
        if now >= self._next_prune and self.pruner is not None:
            self._next_prune = now + min(PRUNE_CHECK_SECONDS, self._prune_interval())
            self.pruner.start([st.config for st in self.folders.values()], self._prune_interval())
        if now >= self._next_health and (not self._reconciling() or now >= self._next_health + HEALTH_DEFER_SECONDS):
            self._next_health = now + self.config.daemon.health_interval_seconds
            self._start_health()
        if self._pending_reload is not None and not self.pushes.running:
            self._apply_reload(self._pending_reload)

    def _reconciling(self) -> bool:
        """A full reconcile is in flight: a health run waits for its end (both are
        CPU-bound Python and share the GIL: next to the checks, the reconcile of a
        50,000-file folder took 0.81 s instead of 0.62 s), at most
        HEALTH_DEFER_SECONDS; the push's end wakes the loop."""
        return any(start.batch.full for start, _fut, _st in self.pushes.running.values())

    def _prune_interval(self) -> float:
        return self.config.daemon.prune_interval_hours * 3600

    # -- messages ---------------------------------------------------------------------
    def _on_change(self, package: str, path: str | None) -> None:  # watchdog's thread
        self.inbox.put(_Msg("change", package, path))

    def _on_overflow(self, path: str | None) -> None:  # watchdog's thread
        self.inbox.put(_Msg("overflow", path=path))

    def post_change(self, package: str, path: str | None) -> None:
        """A change, as the watcher reports it (also for in-process tests)."""
        self._on_change(package, path)

    def _handle(self, msg: _Msg) -> None:
        now = self.clock()
        if msg.kind == "change" and msg.package in self.folders:
            self.schedule.note(msg.package, now, msg.path)
        elif msg.kind == "overflow":
            pkgs = [p for p, st in self.folders.items()
                    if msg.path is None or str(st.config.path) == msg.path]
            for pkg in pkgs or list(self.folders):
                self.log.warning("watch.overflow", package=pkg,
                                 detail="kernel event queue overflowed; events lost, rescanning")
                self.roots.rewatch_around_polls(self.folders[pkg].root)
                self.schedule.note(pkg, now, None, urgent=True)
        elif msg.kind == "poll":
            self._polled(msg.value, now)
        elif msg.kind == "done":
            self._push_done(msg.package or "", now)
        elif msg.kind == "health":
            self._health_done(msg.value, now)
        elif msg.kind == "signal":
            if msg.value == signal.SIGHUP:
                self._reload()
            else:
                self.stopping = True

    # -- folders -----------------------------------------------------------------------
    def _add_folder(self, f: FolderConfig) -> None:
        assert self.index is not None
        generation = self.schedule.configure(f.package, Timing(f.settle_seconds, f.max_delay_seconds),
                                             self.clock())
        old = self.folders.get(f.package)
        st = FolderState(f, self.pusher_factory(f, self.index), generation, RootState(f),
                     pacer=old.pacer if old is not None else Pacer(f.max_manifest_bytes_per_day))
        st.pacer.retune(f.max_manifest_bytes_per_day)
        now = self.clock()
        until = st.pacer.ready_at(now)  # a new budget moves (or lifts) the wait at once
        self.schedule.pace(f.package, until if until > now else None)
        if old is not None:
            st.last_push = old.last_push
        self.folders[f.package] = st
        self.roots.watch(st.root, old.root.layout if old is not None else None)

    def _remove_folder(self, package: str) -> None:
        self.folders.pop(package, None)
        if self.metrics is not None:
            self.metrics.forget(package)
        if self.monitor is not None:
            self.monitor.forget(package)
        self.schedule.remove(package)
        self.roots.unwatch(package)

    def _polled(self, done: PollDone, now: float) -> None:
        """A poll of a folder's network or FUSE part ended: its changes go to the scheduler."""
        st = self.folders.get(done.package)
        if st is None or self.polls is None or self.polls.current(done.package) is not done.source:
            return  # the folder was removed or re-watched since that poll began

        def note(path: str | None, since: float | None) -> None:
            self.schedule.note(done.package, now, path, since=since)

        self.roots.polled(st.root, done, note)

    def _pushed_files(self, package: str) -> dict[str, Any]:
        assert self.index is not None
        return {k: r.stat for k, r in self.index.files(package).items()}

    def _poll_holds(self, now: float) -> None:
        """An operator releases a hold from another process (`push --allow-deletes`)."""
        held = [p for p in self.folders if self.schedule.held(p)]
        if not held or self.index is None:
            return
        recorded = self.index.holds()
        for pkg in held:
            if pkg not in recorded and self.schedule.release(pkg, now):
                self.log.info("push.released", package=pkg, detail="the hold was released; pushing again")

    # -- pushes (service/pushes.py) --------------------------------------------------------
    def _push_done(self, package: str, now: float) -> None:
        start, st, result = self.pushes.finish(package, now)
        if isinstance(result, WorkflowRefused):
            folders.workflow_refused(st, self.monitor, result)
        elif not isinstance(result, Exception):
            if result.pushed:
                st.last_push = time.time()
                folders.pace(st, self.schedule, self.monitor, self.log, result.manifest_bytes, now)
                folders.workflow_accepted(st, self.monitor)
            if start.batch.full:
                self.log.info("rescan.completed", package=package, files=result.files,
                              pushed=result.pushed, top_hash=result.top_hash)
        self.notifier.status(self._status_line())

    # -- metrics and health (service/monitor.py) ------------------------------------------
    def _note_health(self, result: CheckResult) -> None:
        if self.monitor is not None:
            self.monitor.note(result)

    def _update_gauges(self) -> None:
        if self.metrics is None:
            return
        for pkg, st in self.folders.items():
            batch = self.schedule.pending(pkg)
            self.metrics.pending.labels(pkg).set(0 if batch is None else max(1, batch.size))
            if st.last_push:
                self.metrics.last_push.labels(pkg).set(st.last_push)

    def _start_health(self) -> None:
        """Network checks run on their own thread with short timeouts: never in the loop."""
        from quiltsync.local.watcher import installed_watches

        assert self.monitor is not None
        count = installed_watches if self._watcher is not None else None
        layouts = {p: st.root.layout for p, st in self.folders.items() if st.root.layout is not None}
        self.monitor.start(self.config, count, lambda f: self.inbox.put(_Msg("health", value=f)), layouts)

    def _health_done(self, fut: Future[Any], now: float) -> None:
        assert self.monitor is not None
        refused = {pkg for pkg, st in self.folders.items() if st.refused and self.monitor.ok("workflow", pkg) is False}
        self.monitor.done(fut, folders.stuck_rows(self.schedule, self.folders, now))
        for pkg in refused:  # the workflow check turned ok (a fixed config): retry now, not after the backoff
            if self.monitor.ok("workflow", pkg) and self.schedule.retry_now(pkg, now):
                self.log.info("push.retrying", package=pkg, detail="the bucket's workflow accepts the folder now")
        self.notifier.status(self._status_line())

    # -- reload and stop ------------------------------------------------------------------
    def _reload(self) -> None:
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            self.log.error("daemon.reload_failed", error=str(e), detail="keeping the running config")
            self.notifier.ready(self._status_line())
            return
        if s3settings.S3Settings.from_config(new.s3) != s3settings.S3Settings.from_config(self.config.s3) and self.pushes.running:
            # Entries of one endpoint are not valid on another: let in-flight pushes end first.
            self.log.info("daemon.reload_waiting", pushes_in_flight=sorted(self.pushes.running),
                          detail="the S3 endpoint changes; waiting for pushes in flight")
            self._pending_reload = new
            self.schedule.pause()
            return
        self._apply_reload(new)

    def _apply_reload(self, new: Config) -> None:
        self._pending_reload = None
        self.schedule.resume()
        moved = s3settings.S3Settings.from_config(new.s3) != s3settings.S3Settings.from_config(self.config.s3)
        old = {f.package: f for f in self.config.folder}
        fresh = {f.package: f for f in new.folder}
        removed = sorted(set(old) - set(fresh))
        added = sorted(set(fresh) - set(old))
        changed = sorted(p for p in set(old) & set(fresh) if moved or old[p] != fresh[p])
        self.config = new
        s3settings.activate(s3settings.S3Settings.from_config(new.s3))
        transfer.apply(new.s3)
        for p in removed:
            self._remove_folder(p)
        for p in changed + added:
            self._add_folder(fresh[p])
        self.log.info("daemon.reloaded", added=added, removed=removed, changed=changed,
                      folders=len(self.folders), s3_changed=moved)
        self.notifier.ready(self._status_line())

    def shutdown(self) -> None:
        self.notifier.stopping()
        pending = sorted(p for p in self.folders if self.schedule.pending(p) is not None)
        self.log.info("daemon.stopping", pending=pending, drain_seconds=DRAIN_SECONDS)
        if self._watcher is not None:
            self._watcher.stop()
        if self.polls is not None:
            self.polls.shutdown()
        self.stuck = self.pushes.drain(self.folders, pending, self.clock() + DRAIN_SECONDS, self.clock)
        if self.stuck:
            self.log.warning("daemon.stuck_pushes", packages=self.stuck,
                             detail="pushes blocked in a filesystem call (a share that does not answer) are "
                                    "abandoned; their changes are pushed at the next start")
        self.pushes.shutdown()
        if self.monitor is not None:
            self.monitor.shutdown()
        if self.pruner is not None:
            self.pruner.shutdown()
        if self.metrics is not None:
            self.metrics.stop()
        if self.index is not None:
            self.index.close()
        self._lock.release()
        self.notifier.close()

    # -- status -------------------------------------------------------------------------
    def _status_line(self) -> str:
        pending = sum(1 for p in self.folders if self.schedule.pending(p) is not None)
        failing = [p for p, st in self.folders.items()
                   if self.schedule.failures(p)[0] or self.schedule.held(p) or st.root.problem]
        failing += self.monitor.failing() if self.monitor is not None else []
        pushes = [st.last_push for st in self.folders.values() if st.last_push]
        age = f"last push {math.floor(time.time() - max(pushes))}s ago" if pushes else "no push yet"
        health = f"{len(failing)} failing: {', '.join(failing)}" if failing else "health ok"
        return f"{len(self.folders)} folders, {pending} pending, {age}, {health}"


def run_daemon(config_path: Path, config: Config) -> int:
    daemon = Daemon(config_path, config)
    code = 1
    try:
        code = daemon.run()
    finally:
        if daemon.stuck:
            # The interpreter would wait at exit for the push threads that a hung share holds.
            if sys.exc_info()[1] is not None:
                traceback.print_exc()  # os._exit would swallow the crash
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return code

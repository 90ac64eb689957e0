"""`quiltsync run`: watch, debounce, reconcile, push; speak systemd's notify protocol.

One main thread owns all state. Everything else talks to it through one
``queue.SimpleQueue`` (whose put() is safe from signal handlers): watchdog's
thread posts changes, push workers post results, signal handlers post signals.
The loop waits on the queue with a timeout set by the next deadline (a due push,
a watchdog ping, a periodic rescan, a root check); it never polls in a busy loop.
Pushes run on a thread pool: one push per folder at a time, folders in parallel.
"""

from __future__ import annotations

import math
import os
import queue
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quiltsync.remote import settings as quilt_env
from quiltsync.config import Config, FolderConfig, load_config
from quiltsync.core.debounce import Batch, Debouncer
from quiltsync.errors import ConfigError, PushRefused, QuiltsyncError
from quiltsync.local.index import Index
from quiltsync.logs import get_logger
from quiltsync.service.notify import Notifier
from quiltsync.local.scanner import make_ignore_spec

DRAIN_SECONDS = 60.0  # SIGTERM: finish and push pending changes for at most this long
ROOT_CHECK_SECONDS = 5.0  # how often roots are checked for vanishing or coming back
BACKOFF_CAP_SECONDS = 300.0


@dataclass(slots=True)
class _FolderState:
    config: FolderConfig
    pusher: Any  # FolderPusher
    watching: bool = False
    root_problem: str | None = None
    failures: int = 0
    last_push: float | None = None  # wall time
    last_top_hash: str | None = None
    in_flight: Future | None = None
    batch: Batch | None = None
    problem: str | None = None


@dataclass(slots=True)
class _Msg:
    kind: str  # change | overflow | signal | done
    package: str | None = None
    path: str | None = None
    value: Any = None


@dataclass
class Daemon:
    config_path: Path
    config: Config
    notifier: Notifier = field(default_factory=Notifier)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.log = get_logger("quiltsync.service.daemon")
        self.inbox: queue.SimpleQueue[_Msg] = queue.SimpleQueue()
        self.debouncer = Debouncer()
        self.folders: dict[str, _FolderState] = {}
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="push")
        self.stopping = False
        self._next_ping = 0.0
        self._next_rescan = 0.0
        self._next_root_check = 0.0
        self._next_health = 0.0
        self._watcher: Any = None
        self.health_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="health")
        self._health_running = False
        self.health: dict[tuple[str, str], Any] = {}  # (check, target) -> CheckResult
        self.metrics: Any = None
        self._health_index: Index | None = None  # where health is recorded for `quiltsync status`

    # -- life cycle ---------------------------------------------------------------
    def run(self) -> int:
        from quiltsync.local.watcher import Watcher

        quilt_env.configure_s3(self.config.s3.endpoint_url, self.config.s3.region)
        self._install_signals()
        self._watcher = Watcher(self._on_change, self._on_overflow)
        self._watcher.start()
        self.log.info("daemon.started", pid=os.getpid(), config=str(self.config_path),
                      folders=len(self.config.folder))
        self._start_metrics()
        for f in self.config.folder:
            self._add_folder(f)
        now = self.clock()
        self._next_rescan = now + self.config.daemon.rescan_interval_seconds
        self._next_root_check = now + ROOT_CHECK_SECONDS
        self.notifier.ready(self._status_line())
        try:
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, _frame: self.inbox.put(_Msg("signal", value=signum)))

    def _loop(self) -> None:
        while not self.stopping:
            now = self.clock()
            self._start_due_pushes(now)
            timeout = self._next_wakeup(now) - now
            try:
                msg = self.inbox.get(timeout=max(0.0, timeout))
            except queue.Empty:
                msg = None
            if msg is not None:
                self._handle(msg)
                while True:  # drain what queued meanwhile before deciding again
                    try:
                        self._handle(self.inbox.get_nowait())
                    except queue.Empty:
                        break
            self._timers(self.clock())
            self._update_gauges()

    def _next_wakeup(self, now: float) -> float:
        times = [self._next_rescan, self._next_root_check, self._next_health]
        deadline = self.debouncer.next_deadline()
        if deadline is not None:
            times.append(deadline)
        if self.notifier.watchdog_interval:
            times.append(self._next_ping)
        return min(times)

    def _timers(self, now: float) -> None:
        if self.notifier.watchdog_interval and now >= self._next_ping:
            # Only the main loop pings: a hung loop stops the pings and systemd acts.
            self.notifier.watchdog()
            self._next_ping = now + self.notifier.watchdog_interval
        if now >= self._next_rescan:
            self._next_rescan = now + self.config.daemon.rescan_interval_seconds
            for pkg in self.folders:
                self.debouncer.note(pkg, now, None, urgent=True)
        if now >= self._next_root_check:
            self._next_root_check = now + ROOT_CHECK_SECONDS
            self._check_roots(now)
        if now >= self._next_health:
            self._next_health = now + self.config.daemon.health_interval_seconds
            self._start_health()

    # -- messages -----------------------------------------------------------------
    def _on_change(self, package: str, path: str | None) -> None:  # watchdog's thread
        self.inbox.put(_Msg("change", package, path))

    def _on_overflow(self, path: str | None) -> None:  # watchdog's thread
        self.inbox.put(_Msg("overflow", path=path))

    def _handle(self, msg: _Msg) -> None:
        now = self.clock()
        if msg.kind == "change" and msg.package in self.folders:
            self.debouncer.note(msg.package, now, msg.path)
        elif msg.kind == "overflow":
            pkgs = [p for p, st in self.folders.items()
                    if msg.path is None or str(st.config.path) == msg.path]
            for pkg in pkgs or list(self.folders):
                self.log.warning("watch.overflow", package=pkg,
                                 detail="kernel event queue overflowed; events lost, rescanning")
                self.debouncer.note(pkg, now, None, urgent=True)
        elif msg.kind == "done":
            self._push_done(msg.package or "", msg.value, now)
        elif msg.kind == "health":
            self._health_done(msg.value, now)
        elif msg.kind == "signal":
            if msg.value == signal.SIGHUP:
                self._reload()
            else:
                self.stopping = True

    # -- folders ------------------------------------------------------------------
    def _add_folder(self, f: FolderConfig) -> None:
        from quiltsync.engine.pusher import FolderPusher

        index = Index(self.config.daemon.state_dir / "index.sqlite3")  # one connection per folder
        self.folders[f.package] = _FolderState(f, FolderPusher(f, index))
        self.debouncer.configure(f.package, f.settle_seconds, f.max_delay_seconds)
        self._try_watch(self.folders[f.package])
        # start-up reconcile: stat-compare with the index, push differences
        self.debouncer.note(f.package, self.clock(), None, urgent=True)

    def _remove_folder(self, package: str) -> None:
        st = self.folders.pop(package, None)
        if self.metrics is not None:
            self.metrics.forget(package)
        self.debouncer.forget(package)
        if self._watcher is not None:
            self._watcher.unwatch(package)
        if st is not None and st.in_flight is None:
            st.pusher.index.close()

    def _try_watch(self, st: _FolderState) -> None:
        from quiltsync.local.watcher import installed_watches

        before = installed_watches()
        try:
            self._watcher.watch(st.config.package, st.config.path, make_ignore_spec(st.config.ignore))
        except OSError as e:
            problem = f"cannot watch {st.config.path}: {e.strerror or e}"
            if st.root_problem != problem:
                self.log.error("watch.failed", package=st.config.package, path=str(st.config.path),
                               detail=problem, retry_in_s=ROOT_CHECK_SECONDS)
            st.watching, st.root_problem = False, problem
            return
        after = installed_watches()
        st.watching, st.root_problem = True, None
        self.log.info("watch.started", package=st.config.package, folder=str(st.config.path),
                      directories=(after - before) if before >= 0 and after >= 0 else None)

    def _check_roots(self, now: float) -> None:
        lost = set(self._watcher.lost()) if self._watcher else set()
        for pkg, st in self.folders.items():
            if pkg in lost:
                self._watcher.unwatch(pkg)
                st.watching = False
                st.root_problem = f"folder {st.config.path} vanished or was replaced"
                self.log.error("watch.lost", package=pkg, path=str(st.config.path),
                               detail=st.root_problem, retry_in_s=ROOT_CHECK_SECONDS)
            elif not st.watching:
                self._try_watch(st)
                if st.watching:  # came back: whatever happened meanwhile is reconciled
                    self.debouncer.note(pkg, now, None, urgent=True)

    # -- pushes -------------------------------------------------------------------
    def _start_due_pushes(self, now: float) -> None:
        if self.stopping:
            return
        for pkg in self.debouncer.due(now):
            st = self.folders.get(pkg)
            if st is None or st.in_flight is not None:
                continue
            overdue = self.debouncer.overdue(pkg, now)
            batch = self.debouncer.take(pkg)
            st.batch = batch
            paths = None if batch is None or batch.full else set(batch.paths)
            st.in_flight = self.pool.submit(self._push_job, st, defer_moving=not overdue, paths=paths)
            st.in_flight.add_done_callback(
                lambda fut, pkg=pkg: self.inbox.put(_Msg("done", pkg, value=fut)))

    @staticmethod
    def _push_job(st: _FolderState, *, defer_moving: bool, paths: set[str] | None = None) -> Any:
        return st.pusher.push(defer_moving=defer_moving, paths=paths)

    def _push_done(self, package: str, fut: Future, now: float) -> None:
        st = self.folders.get(package)
        if st is None:
            return
        batch, st.in_flight, st.batch = st.batch, None, None
        try:
            result = fut.result()
        except QuiltsyncError as e:  # refused, permanent, transient, conflicts that kept moving
            st.problem = str(e)
            st.failures += 1
            # a refusal was logged as push.refused by the pusher, with its reason
            self._retry_later(st, now, str(e), log=not isinstance(e, PushRefused))
            return
        except Exception as e:  # a bug: log it with its traceback, keep the daemon alive
            self.log.exception("push.failed", package=package, error=f"{type(e).__name__}: {e}")
            st.failures += 1
            self._retry_later(st, now, str(e), log=False)
            return
        st.failures, st.problem = 0, None
        self.debouncer.release(package)
        if self.metrics is not None:
            self.metrics.push_done(package, result)
        if result.top_hash:
            st.last_top_hash = result.top_hash
        if result.pushed:
            st.last_push = time.time()
        if result.changed_during_push:
            self.debouncer.note(package, now, None)
        if batch is not None and batch.full:
            self.log.info("rescan.completed", package=package, files=result.files,
                          pushed=result.pushed, top_hash=result.top_hash)
        self.notifier.status(self._status_line())

    def _retry_later(self, st: _FolderState, now: float, error: str, *, log: bool = True) -> None:
        delay = min(BACKOFF_CAP_SECONDS, 2.0 ** min(st.failures - 1, 16))
        if self.metrics is not None:
            self.metrics.push_failed(st.config.package)
        if log:
            self.log.warning("push.failed", package=st.config.package, registry=st.config.registry,
                             error=error, attempt=st.failures, retry_in_s=delay)
        self.debouncer.note(st.config.package, now, None, urgent=True)
        self.debouncer.hold_until(st.config.package, now + delay)
        self.notifier.status(self._status_line())

    # -- metrics ------------------------------------------------------------------
    def _start_metrics(self) -> None:
        address = self.config.daemon.metrics_address
        if not address:
            return
        from quiltsync.service.metrics import Metrics

        metrics = Metrics()
        try:
            host, port = metrics.serve(address)
        except OSError as e:
            self.log.error("metrics.failed", address=address, error=str(e),
                           detail="metrics are off; pushing goes on")
            return
        self.metrics = metrics
        self.log.info("metrics.started", address=f"{host}:{port}")

    def _update_gauges(self) -> None:
        if self.metrics is None:
            return
        for pkg, st in self.folders.items():
            batch = self.debouncer.pending(pkg)
            self.metrics.pending.labels(pkg).set(0 if batch is None else max(1, batch.size))
            if st.last_push:
                self.metrics.last_push.labels(pkg).set(st.last_push)

    # -- health -------------------------------------------------------------------
    def _start_health(self) -> None:
        """Network checks run on their own thread with short timeouts: never in the loop."""
        if self._health_running:
            return
        from quiltsync.service.health import run_all
        from quiltsync.local.watcher import installed_watches

        self._health_running = True
        config = self.config
        fut = self.health_pool.submit(lambda: run_all(config, installed_watches=installed_watches))
        fut.add_done_callback(lambda f: self.inbox.put(_Msg("health", value=f)))

    def _health_done(self, fut: Future, now: float) -> None:
        from quiltsync.service.health import CheckResult

        self._health_running = False
        try:
            results = list(fut.result())
        except Exception as e:  # noqa: BLE001 - a check crashing is itself a health failure
            results = [CheckResult("registry", "health checks", "fail", f"{type(e).__name__}: {e}")]
        results += self._stuck_checks(now)
        for r in results:
            key = (r.check, r.target)
            previous = self.health.get(key)
            if r.status == "ok":
                if previous is None or previous.status != "ok":
                    self.log.info("health.ok", check=r.check, target=r.target, detail=r.detail)
            else:
                log = self.log.error if r.status == "fail" else self.log.warning
                log("health.failed", check=r.check, target=r.target, detail=r.detail, severity=r.status)
            self.health[key] = r
            if self.metrics is not None:
                from quiltsync.service.metrics import HEALTH_VALUE

                self.metrics.health.labels(r.check, r.target).set(HEALTH_VALUE[r.status])
        try:
            self._recorder().write_health(
                [(r.check, r.target, r.status, r.detail) for r in self.health.values()], time.time())
        except Exception as e:  # noqa: BLE001 - status is best effort; never stop the daemon
            self.log.warning("health.record_failed", error=str(e))
        self.notifier.status(self._status_line())

    def _stuck_checks(self, now: float) -> list[Any]:
        from quiltsync.service.health import CheckResult

        out = []
        for pkg, st in self.folders.items():
            batch = self.debouncer.pending(pkg)
            waited = now - batch.first if batch is not None else 0.0
            bound = 3 * st.config.max_delay_seconds + 60
            if st.failures >= 5 or waited > bound:
                why = (f"pushes failing {st.failures} times in a row: {st.problem or st.root_problem}"
                       if st.failures >= 5 else f"changes pending for {waited:.0f}s (bound {bound:.0f}s)")
                out.append(CheckResult("stuck", pkg, "fail", why))
            else:
                out.append(CheckResult("stuck", pkg, "ok", "changes flow"))
        return out

    def _recorder(self) -> Index:
        if self._health_index is None:
            self._health_index = Index(self.config.daemon.state_dir / "index.sqlite3")
        return self._health_index

    # -- reload and stop ------------------------------------------------------------
    def _reload(self) -> None:
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            self.log.error("daemon.reload_failed", error=str(e), detail="keeping the running config")
            self.notifier.ready(self._status_line())
            return
        old = {f.package: f for f in self.config.folder}
        fresh = {f.package: f for f in new.folder}
        removed = sorted(set(old) - set(fresh))
        added = sorted(set(fresh) - set(old))
        changed = sorted(p for p in set(old) & set(fresh) if old[p] != fresh[p])
        self.config = new
        quilt_env.configure_s3(new.s3.endpoint_url, new.s3.region)
        for p in removed + changed:
            self._remove_folder(p)
        for p in changed + added:
            self._add_folder(fresh[p])
        self.log.info("daemon.reloaded", added=added, removed=removed, changed=changed,
                      folders=len(self.folders))
        self.notifier.ready(self._status_line())

    def _shutdown(self) -> None:
        self.notifier.stopping()
        pending = sorted(p for p in self.folders if self.debouncer.pending(p) is not None)
        self.log.info("daemon.stopping", pending=pending, drain_seconds=DRAIN_SECONDS)
        if self._watcher is not None:
            self._watcher.stop()
        deadline = self.clock() + DRAIN_SECONDS
        for st in self.folders.values():  # finish the pushes in flight
            if st.in_flight is not None:
                try:
                    st.in_flight.result(timeout=max(0.0, deadline - self.clock()))
                except Exception:  # noqa: BLE001 - reported by the push itself
                    pass
        for pkg in pending:  # then push what was still pending, within the bound
            st = self.folders[pkg]
            if self.clock() >= deadline:
                self.log.warning("daemon.drain_timeout", package=pkg)
                continue
            fut = self.pool.submit(self._push_job, st, defer_moving=False)
            try:
                fut.result(timeout=max(0.0, deadline - self.clock()))
            except Exception as e:  # noqa: BLE001
                self.log.warning("push.failed", package=pkg, error=str(e), attempt=1, retry_in_s=None)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.health_pool.shutdown(wait=False, cancel_futures=True)
        if self.metrics is not None:
            self.metrics.stop()
        for st in self.folders.values():
            st.pusher.index.close()
        if self._health_index is not None:
            self._health_index.close()
        self.notifier.close()

    # -- status ---------------------------------------------------------------------
    def _status_line(self) -> str:
        pending = sum(1 for p in self.folders if self.debouncer.pending(p) is not None)
        failing = [p for p, st in self.folders.items() if st.problem or st.root_problem]
        failing += sorted({r.check for r in self.health.values() if r.status == "fail"})
        pushes = [st.last_push for st in self.folders.values() if st.last_push]
        age = f"last push {math.floor(time.time() - max(pushes))}s ago" if pushes else "no push yet"
        health = f"{len(failing)} failing: {', '.join(failing)}" if failing else "health ok"
        return f"{len(self.folders)} folders, {pending} pending, {age}, {health}"


def run_daemon(config_path: Path, config: Config) -> int:
    return Daemon(config_path, config).run()

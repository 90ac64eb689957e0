"""The daemon's pushes: the scheduler's Starts carried out on a thread pool.

One push per package runs at a time (the scheduler never hands out a second
one); its end is posted to the main loop, which calls ``finish``: the outcome
goes back to the scheduler, and a failure is logged as the scheduler says
(transient ones each time, a permanent one once). A refusal was already logged
by the pusher as ``push.refused``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from quiltsync.core.schedule import Failed, Pushed, Scheduler, Start, outcome_of
from quiltsync.core.types import PushResult
from quiltsync.errors import BucketRefuses, QuiltsyncError
from quiltsync.remote.settings import PARALLEL_PUSHES
from quiltsync.service.roots import FIRST_POLL

_DONE: Future[Any] = Future()
_DONE.set_result(None)


class Pushes:
    def __init__(self, schedule: Scheduler, post_done: Callable[[str], None], log: Any) -> None:
        self.schedule = schedule
        self.post_done = post_done
        self.log = log
        self.metrics: Any = None
        self.running: dict[str, tuple[Start, Future[PushResult], Any]] = {}
        self.pool = ThreadPoolExecutor(max_workers=PARALLEL_PUSHES, thread_name_prefix="push")

    def start_due(self, now: float, folders: Mapping[str, Any]) -> None:
        """Start every push the scheduler says is due; ``folders[pkg].pusher`` does it."""
        for start in self.schedule.due(now):
            st = folders.get(start.package)
            if st is None:  # removed meanwhile: nothing to push
                self.schedule.finished(start.package, start.generation, now, Pushed())
                continue
            paths = None if start.batch.full else set(start.batch.paths)
            # changes on a share that have not stood still for a poll (as the last poll saw them)
            # stay out of this push, even if noted before: the poll hands them over again
            fut = self.pool.submit(st.pusher.push, defer_moving=not start.overdue, paths=paths,
                                   hold=st.root.waiting)
            self.running[start.package] = (start, fut, st)
            fut.add_done_callback(self._poster(start.package))

    def _poster(self, package: str) -> Callable[[Future[PushResult]], None]:
        return lambda _fut: self.post_done(package)  # on the pool's thread

    def finish(self, package: str, now: float) -> tuple[Start, Any, PushResult | Exception]:
        """The push of ``package`` ended: tell the scheduler; (start, folder, result or error)."""
        start, fut, st = self.running.pop(package)
        try:
            result = fut.result()
        except Exception as e:
            self._failed(start, st, e, now)
            return start, st, e
        self.schedule.finished(package, start.generation, now, Pushed(bool(result.changed_during_push)))
        if self.metrics is not None:
            self.metrics.push_done(package, result)
        return start, st, result

    def _failed(self, start: Start, st: Any, e: Exception, now: float) -> None:
        outcome = outcome_of(e)
        if not isinstance(e, QuiltsyncError):
            self.log.exception("push.failed", package=start.package, error=f"{type(e).__name__}: {e}")
        retry = self.schedule.finished(start.package, start.generation, now, outcome)
        if not isinstance(outcome, Failed):
            return
        if self.metrics is not None:
            self.metrics.push_failed(start.package)
        if retry is not None and retry.report and isinstance(e, QuiltsyncError) and not isinstance(e, BucketRefuses):
            self.log.warning("push.failed", package=start.package, registry=st.config.registry, error=str(e),
                             attempt=retry.attempt, retry_in_s=retry.delay, permanent=outcome.permanent)

    def wait(self, timeout: Callable[[], float]) -> None:
        """Let the pushes in flight finish (each within what ``timeout()`` leaves)."""
        for _start, fut, _st in list(self.running.values()):
            try:
                fut.result(timeout=max(0.0, timeout()))
            except Exception:
                pass

    def drain(self, folders: Mapping[str, Any], pending: list[str], deadline: float,
              clock: Callable[[], float]) -> list[str]:
        """SIGTERM: let the pushes in flight end, then push what was still pending,
        all before ``deadline``; the packages whose push is still blocked then (in
        a filesystem call on a share that does not answer) are returned."""
        futures = {p: fut for p, (_s, fut, _st) in self.running.items()}
        for pkg, fut in futures.items():
            if self.schedule.blocked(pkg) not in (None, FIRST_POLL):
                continue  # waiting on a share that does not answer: not worth the drain's time
            try:
                fut.result(timeout=max(0.0, deadline - clock()))
            except Exception:
                pass
        for pkg in pending:
            if clock() >= deadline:
                self.log.warning("daemon.drain_timeout", package=pkg)
                continue
            if self.schedule.held(pkg) or self.schedule.blocked(pkg) or not futures.get(pkg, _DONE).done():
                continue
            st = folders[pkg]
            futures[pkg] = fut = self.pool.submit(st.pusher.push, defer_moving=False, hold=st.root.waiting)
            try:
                fut.result(timeout=max(0.0, deadline - clock()))
            except Exception as e:
                self.log.warning("push.failed", package=pkg, error=str(e), attempt=1, retry_in_s=None)
        return sorted(p for p, fut in futures.items() if not fut.done())

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

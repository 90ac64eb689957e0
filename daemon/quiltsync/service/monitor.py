"""The daemon's health monitor and metrics: off the main loop, never in a push's way.

``HealthMonitor`` runs the network checks on a thread of its own (short
timeouts), logs only what changed (``health.ok`` once when a check recovers,
``health.failed`` each time it fails), records the results in the index for
`quiltsync status`, and mirrors them into the Prometheus gauges when metrics
are on. ``start_metrics`` opens the opt-in metrics endpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from quiltsync.config import Config
from quiltsync.core.watchmode import Layout
from quiltsync.local.index import Index
from quiltsync.service.health import CheckResult, run_all


class HealthMonitor:
    def __init__(self, index: Index, log: Any, metrics: Any = None) -> None:
        self.index = index
        self.log = log
        self.metrics = metrics
        self.results: dict[tuple[str, str], CheckResult] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="health")
        self._running = False

    def start(self, config: Config, installed_watches: Callable[[], int] | None,
              on_done: Callable[[Future[list[CheckResult]]], None],
              layouts: Mapping[str, Layout] | None = None) -> None:
        """Run every check on the health thread; ``on_done`` gets the future (from that thread).

        ``layouts``: how the daemon watches each folder; the watches check then
        leaves the folders' own rows to the daemon and never walks a polled part.
        """
        if self._running:
            return
        self._running = True
        fut = self._pool.submit(lambda: run_all(config, installed_watches=installed_watches, layouts=layouts,
                                                   index=self.index))
        fut.add_done_callback(on_done)

    def done(self, fut: Future[list[CheckResult]], extra: Iterable[CheckResult]) -> None:
        """Log, record and export the results of a run (on the main loop)."""
        self._running = False
        try:
            results = list(fut.result())
        except Exception as e:
            results = [CheckResult("registry", "health checks", "fail", f"{type(e).__name__}: {e}")]
        for r in [*results, *extra]:
            self._record(r)
        self._write()

    def _write(self) -> None:
        try:
            self.index.write_health(
                [(r.check, r.target, r.status, r.detail) for r in self.results.values()], time.time())
        except Exception as e:
            self.log.warning("health.record_failed", error=str(e))

    def note(self, result: CheckResult) -> None:
        """A result learnt outside a run (a push refused by the bucket's workflow)."""
        self._record(result)
        self._write()

    def forget(self, target: str) -> None:
        """A folder left the config: its rows go (the others stay)."""
        for key in [k for k in self.results if k[1] == target]:
            del self.results[key]
        self._write()

    def ok(self, check: str, target: str) -> bool | None:
        """Whether the last result of ``check`` for ``target`` was ok (None: none yet)."""
        r = self.results.get((check, target))
        return None if r is None else r.ok

    def failing(self) -> list[str]:
        return sorted({r.check for r in self.results.values() if r.status == "fail"})

    def _record(self, r: CheckResult) -> None:
        previous = self.results.get((r.check, r.target))
        if r.status == "ok":
            if previous is None or previous.status != "ok":
                self.log.info("health.ok", check=r.check, target=r.target, detail=r.detail)
        else:
            log = self.log.error if r.status == "fail" else self.log.warning
            log("health.failed", check=r.check, target=r.target, detail=r.detail, severity=r.status)
        self.results[(r.check, r.target)] = r
        if self.metrics is not None:
            from quiltsync.service.metrics import HEALTH_VALUE

            self.metrics.health.labels(r.check, r.target).set(HEALTH_VALUE[r.status])

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def start_metrics(address: str | None, log: Any) -> Any:
    """The metrics endpoint, or None when off or when the address cannot be bound."""
    if not address:
        return None
    from quiltsync.service.metrics import Metrics

    metrics = Metrics()
    try:
        host, port = metrics.serve(address)
    except OSError as e:
        log.error("metrics.failed", address=address, error=str(e), detail="metrics are off; pushing goes on")
        return None
    log.info("metrics.started", address=f"{host}:{port}")
    return metrics

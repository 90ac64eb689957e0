"""Opt-in Prometheus metrics (``[daemon] metrics_address``), one registry per daemon.

Served by prometheus_client's own HTTP server on a thread; the daemon's main
loop updates the values. Never required for pushing: a port that cannot be bound
is logged, and the daemon goes on without metrics.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

HEALTH_VALUE = {"ok": 1.0, "warn": 0.5, "fail": 0.0}


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.pushes = Counter("quiltsync_pushes", "Revisions pushed", ["package"], registry=r)
        self.failures = Counter("quiltsync_push_failures", "Push passes that failed or were refused",
                                ["package"], registry=r)
        self.duration = Histogram("quiltsync_push_duration_seconds", "Duration of pushes that made a revision",
                                  ["package"], registry=r,
                                  buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900))
        self.bytes = Counter("quiltsync_uploaded_bytes", "Bytes of files set for upload", ["package"], registry=r)
        self.pending = Gauge("quiltsync_pending_changes", "Paths waiting for a push (1 = a full rescan)",
                             ["package"], registry=r)
        self.last_push = Gauge("quiltsync_last_push_timestamp_seconds", "Unix time of the last pushed revision",
                               ["package"], registry=r)
        self.health = Gauge("quiltsync_health", "Last health check: 1 ok, 0.5 warn, 0 fail",
                            ["check", "target"], registry=r)
        self._server: Any = None

    def serve(self, address: str) -> tuple[str, int]:
        host, _, port = address.rpartition(":")
        self._server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
        return self._server.server_address[0], self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def push_done(self, package: str, result: Any) -> None:
        if result.pushed:
            self.pushes.labels(package).inc()
            self.duration.labels(package).observe(result.duration_ms / 1000)
            self.bytes.labels(package).inc(result.bytes_uploaded)

    def push_failed(self, package: str) -> None:
        self.failures.labels(package).inc()

    def forget(self, package: str) -> None:
        for metric in (self.pushes, self.failures, self.duration, self.bytes, self.pending, self.last_push):
            try:
                metric.remove(package)
            except KeyError:
                pass

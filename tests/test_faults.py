"""Network and server faults during a stream of edits.

Pass criterion for each fault: the daemon never exits, backs off (capped) while
pushes fail, says so in its health events and STATUS, and once the fault clears
converges: latest revision == folder, and every revision in the history verifies.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from conftest import Setup, write_config
from daemonproc import DaemonProcess, NotifySocket
from faultproxy import FaultProxy
from quiltsync.core.schedule import DEFAULT_BACKOFF_CAP as BACKOFF_CAP_SECONDS
from verify import converged, verify_history

# Short botocore retries so a fault shows within seconds (production keeps 10).
CANARY = "CANARYfaultsNeverLogged0123456789abcdefgh"
ENV = {"AWS_MAX_ATTEMPTS": "2", "AWS_SECRET_ACCESS_KEY": CANARY}
pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def proxy(local_s3) -> Iterator[FaultProxy]:
    p = FaultProxy(local_s3.port).start()
    yield p
    p.stop()


def _editing(folder, stop: threading.Event, counter: list[int]) -> None:
    while not stop.is_set():
        n = counter[0]
        (folder / f"edit-{n:03d}.txt").write_text(f"edit {n} " * (n % 7 + 1) * 200)
        if n % 4 == 3:
            (folder / f"edit-{n - 2:03d}.txt").write_text(f"rewritten {n}")
        counter[0] += 1
        time.sleep(0.4)


def _run_with_fault(setup: Setup, endpoint: str, apply, clear, expect_failures: bool,
                    fault_seconds: float = 5.0, wait_for_health: bool = False) -> None:
    write_config(setup.config_path, setup.folder, setup.package, setup.registry, endpoint, setup.state_dir,
                 "settle_seconds = 0.3\nmax_delay_seconds = 2\n")
    text = setup.config_path.read_text().replace('log_format = "json"\n',
                                                 'log_format = "json"\nhealth_interval_seconds = 2\n')
    setup.config_path.write_text(text)
    (setup.folder / "base.txt").write_text("before the fault")
    sock = NotifySocket()
    d = DaemonProcess(setup.config_path, env=ENV, notify=sock)
    stop, counter = threading.Event(), [0]
    editor = threading.Thread(target=_editing, args=(setup.folder, stop, counter))
    try:
        d.wait_for(lambda e: e.get("event") == "push.completed", timeout=60)
        editor.start()
        mark = d.event_count()
        apply()
        if expect_failures:
            d.wait_for(lambda e: e.get("event") == "push.failed", timeout=90, after=mark)
        if wait_for_health:
            d.wait_for(lambda e: e.get("event") == "health.failed" and e.get("check") == "registry",
                       timeout=90, after=mark)
        time.sleep(fault_seconds)
        status_during = [m for m in sock.snapshot() if "STATUS=" in m]
        clear()
        time.sleep(1.5)
        stop.set()
        editor.join()
        # a folder may sit in its (capped) backoff when the fault clears
        top = converged(setup, timeout=BACKOFF_CAP_SECONDS + 60)
        assert d.proc.poll() is None, "the daemon exited"
        history = verify_history(setup, {})
        assert history[-1] == top
        failed = [e for e in d.of("push.failed") if e.get("retry_in_s") is not None]
        if expect_failures:
            assert failed, "expected failed pushes during the fault"
            assert all(e["retry_in_s"] <= 300 for e in failed)
            assert any("failing" in m for m in status_during), status_during[-3:]
        if wait_for_health:
            assert any(e.get("check") == "registry" for e in d.of("health.failed"))
        assert not any(CANARY in line for line in d.raw), "the secret key reached a log line"
    finally:
        stop.set()
        if editor.is_alive():
            editor.join()
        d.kill()
        sock.close()


def test_added_latency_still_converges(setup: Setup, proxy: FaultProxy) -> None:
    """200 ms on every chunk: slower, never wrong."""
    _run_with_fault(setup, proxy.endpoint, lambda: proxy.set(latency=0.2), proxy.clear, expect_failures=False)


def test_a_share_of_connections_reset(setup: Setup, proxy: FaultProxy) -> None:
    """30% of connections reset mid-request: retries and backoff carry the pushes through."""
    _run_with_fault(setup, proxy.endpoint, lambda: proxy.set(reset_share=0.3), proxy.clear,
                    expect_failures=False)
    assert proxy.faults > 0


def test_refused_connections(setup: Setup, proxy: FaultProxy) -> None:
    """Every connection refused: pushes fail and back off, health says unreachable, then recovery."""
    _run_with_fault(setup, proxy.endpoint, lambda: proxy.set(refuse=True), proxy.clear,
                    expect_failures=True, wait_for_health=True)


def test_responses_cut_after_some_bytes(setup: Setup, proxy: FaultProxy) -> None:
    """Responses cut after 100 bytes (bodies never arrive whole): failures, backoff, recovery."""
    _run_with_fault(setup, proxy.endpoint, lambda: proxy.set(cut_after=100), proxy.clear,
                    expect_failures=True)


def test_a_blackhole_that_heals(setup: Setup, proxy: FaultProxy) -> None:
    """Nothing moves for a while (a partition): health reports it, and all resumes when it heals."""
    _run_with_fault(setup, proxy.endpoint, lambda: proxy.set(blackhole=True), proxy.clear,
                    expect_failures=False, fault_seconds=2.0, wait_for_health=True)


@pytest.mark.parametrize("fault", [(500, "InternalError"), (503, "SlowDown")])
def test_server_errors_on_half_the_uploads(setup: Setup, local_s3, fault) -> None:
    """HTTP 500 / 503 SlowDown on half the object PUTs: retried, converged."""
    import random

    rng = random.Random(7)
    bucket = setup.registry[5:]
    injected = [0]

    def inject(req):
        if req.method == "PUT" and req.path.startswith(f"/{bucket}/team/") and rng.random() < 0.5:
            injected[0] += 1
            return fault
        return None

    _run_with_fault(setup, setup.endpoint, lambda: local_s3.set_fault(inject), lambda: local_s3.set_fault(None),
                    expect_failures=False)
    assert injected[0] > 0


def test_truncated_response_bodies(setup: Setup, local_s3) -> None:
    """`latest` pointer and manifest reads cut short: never trusted, retried, converged."""
    bucket = setup.registry[5:]
    injected = [0]

    def inject(req):
        if req.method == "GET" and req.path.startswith(f"/{bucket}/.quilt/"):
            injected[0] += 1
            return ("truncate", 10)
        return None

    _run_with_fault(setup, setup.endpoint, lambda: local_s3.set_fault(inject), lambda: local_s3.set_fault(None),
                    expect_failures=False)
    assert injected[0] > 0

"""`quiltsync run` as a process: real files, real inotify, the real local S3, a notify socket."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import FAST, Setup, manifest_files, write_config
from daemonproc import DaemonProcess, NotifySocket


def _completed(e: dict) -> bool:
    return e.get("event") == "push.completed"


def test_a_write_is_pushed_and_the_logged_top_hash_is_the_registry_latest(fast: Setup, daemon) -> None:
    """One write: one push.completed whose top_hash is `latest` and holds the bytes."""
    (fast.folder / "hello.txt").write_text("hello")
    done = daemon.wait_for(_completed, timeout=30)
    assert fast.registry_api().latest(fast.package) == done["top_hash"]
    assert manifest_files(fast, done["top_hash"]) == {"hello.txt": b"hello"}


def test_a_burst_of_1000_writes_gives_one_or_two_pushes_holding_all_of_them(fast: Setup, daemon) -> None:
    """A burst is debounced into at most two revisions; the last has every file."""
    mark = daemon.event_count()
    for i in range(1000):
        (fast.folder / f"f{i:04d}.txt").write_text(str(i))
    daemon.wait_for(lambda e: _completed(e) and e["files"] == 1000, timeout=120, after=mark)
    time.sleep(2)
    pushes = [e for e in daemon.of("push.completed")]
    assert 1 <= len(pushes) <= 2
    files = manifest_files(fast, fast.registry_api().latest(fast.package))
    assert len(files) == 1000 and files["f0999.txt"] == b"999"


def test_a_file_written_continuously_past_max_delay_still_gets_pushed(setup: Setup) -> None:
    """Writes that never settle are pushed within max_delay, not postponed forever."""
    write_config(setup.config_path, setup.folder, setup.package, setup.registry, setup.endpoint,
                 setup.state_dir, "settle_seconds = 1.0\nmax_delay_seconds = 3\n")
    d = DaemonProcess(setup.config_path)
    try:
        d.wait_for(lambda e: e.get("event") == "rescan.completed")
        stop = threading.Event()

        def writer() -> None:
            with open(setup.folder / "log.txt", "a") as f:
                while not stop.is_set():
                    f.write("line\n")
                    f.flush()
                    time.sleep(0.1)

        t = threading.Thread(target=writer)
        started = time.monotonic()
        t.start()
        try:
            d.wait_for(_completed, timeout=20)
            assert time.monotonic() - started < 12
        finally:
            stop.set()
            t.join()
        size = (setup.folder / "log.txt").stat().st_size
        d.wait_for(lambda e: _completed(e) and e["bytes_uploaded"] == size, timeout=30)
    finally:
        d.kill()


def test_edits_made_while_the_daemon_was_stopped_are_pushed_at_start(fast: Setup) -> None:
    """A restart reconciles: files changed while it was down are pushed without any event."""
    (fast.folder / "a.txt").write_text("one")
    first = fast.pusher().push()
    (fast.folder / "a.txt").write_text("two!")
    (fast.folder / "b.txt").write_text("new")
    d = DaemonProcess(fast.config_path)
    try:
        done = d.wait_for(_completed, timeout=60)
        assert done["parent_top_hash"] == first.top_hash
        assert (done["added"], done["modified"]) == (1, 1)
    finally:
        d.kill()


def test_an_atomic_save_is_pushed_as_the_target_name_only(fast: Setup, daemon) -> None:
    """Editors save to a temp file and rename it: only the target name is in the revision."""
    tmp = fast.folder / ".report.json.tmp-1234"
    tmp.write_text('{"v": 2}')
    os.rename(tmp, fast.folder / "report.json")
    done = daemon.wait_for(_completed, timeout=30)
    assert manifest_files(fast, done["top_hash"]) == {"report.json": b'{"v": 2}'}


def test_notify_messages_arrive_in_order(fast: Setup) -> None:
    """READY, STATUS, WATCHDOG, then on SIGHUP RELOADING (with MONOTONIC_USEC) and READY, then STOPPING."""
    sock = NotifySocket()
    d = DaemonProcess(fast.config_path, env={"WATCHDOG_USEC": "1000000"}, notify=sock)
    try:
        d.wait_for(lambda e: e.get("event") == "rescan.completed")
        sock.wait_for(lambda m: m.startswith("WATCHDOG=1"))
        d.signal(signal.SIGHUP)
        reloading = sock.wait_for(lambda m: m.startswith("RELOADING=1"))
        sock.wait_for(lambda m: m.startswith("READY=1"), after=reloading)
        assert d.stop() == 0
        sock.wait_for(lambda m: m.startswith("STOPPING=1"))
        msgs = sock.snapshot()
    finally:
        d.kill()
        sock.close()
    kinds = [m.split("\n")[0].split("=")[0] for m in msgs]
    ready = kinds.index("READY")
    assert "STATUS=" in msgs[ready] and "folders" in msgs[ready]
    assert "WATCHDOG" in kinds[ready:]
    reloading = kinds.index("RELOADING")
    assert reloading > ready and "MONOTONIC_USEC=" in msgs[reloading]
    assert "READY" in kinds[reloading:]
    assert kinds[-1] == "STOPPING"
    assert any(k == "STATUS" for k in kinds)


def test_sighup_adds_a_folder_without_a_restart(fast: Setup, daemon) -> None:
    """A folder added to the config is watched and pushed after SIGHUP."""
    second = fast.root / "second"
    second.mkdir()
    text = fast.config_path.read_text()
    text += f'[[folder]]\npath = "{second}"\npackage = "team/second"\nregistry = "{fast.registry}"\n{FAST}'
    fast.config_path.write_text(text)
    daemon.signal(signal.SIGHUP)
    reloaded = daemon.wait_for(lambda e: e.get("event") == "daemon.reloaded")
    assert reloaded["added"] == ["team/second"]
    daemon.wait_for(lambda e: e.get("event") == "watch.started" and e["package"] == "team/second")
    (second / "new.txt").write_text("in the new folder")
    done = daemon.wait_for(lambda e: _completed(e) and e["package"] == "team/second", timeout=30)
    assert fast.registry_api().latest("team/second") == done["top_hash"]


def test_an_invalid_config_on_sighup_is_reported_and_the_old_one_kept(fast: Setup, daemon) -> None:
    """A broken config is not applied: the daemon says why and keeps pushing the old folders."""
    good = fast.config_path.read_text()
    fast.config_path.write_text(good + "bogus_key = 1\n")
    daemon.signal(signal.SIGHUP)
    failed = daemon.wait_for(lambda e: e.get("event") == "daemon.reload_failed")
    assert "bogus_key" in failed["error"]
    (fast.folder / "still.txt").write_text("still pushed")
    daemon.wait_for(_completed, timeout=30)


def test_sigterm_during_a_push_leaves_registry_and_index_consistent(fast: Setup, daemon) -> None:
    """SIGTERM while a large file uploads: the push completes, exit 0, and a new pass finds nothing to do."""
    (fast.folder / "big.bin").write_bytes(os.urandom(24 * 1024 * 1024))
    daemon.wait_for(lambda e: e.get("event") == "push.started", timeout=30)
    daemon.signal(signal.SIGTERM)
    assert daemon.stop() == 0
    done = daemon.of("push.completed")
    assert done and fast.registry_api().latest(fast.package) == done[-1]["top_hash"]
    assert daemon.of("daemon.stopping")
    again = fast.pusher().push()
    assert not again.pushed and again.top_hash == done[-1]["top_hash"]


def test_a_removed_watched_root_pushes_nothing(fast: Setup, daemon) -> None:
    """Deleting the watched folder is reported, never pushed as an empty revision."""
    import shutil

    (fast.folder / "keep.txt").write_text("keep")
    done = daemon.wait_for(_completed, timeout=30)
    shutil.rmtree(fast.folder)
    daemon.wait_for(lambda e: e.get("event") in ("watch.lost", "push.refused"), timeout=30)
    time.sleep(3)
    assert fast.registry_api().latest(fast.package) == done["top_hash"]
    assert len(daemon.of("push.completed")) == 1
    assert daemon.proc.poll() is None  # still running, retrying


class _InotifyQueueLimit:
    """fs.inotify.max_queued_events lowered (root only; skips the test otherwise) until
    ``restore()``. The kernel reads it when an inotify instance is created: restore it
    once the daemon's watches have started, so nothing else on the machine is affected."""

    PATH = Path("/proc/sys/fs/inotify/max_queued_events")

    def __init__(self, limit: int) -> None:
        self.old: str | None = None
        try:
            old = self.PATH.read_text()
            self.PATH.write_text(str(limit))
        except OSError as e:
            pytest.skip(f"the kernel queue cannot be made to overflow: writing {self.PATH} needs root ({e})")
        self.old = old

    def restore(self) -> None:
        if self.old is not None:
            self.PATH.write_text(self.old)
            self.old = None


def _overflowed(e: dict) -> bool:
    return e.get("event") == "watch.overflow"


def _burst_while_stopped(d: DaemonProcess, folder: Path, n: int, dirs: int) -> None:
    """Write ``n`` files into ``dirs`` already watched subdirectories while the daemon is
    stopped (SIGSTOP): nothing drains its inotify queue, so at least 3 events a file
    (create, modify, close_write) pile up and overflow a queue shorter than 3 * n."""
    d.signal(signal.SIGSTOP)
    try:
        for i in range(n):
            (folder / f"d{i % dirs:03d}" / f"f{i:05d}.txt").write_text(str(i))
    finally:
        d.signal(signal.SIGCONT)


def test_a_burst_that_overflows_the_kernel_queue_still_ends_with_every_file(fast: Setup) -> None:
    """Lost events are recovered by a rescan: the queue overflows (watch.overflow) and every
    file of the burst is in the latest revision."""
    n, dirs = 1500, 50
    for k in range(dirs):
        (fast.folder / f"d{k:03d}").mkdir()
    limit = _InotifyQueueLimit(64)
    d = DaemonProcess(fast.config_path)
    try:
        try:
            d.wait_for(lambda e: e.get("event") == "watch.started")
        finally:
            limit.restore()
        d.wait_for(lambda e: e.get("event") == "rescan.completed")
        _burst_while_stopped(d, fast.folder, n, dirs)
        d.wait_for(_overflowed, timeout=60)
        d.wait_for(lambda e: _completed(e) and e["files"] == n, timeout=240)
        assert len(manifest_files(fast, fast.registry_api().latest(fast.package))) == n
    finally:
        limit.restore()
        d.kill()


def test_metrics_endpoint_reports_pushes_health_and_pending(fast: Setup) -> None:
    """With metrics_address set, a scrape shows pushes, bytes, last push time and health per check."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = fast.config_path.read_text().replace('log_format = "json"\n',
                                                f'log_format = "json"\nmetrics_address = "{port}"\n')
    fast.config_path.write_text(text)
    d = DaemonProcess(fast.config_path)
    try:
        started = d.wait_for(lambda e: e.get("event") == "metrics.started")
        assert started["address"] == f"127.0.0.1:{port}"
        d.wait_for(lambda e: e.get("event") == "rescan.completed")
        (fast.folder / "m.txt").write_text("metrics")
        d.wait_for(_completed, timeout=30)
        d.wait_for(lambda e: e.get("event") == "health.ok" and e.get("check") == "versioning", timeout=30)
        pkg = f'package="{fast.package}"'
        deadline = time.monotonic() + 30
        while True:  # the gauges follow the loop's next round: wait for the scrape to show the push
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            if f"quiltsync_pending_changes{{{pkg}}} 0.0" in body or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        d.kill()
    pkg = f'package="{fast.package}"'
    assert f"quiltsync_pushes_total{{{pkg}}} 1.0" in body
    assert f"quiltsync_uploaded_bytes_total{{{pkg}}} 7.0" in body
    assert f"quiltsync_pending_changes{{{pkg}}} 0.0" in body
    assert f"quiltsync_last_push_timestamp_seconds{{{pkg}}}" in body
    assert 'quiltsync_health{check="versioning"' in body and "quiltsync_push_duration_seconds_bucket" in body


@pytest.mark.timeout(900)
def test_a_20000_file_burst_into_1000_directories_converges(fast: Setup) -> None:
    """The issue's overflow case at full size: 20,000 files into 1,000 directories overflow
    the kernel's default queue (16,384 events; watch.overflow) and every file ends up in the
    latest revision."""
    n, dirs = 20_000, 1000
    for k in range(dirs):
        (fast.folder / f"d{k:03d}").mkdir()
    queue = int(_InotifyQueueLimit.PATH.read_text())
    if 3 * n <= queue:
        pytest.skip(f"fs.inotify.max_queued_events = {queue}: {n} files cannot overflow it")
    d = DaemonProcess(fast.config_path)
    try:
        d.wait_for(lambda e: e.get("event") == "rescan.completed")
        _burst_while_stopped(d, fast.folder, n, dirs)
        d.wait_for(_overflowed, timeout=120)
        d.wait_for(lambda e: _completed(e) and e["files"] == n, timeout=800)
        latest = fast.registry_api().revision(fast.package, fast.registry_api().latest(fast.package))
        assert len(latest.entries) == n
        print(f"20,000-file burst: {len(d.of('push.completed'))} pushes, "
              f"{len(d.of('watch.overflow'))} overflows")
    finally:
        d.kill()


def test_folders_pushed_at_once_never_overflow_the_connection_pool(fast: Setup) -> None:
    """Four folders of 200 files each, pushed at the same time, share quilt3's S3 client:
    every revision lands, and urllib3 never logs "Connection pool is full, discarding
    connection" (each discarded connection is a new TCP/TLS handshake)."""
    packages = {}
    text = fast.config_path.read_text().split("[[folder]]")[0]
    for k in range(4):
        folder = fast.root / f"many{k}"
        folder.mkdir()
        for i in range(200):
            (folder / f"f{i:03d}.txt").write_text(f"folder {k} file {i}")
        packages[f"team/many{k}"] = folder
        text += (f'[[folder]]\npath = "{folder}"\npackage = "team/many{k}"\n'
                 f'registry = "{fast.registry}"\n{FAST}')
    fast.config_path.write_text(text)
    d = DaemonProcess(fast.config_path)
    try:
        for package in packages:
            d.wait_for(lambda e, p=package: _completed(e) and e["package"] == p and e["files"] == 200,
                       timeout=120)
    finally:
        d.stop()
    for package in packages:
        assert len(fast.registry_api().revision(package, fast.registry_api().latest(package)).entries) == 200
    assert "Connection pool is full" not in "".join(d.raw)

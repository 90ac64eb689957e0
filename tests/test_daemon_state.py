"""The daemon's state against other processes and reloads (issue: state made correct).

`quiltsync run` as a process, real files and inotify, the real local S3. Each test
is one of the bugs a new user hit: a stale `status`, a hold that stayed, a reload
to another endpoint, a second daemon.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from conftest import FAST, Setup, write_config
from daemonproc import DaemonProcess


def _completed(e: dict) -> bool:
    return e.get("event") == "push.completed"


def _status(s: Setup) -> dict:
    proc = s.cli("status", "--json", check=True)
    return json.loads(proc.stdout)["folders"][0]


def test_status_from_another_process_shows_every_push_the_daemon_completed(fast: Setup, daemon) -> None:
    """After each push.completed, `quiltsync status` (another process) shows that top_hash."""
    for i in range(3):
        mark = daemon.event_count()
        (fast.folder / f"f{i}.txt").write_text(f"revision {i}")
        done = daemon.wait_for(_completed, timeout=30, after=mark)
        assert _status(fast)["last_top_hash"] == done["top_hash"]
    assert not list(fast.state_dir.glob("index.sqlite3.corrupt-*"))


def test_sighup_never_moves_a_healthy_index_aside(fast: Setup, daemon) -> None:
    """Reloads while status readers come and go keep the index and its rows."""
    for i in range(100):
        (fast.folder / f"f{i:03d}.txt").write_text(str(i))
    done = daemon.wait_for(lambda e: _completed(e) and e["files"] == 100, timeout=60)
    for _ in range(5):
        mark = daemon.event_count()
        daemon.signal(signal.SIGHUP)
        _status(fast)
        daemon.wait_for(lambda e: e.get("event") == "daemon.reloaded", after=mark)
    assert not list(fast.state_dir.glob("index.sqlite3.corrupt-*"))
    status = _status(fast)
    assert status["last_top_hash"] == done["top_hash"] and status["pending"] == 0
    assert not daemon.of("index.rebuilt")


def test_a_second_daemon_on_the_same_state_dir_exits_1_naming_the_first(fast: Setup, daemon) -> None:
    """`quiltsync run` twice: the second exits 1 at once and names the running one's pid."""
    proc = subprocess.run([sys.executable, "-m", "quiltsync", "--config", str(fast.config_path), "run"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"pid {daemon.proc.pid}" in proc.stderr and "Traceback" not in proc.stderr
    (fast.folder / "after.txt").write_text("the first daemon still pushes")
    daemon.wait_for(_completed, timeout=30)


def test_push_allow_deletes_releases_the_daemons_hold(fast: Setup, daemon) -> None:
    """A refused mass deletion holds the folder (status says so and how to release it);
    `push --allow-deletes` publishes it, and the daemon pushes the next change by itself."""
    for i in range(10):
        (fast.folder / f"f{i}.txt").write_text(str(i))
    daemon.wait_for(lambda e: _completed(e) and e["files"] == 10, timeout=30)
    for i in range(8):
        (fast.folder / f"f{i}.txt").unlink()
    daemon.wait_for(lambda e: e.get("event") == "push.refused", timeout=30)
    held = _status(fast)
    released = fast.cli("push", "--allow-deletes", check=True)
    cli_top = released.stdout.split()[1]
    assert fast.registry_api().latest(fast.package) == cli_top
    mark = daemon.event_count()
    (fast.folder / "next.txt").write_text("after the release")
    done = daemon.wait_for(_completed, timeout=15, after=mark)
    assert done["parent_top_hash"] == cli_top and done["added"] == 1 and done["files"] == 3
    # while held, status and check said so, with the command that releases it
    assert held.get("held") and "--allow-deletes" in held["health"]
    assert _status(fast)["held"] is None


def test_a_permanent_error_is_reported_once_not_every_few_seconds(setup: Setup) -> None:
    """No such bucket: one push.failed for repeated failures, not one per retry."""
    write_config(setup.config_path, setup.folder, setup.package, "s3://no-such-bucket-here",
                 setup.endpoint, setup.state_dir, FAST)
    d = DaemonProcess(setup.config_path)
    try:
        first = d.wait_for(lambda e: e.get("event") == "push.failed", timeout=60)
        (setup.folder / "f.txt").write_text("x")
        time.sleep(5)  # a backoff of 1, 2, 4 s would have retried and logged 3 more times by now
        assert len(d.of("push.failed")) == 1
        assert first["permanent"] is True and first["retry_in_s"] >= 30
    finally:
        d.kill()


class OtherS3:
    """A second, separate S3 server (its own process, so its own state) on 127.0.0.1."""

    def __init__(self, bucket: str) -> None:
        code = ("import sys\nfrom quiltsync.remote.s3local import LocalS3\n"
                "s = LocalS3().start()\n"
                f"s.create_bucket({bucket!r}, versioning=True)\n"
                "print(s.endpoint_url, flush=True)\nsys.stdin.read()\ns.stop()\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.endpoint_url = self.proc.stdout.readline().strip()
        assert self.endpoint_url.startswith("http://127.0.0.1:")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _entries_on(endpoint: str, registry: str, package: str, top_hash: str) -> dict[str, bytes]:
    """Each entry of a revision, fetched at its pinned version from ``endpoint``."""
    from urllib.parse import parse_qs, unquote, urlparse

    import boto3

    from quiltsync.remote import settings
    from quiltsync.remote.registry import Registry

    previous = settings.active()
    reg = Registry(registry, settings.S3Settings(endpoint, "us-east-1"))
    settings.activate(reg.settings)
    try:
        rev = reg.revision(package, top_hash)
    finally:
        settings.activate(previous)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    out = {}
    for lk, e in rev.entries.items():
        u = urlparse(e.physical_key)
        vid = parse_qs(u.query)["versionId"][0]
        out[lk] = client.get_object(Bucket=u.netloc, Key=unquote(u.path.lstrip("/")), VersionId=vid)["Body"].read()
    return out


def test_a_reload_to_another_endpoint_publishes_only_entries_that_exist_there(fast: Setup, daemon) -> None:
    """SIGHUP moves [s3] endpoint_url: the folder is new on that registry, and every entry of
    every revision published there is an object version the new endpoint really has."""
    for i in range(5):
        (fast.folder / f"f{i}.txt").write_text(f"file {i}")
    daemon.wait_for(lambda e: _completed(e) and e["files"] == 5, timeout=30)
    other = OtherS3(fast.registry[len("s3://"):])
    try:
        fast.config_path.write_text(fast.config_path.read_text().replace(fast.endpoint, other.endpoint_url))
        mark = daemon.event_count()
        daemon.signal(signal.SIGHUP)
        daemon.wait_for(lambda e: e.get("event") == "daemon.reloaded", after=mark)
        (fast.folder / "f0.txt").write_text("changed after the move")
        after = daemon.event_count()
        while True:  # every revision published on the new endpoint, until it has the edit
            done = daemon.wait_for(_completed, timeout=60, after=after)
            after = daemon.events.index(done) + 1
            files = _entries_on(other.endpoint_url, fast.registry, fast.package, done["top_hash"])
            assert set(files) == {f"f{i}.txt" for i in range(5)}
            if files["f0.txt"] == b"changed after the move":
                break
        assert all(files[f"f{i}.txt"] == f"file {i}".encode() for i in range(1, 5))
    finally:
        other.close()

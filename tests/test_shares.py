"""Folders on network and FUSE shares: changes made behind the mount are polled.

A real FUSE mount (bindfs SRC MNT): a file written to SRC changes MNT without
any inotify event on MNT, exactly like a file that another host writes on an
NFS or SMB share. The tests skip, saying why, where bindfs or /dev/fuse is
missing (.ci/run installs bindfs).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Setup, manifest_files, write_config
from daemonproc import DaemonProcess, NotifySocket


class FuseMount:
    """``bindfs -f SRC MNT`` in the foreground, so that a test can stop it (SIGSTOP)."""

    def __init__(self, src: Path, mnt: Path) -> None:
        self.src, self.mnt = src, mnt
        src.mkdir(parents=True, exist_ok=True)
        mnt.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(["bindfs", "-f", "--no-allow-other", str(src), str(mnt)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while not os.path.ismount(mnt):  # the mount appears when bindfs has started
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                self.close()
                pytest.skip(f"bindfs could not mount a FUSE filesystem here: {err.strip()[:200]}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.resume()
        subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _fuse_unavailable() -> str | None:
    if shutil.which("bindfs") is None:
        return "bindfs is not installed (Debian package bindfs; .ci/run installs it)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is missing or not usable by this user"
    return None


@pytest.fixture
def fuse(tmp_path: Path) -> Iterator[FuseMount]:
    why = _fuse_unavailable()
    if why:
        pytest.skip(why)
    m = FuseMount(tmp_path / "behind", tmp_path / "share")
    yield m
    m.close()


POLL = "settle_seconds = 0.5\nmax_delay_seconds = 30\npoll_seconds = 2\n"


def _on_share(setup: Setup, fuse: FuseMount, extra: str = "") -> None:
    write_config(setup.config_path, fuse.mnt, setup.package, setup.registry, setup.endpoint,
                 setup.state_dir, POLL + extra)


def _pushed(d: DaemonProcess, after: int, timeout: float = 30) -> dict:
    return d.wait_for(lambda e: e.get("event") == "push.completed" and e.get("added", 0) + e.get("modified", 0) > 0,
                      timeout=timeout, after=after)


# -- auto picks polling where inotify is blind ------------------------------------------------------
def test_auto_polls_a_fuse_root_and_a_fuse_mount_inside_a_local_folder_and_not_a_local_one(
        tmp_path: Path, fuse: FuseMount) -> None:
    from quiltsync.local.fstype import layout

    on_share = layout(fuse.mnt, "auto")
    assert on_share.root.polled and on_share.root.fstype.startswith("fuse"), on_share
    assert not layout(fuse.mnt, "events").root.polled

    local = tmp_path / "local"
    (local / "sub").mkdir(parents=True)
    assert layout(local, "auto").polled == ()
    inner = FuseMount(tmp_path / "behind2", local / "sub" / "share")
    try:
        mixed = layout(local, "auto")
        assert mixed.events and [p.rel for p in mixed.polled] == ["sub/share"], mixed
        assert mixed.polled[0].fstype.startswith("fuse")
        assert layout(local, "poll").polled[0].rel == ""
    finally:
        inner.close()


def test_check_and_status_say_which_parts_are_polled(setup: Setup, fuse: FuseMount) -> None:
    _on_share(setup, fuse)
    out = setup.cli("check").stdout
    row = next(line for line in out.splitlines() if line.split()[1:2] == ["watches"] and setup.package in line)
    assert row.startswith("ok") and "polled every 2.0 s: / (fuse" in row, out
    status = json.loads(setup.cli("status", "--json", check=True).stdout)["folders"][0]
    assert "polled every 2.0 s" in status["watch"], status

    write_config(setup.config_path, fuse.mnt, setup.package, setup.registry, setup.endpoint,
                 setup.state_dir, POLL + 'watch = "events"\n')
    row = next(line for line in setup.cli("check").stdout.splitlines() if setup.package in line and "watches" in line)
    assert row.startswith("warn") and "send no events" in row, row


# -- the daemon sees what inotify cannot --------------------------------------------------------------
def test_a_file_written_behind_the_mount_is_pushed_within_a_poll_and_settle(setup: Setup, fuse: FuseMount) -> None:
    _on_share(setup, fuse)
    d = DaemonProcess(setup.config_path)
    try:
        started = d.wait_for(lambda e: e.get("event") == "watch.started", timeout=30)
        assert started["parts"][0]["watch"] == "poll" and started["parts"][0]["fs"].startswith("fuse"), started
        d.wait_for(lambda e: e.get("event") == "rescan.completed", timeout=60)
        mark = d.event_count()
        (fuse.src / "run-001.csv").write_bytes(b"a,b\n1,2\n")  # behind the mount: no inotify event
        written = time.monotonic()
        e = _pushed(d, mark)
        latency = time.monotonic() - written
        # poll_seconds + settle + a margin for the push itself (on a loaded CI machine)
        assert latency < 2 * 2 + 8, latency  # seen at a poll, pushed once the next finds it still
        assert manifest_files(setup, e["top_hash"]) == {"run-001.csv": b"a,b\n1,2\n"}
        assert e["added"] == 1
    finally:
        d.stop()


def test_a_file_that_grows_across_polls_is_pushed_once_and_whole(setup: Setup, fuse: FuseMount) -> None:
    _on_share(setup, fuse)
    d = DaemonProcess(setup.config_path)
    try:
        d.wait_for(lambda e: e.get("event") == "rescan.completed", timeout=60)
        mark = d.event_count()
        chunk = os.urandom(64 * 1024)
        with open(fuse.src / "big.bin", "wb") as f:  # another host copying slowly: 6 s, 3 polls
            for _ in range(20):
                f.write(chunk)
                f.flush()
                time.sleep(0.3)
        e = _pushed(d, mark)
        # the first revision with the file has all of it: no part of it was pushed before
        assert manifest_files(setup, e["top_hash"])["big.bin"] == chunk * 20
        assert e["added"] == 1 and e["modified"] == 0
    finally:
        d.stop()


def test_a_hung_share_stops_neither_other_folders_nor_the_watchdog_pings(setup: Setup, fuse: FuseMount,
                                                                          tmp_path: Path) -> None:
    """A stopped FUSE process: every call into the mount blocks. Rescans every 3 s ask for pushes
    of the hung folder too; those wait (blocked), the local folder pushes, the pings keep coming."""
    local = tmp_path / "local"
    local.mkdir()
    write_config(setup.config_path, fuse.mnt, setup.package, setup.registry, setup.endpoint, setup.state_dir,
                 POLL + f'[[folder]]\npath = {json.dumps(str(local))}\npackage = "team/local"\n'
                 f'registry = "{setup.registry}"\nsettle_seconds = 0.5\n')
    text = setup.config_path.read_text().replace('log_format = "json"\n',
                                                 'log_format = "json"\nrescan_interval_seconds = 3\n', 1)
    setup.config_path.write_text(text)
    sock = NotifySocket()
    d = DaemonProcess(setup.config_path, env={"WATCHDOG_USEC": "2000000"}, notify=sock)
    try:
        d.wait_for(lambda e: e.get("event") == "rescan.completed" and e.get("package") == "team/local", timeout=60)
        d.wait_for(lambda e: e.get("event") == "rescan.completed" and e.get("package") == setup.package, timeout=60)
        fuse.stop()  # the FUSE process stops answering
        hung_at = time.monotonic()
        failed = d.wait_for(lambda e: e.get("event") == "watch.failed" and e.get("package") == setup.package,
                            timeout=40)
        assert "does not answer" in failed["detail"]
        for i in range(3):  # pushes of the other folder, across several rescans of the hung one
            mark = d.event_count()
            (local / f"notes-{i}.txt").write_text("still pushing\n")
            e = d.wait_for(lambda e: e.get("event") == "push.completed" and e.get("package") == "team/local",
                           timeout=30, after=mark)
            assert e["added"] == 1
        pings = [t for t in sock.arrivals("WATCHDOG=1") if t > hung_at]
        gaps = [b - a for a, b in zip([hung_at, *pings], pings, strict=False)]
        assert len(pings) >= 5 and max(gaps) < 2.0, gaps  # systemd would kill after WATCHDOG_USEC (2 s)
        health = json.loads(setup.cli("status", "--json").stdout)["folders"]
        share = next(f for f in health if f["package"] == setup.package)
        assert "does not answer" in share["health"], share
        check = setup.cli("check")
        assert check.returncode == 1 and f"fail  watches          {setup.package}: folder" in check.stdout, check.stdout
        mark = d.event_count()
        (fuse.src / "while-hung.csv").write_text("written while the mount did not answer\n")
        fuse.resume()
        d.wait_for(lambda e: e.get("event") == "watch.recovered" and e.get("package") == setup.package,
                   timeout=30, after=mark)
        e = _pushed(d, mark)
        assert e["package"] == setup.package and e["added"] == 1
    finally:
        fuse.resume()
        d.stop()
        sock.close()


def test_a_fuse_mount_inside_a_local_folder_is_polled_and_the_rest_gets_events(setup: Setup,
                                                                                tmp_path: Path) -> None:
    why = _fuse_unavailable()
    if why:
        pytest.skip(why)
    write_config(setup.config_path, setup.folder, setup.package, setup.registry, setup.endpoint,
                 setup.state_dir, POLL)
    inner = FuseMount(tmp_path / "behind", setup.folder / "instrument")
    d = DaemonProcess(setup.config_path)
    try:
        started = d.wait_for(lambda e: e.get("event") == "watch.started", timeout=30)
        assert [(p["path"], p["watch"]) for p in started["parts"]] == [("/", "events"), ("instrument/", "poll")]
        d.wait_for(lambda e: e.get("event") == "rescan.completed", timeout=60)
        mark = d.event_count()
        (setup.folder / "local.txt").write_text("local\n")
        assert _pushed(d, mark)["added"] == 1
        mark = d.event_count()
        (inner.src / "reading.csv").write_text("t,v\n0,1\n")
        e = _pushed(d, mark)
        assert manifest_files(setup, e["top_hash"])["instrument/reading.csv"] == b"t,v\n0,1\n"
    finally:
        d.stop()
        inner.close()



def test_a_reload_from_events_to_auto_starts_polling_the_share(setup: Setup, fuse: FuseMount) -> None:
    _on_share(setup, fuse, 'watch = "events"\n')
    d = DaemonProcess(setup.config_path)
    try:
        started = d.wait_for(lambda e: e.get("event") == "watch.started", timeout=30)
        assert [p["watch"] for p in started["parts"]] == ["events"]
        d.wait_for(lambda e: e.get("event") == "rescan.completed", timeout=60)
        _on_share(setup, fuse)
        mark = d.event_count()
        d.signal(signal.SIGHUP)
        again = d.wait_for(lambda e: e.get("event") == "watch.started", timeout=30, after=mark)
        assert [p["watch"] for p in again["parts"]] == ["poll"]
        d.wait_for(lambda e: e.get("event") == "rescan.completed", timeout=60, after=mark)
        mark = d.event_count()
        (fuse.src / "after-reload.csv").write_text("seen by the new poll\n")
        e = _pushed(d, mark)
        assert manifest_files(setup, e["top_hash"]) == {"after-reload.csv": b"seen by the new poll\n"}
    finally:
        d.stop()


def test_a_share_unmounted_inside_a_folder_is_not_pushed_as_deleted(setup: Setup, tmp_path: Path) -> None:
    """umount of the instrument's share leaves an empty directory: the folder's pushes wait
    (watch.failed) until the share is back, and no revision ever lacks the share's files."""
    why = _fuse_unavailable()
    if why:
        pytest.skip(why)
    write_config(setup.config_path, setup.folder, setup.package, setup.registry, setup.endpoint,
                 setup.state_dir, POLL)
    behind = tmp_path / "behind"
    behind.mkdir()
    (behind / "reading.csv").write_text("t,v\n0,1\n")
    (setup.folder / "local.txt").write_text("local\n")
    inner = FuseMount(behind, setup.folder / "instrument")
    d = DaemonProcess(setup.config_path)
    try:
        d.wait_for(lambda e: e.get("event") == "push.completed" and e.get("files") == 2, timeout=60)
        mark = d.event_count()
        inner.close()  # unmounted: instrument/ is an empty directory now
        failed = d.wait_for(lambda e: e.get("event") == "watch.failed", timeout=30, after=mark)
        assert "not on its share anymore" in failed["detail"], failed
        (setup.folder / "later.txt").write_text("written while the share is away\n")
        status = json.loads(setup.cli("status", "--json", check=True).stdout)["folders"][0]
        assert "not on its share anymore" in status["health"], status
        inner = FuseMount(behind, setup.folder / "instrument")  # back
        d.wait_for(lambda e: e.get("event") == "watch.recovered", timeout=30, after=mark)
        e = d.wait_for(lambda e: e.get("event") == "push.completed" and e.get("files") == 3, timeout=30, after=mark)
        assert e["deleted"] == 0
        pushed = [x for x in d.of("push.completed") if x["files"] >= 2]
        for x in pushed:  # once in, the share's file is in every revision
            assert "instrument/reading.csv" in manifest_files(setup, x["top_hash"]), x
    finally:
        d.stop()
        inner.close()

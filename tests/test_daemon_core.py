"""The daemon shell in-process: a fake clock, real files and SQLite, an in-memory registry.

The scheduler decides, the shell carries out: these tests drive ``Daemon.step``
with a clock they move by hand, so reloads, holds and in-flight pushes are
tested without real waiting. The push path itself is tested against the real
local S3 elsewhere (test_push.py, test_daemon*.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from memregistry import MemoryRegistry
from quiltsync.config import load_config
from quiltsync.engine.pusher import FolderPusher
from quiltsync.errors import PermanentError
from quiltsync.local.index import Index
from quiltsync.remote import settings
from quiltsync.service.daemon import HOLD_POLL_SECONDS, Daemon
from quiltsync.service.folders import stuck_rows

PKG = "team/data"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class GatedRegistry(MemoryRegistry):
    """Pushes wait at a gate (so a test can hold one in flight) and count concurrency."""

    def __init__(self, endpoint: str = "memory://one") -> None:
        super().__init__("s3://memory", endpoint)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.active = 0
        self.max_active = 0
        self.fail: Exception | None = None
        self._count = threading.Lock()

    def push(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        with self._count:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.entered.set()
        try:
            self.gate.wait(30)
            if self.fail is not None:
                raise self.fail
            return super().push(*args, **kwargs)
        finally:
            with self._count:
                self.active -= 1


@dataclass
class Harness:
    daemon: Daemon
    clock: Clock
    folder: Path
    config_path: Path
    registries: dict[str | None, GatedRegistry]

    @property
    def reg(self) -> GatedRegistry:
        return self.registries[settings.active().endpoint_url]

    def step(self, rounds: int = 1) -> None:
        for _ in range(rounds):
            self.daemon.step(max_wait=0.02)

    def idle(self, timeout: float = 20) -> None:
        """Step until no push is in flight and nothing is due now."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.step()
            due = self.daemon.schedule.next_deadline()
            if not self.daemon.pushes.running and (due is None or due > self.clock.now):
                return
        raise AssertionError("the daemon did not go idle")

    def until(self, pred: Callable[[], bool], timeout: float = 20) -> None:
        import time

        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, "condition not reached"
            self.step()

    def change(self, name: str, text: str | None) -> None:
        path = self.folder / name
        if text is None:
            path.unlink()
        else:
            path.write_text(text)
        self.daemon.post_change(PKG, name)
        self.step()  # handled at the current (fake) time

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        self.step()


def _config(state: Path, folder: Path, endpoint: str, settle: float = 0.5) -> str:
    return (f'[daemon]\nstate_dir = "{state}"\nlog_format = "json"\n'
            f'[s3]\nendpoint_url = "{endpoint}"\n'
            f'[[folder]]\npath = "{folder}"\npackage = "{PKG}"\nregistry = "s3://memory"\n'
            f"settle_seconds = {settle}\nmax_delay_seconds = 5\n")


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    folder = tmp_path / "data"
    folder.mkdir()
    config_path = tmp_path / "config.toml"
    config_path.write_text(_config(tmp_path / "state", folder, "http://127.0.0.1:1"))
    registries = {"http://127.0.0.1:1": GatedRegistry("http://127.0.0.1:1"),
                  "http://127.0.0.1:2": GatedRegistry("http://127.0.0.1:2")}

    def factory(f, index: Index) -> FolderPusher:  # type: ignore[no-untyped-def]
        return FolderPusher(f, index, registry=registries[settings.active().endpoint_url])  # type: ignore[arg-type]

    clock = Clock()
    d = Daemon(config_path, load_config(config_path), clock=clock, pusher_factory=factory,
               watch=False, health_checks=False)
    d.start()
    harness = Harness(d, clock, folder, config_path, registries)  # type: ignore[arg-type]
    harness.idle()  # the start-up reconcile
    yield harness
    for r in registries.values():
        r.gate.set()
    d.shutdown()
    settings.reset()


def test_a_change_is_pushed_after_the_settle_period_and_not_before(h: Harness) -> None:
    """The push starts once the folder was quiet for settle_seconds (fake clock), with the file."""
    h.change("a.txt", "one")
    h.advance(0.2)
    assert not h.reg.pushes
    h.advance(0.4)
    h.idle()
    assert len(h.reg.pushes) == 1 and set(h.reg.pushes[0].entries) == {"a.txt"}


def test_a_hold_released_by_another_process_is_noticed_within_one_round(h: Harness) -> None:
    """A refused mass deletion holds the folder; once another process pushed it with
    --allow-deletes, the daemon releases its hold and pushes the next change on its base."""
    for i in range(10):
        h.change(f"f{i}.txt", str(i))
    h.advance(1)
    h.idle()
    for i in range(8):
        h.change(f"f{i}.txt", None)
    h.advance(1)
    h.idle()
    assert h.daemon.schedule.held(PKG)
    # another process (its own Index and pusher) publishes the deletions
    other_index = Index(h.daemon.config.daemon.state_dir / "index.sqlite3")
    cli = FolderPusher(h.daemon.config.folder[0], other_index, registry=h.reg)  # type: ignore[arg-type]
    released = cli.push(allow_deletes=True)
    other_index.close()
    assert released.pushed and released.deleted == 8
    h.advance(HOLD_POLL_SECONDS)
    h.idle()
    assert not h.daemon.schedule.held(PKG)
    h.change("next.txt", "after")
    h.advance(0.6)
    h.idle()
    last = h.reg.pushes[-1]
    assert set(last.entries) == {"f8.txt", "f9.txt", "next.txt"}
    assert h.reg.pushes[-2].top_hash == released.top_hash


def test_a_reload_never_runs_two_pushes_of_one_package_at_once(h: Harness) -> None:
    """A SIGHUP that changes the folder while its push is in flight: the new generation's
    push waits for the old one, and the change made meanwhile is pushed after it."""
    h.reg.gate.clear()
    h.change("a.txt", "one")
    h.advance(0.6)
    assert h.reg.entered.wait(10)
    h.config_path.write_text(h.config_path.read_text().replace("settle_seconds = 0.5", "settle_seconds = 0.4"))
    h.daemon._reload()
    h.change("b.txt", "two")
    h.advance(1)
    h.step(5)
    assert h.reg.max_active == 1
    h.reg.gate.set()
    h.until(lambda: any("b.txt" in p.entries for p in h.reg.pushes))
    assert h.reg.max_active == 1


def test_a_reload_to_another_endpoint_waits_for_pushes_in_flight_and_starts_afresh(h: Harness) -> None:
    """Moving [s3] endpoint_url: pushes in flight finish on the old endpoint first; the folder is
    then new on the other registry, and its revisions hold only objects uploaded there."""
    old = h.reg
    h.change("a.txt", "one")
    h.advance(1)
    h.idle()
    old.gate.clear()
    h.change("b.txt", "two")
    h.advance(1)
    assert old.entered.wait(10)
    h.config_path.write_text(h.config_path.read_text().replace("127.0.0.1:1", "127.0.0.1:2"))
    with capture_logs() as logs:
        h.daemon._reload()
        h.step(3)
    assert any(e["event"] == "daemon.reload_waiting" for e in logs)
    assert settings.active().endpoint_url == "http://127.0.0.1:1"
    old.gate.set()
    h.until(lambda: settings.active().endpoint_url == "http://127.0.0.1:2")
    new = h.registries["http://127.0.0.1:2"]
    h.change("c.txt", "three")
    h.advance(1)
    h.idle()
    assert new.pushes
    for rev in new.pushes:
        for lk, e in rev.entries.items():
            key, vid = e.physical_key.split("s3://memory/", 1)[1].split("?versionId=")
            assert (key, vid) in new.objects, f"{lk} points at an object the new endpoint lacks"
    assert set(new.pushes[-1].entries) == {"a.txt", "b.txt", "c.txt"}


def test_a_reload_applies_new_upload_limits_to_every_folder_without_starting_afresh(h: Harness) -> None:
    """[s3] upload_concurrency and max_upload_bytes_per_second are the process's (all
    folders share them): a SIGHUP applies them at once; the endpoint is the same, so
    the folder keeps its base."""
    from quiltsync.remote import transfer

    h.change("a.txt", "one")
    h.advance(1)
    h.idle()
    assert (transfer.transfers().concurrency, transfer.transfers().bandwidth.rate) == (10, 0)
    h.config_path.write_text(h.config_path.read_text().replace(
        "[s3]\n", "[s3]\nupload_concurrency = 3\nmax_upload_bytes_per_second = 5000000\n"))
    with capture_logs() as logs:
        h.daemon._reload()
    reloaded = [e for e in logs if e["event"] == "daemon.reloaded"]
    assert reloaded and reloaded[0]["s3_changed"] is False and reloaded[0]["changed"] == []
    assert (transfer.transfers().concurrency, transfer.transfers().bandwidth.rate) == (3, 5_000_000)
    h.change("b.txt", "two")
    h.advance(1)
    h.idle()
    assert h.reg.pushes[-1].top_hash != h.reg.pushes[0].top_hash and set(h.reg.pushes[-1].entries) == {"a.txt", "b.txt"}


def test_a_permanent_error_is_logged_once_and_retried_at_the_cap(h: Harness) -> None:
    """No such bucket: push.failed once, permanent, retry_in_s at the cap; more changes log nothing."""
    h.reg.fail = PermanentError("pushing team/data to s3://memory: NoSuchBucket: the bucket does not exist")
    with capture_logs() as logs:
        for i in range(4):
            h.change(f"f{i}.txt", "x")
            h.advance(1)
            h.idle()
    failed = [e for e in logs if e["event"] == "push.failed"]
    assert len(failed) == 1 and failed[0]["permanent"] is True and failed[0]["retry_in_s"] == 30


def test_a_folder_with_large_manifests_is_paced_and_loses_no_change(h: Harness) -> None:
    """Each revision's manifest spends the folder's daily budget: once an hour's worth
    is spent, the next revision waits (logged with when), changes gather meanwhile,
    and all of them go in that revision."""
    h.config_path.write_text(h.config_path.read_text() + "max_manifest_bytes_per_day = 86400000\n")  # 1 kB/s
    h.daemon._reload()
    h.idle()
    h.reg.manifest_bytes_override = 10_000_000  # 10 MB a revision: ten thousand seconds of budget
    with capture_logs() as logs:
        h.change("a.txt", "one")
        h.advance(1)
        h.idle()
    assert len(h.reg.pushes) == 1
    paced = [e for e in logs if e["event"] == "push.paced"]
    assert len(paced) == 1 and 6000 < paced[0]["next_in_s"] <= 10000, paced
    assert "10.0 MB manifest" in paced[0]["detail"] and "max_manifest_bytes_per_day = 86400000" in paced[0]["detail"]
    wait = paced[0]["next_in_s"]
    for i in range(5):
        h.change(f"b{i}.txt", str(i))
        h.advance(60)
    h.idle()
    assert len(h.reg.pushes) == 1  # paced: 5 minutes of changes wait
    assert stuck_rows(h.daemon.schedule, h.daemon.folders, h.clock.now)[0].status == "ok"  # pacing is no stall
    h.advance(wait)
    h.idle()
    assert len(h.reg.pushes) == 2
    assert set(h.reg.pushes[1].entries) == {"a.txt", *(f"b{i}.txt" for i in range(5))}


def test_a_renamed_file_reuses_its_version_and_the_workflow_still_sees_its_new_name(tmp_path: Path) -> None:
    """A rename uploads nothing (the entry points at the version already there), and
    the rows a workflow's entries schema checks name the new key, not the old one."""
    seen: list[list[tuple[str, int, dict]]] = []

    class Checked(GatedRegistry):
        def workflow_stamp(self, name: str, **kw: object) -> dict | None:
            seen.append(list(kw["entries"]()))  # type: ignore[operator]
            return None

    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(4):
        (folder / f"f{i}.bin").write_bytes(bytes([i]) * 100)
    config_path = tmp_path / "config.toml"
    config_path.write_text(_config(tmp_path / "state", folder, "http://127.0.0.1:1"))
    cfg = load_config(config_path)
    reg = Checked("http://127.0.0.1:1")
    index = Index(cfg.daemon.state_dir / "index.sqlite3")
    pusher = FolderPusher(cfg.folder[0], index, registry=reg)  # type: ignore[arg-type]
    pusher.push()
    (folder / "f2.bin").rename(folder / "renamed.exe")
    uploads_before = len(reg.objects)
    result = pusher.push()
    assert result.reused == 1 and result.added == 1 and result.deleted == 1 and result.bytes_uploaded == 0
    assert len(reg.objects) == uploads_before
    assert reg.pushes[-1].entries["renamed.exe"].physical_key == reg.pushes[0].entries["f2.bin"].physical_key
    assert {lk for lk, _size, _meta in seen[-1]} == {"f0.bin", "f1.bin", "f3.bin", "renamed.exe"}
    index.close()
    settings.reset()

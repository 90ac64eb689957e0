"""Deletion safety: pushes that would drop data by accident are held, then recover."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import Setup, json_events, manifest_files
from daemonproc import DaemonProcess


def _fill(folder, n: int) -> None:
    for i in range(n):
        (folder / f"f{i:02d}.txt").write_text(f"file {i}")


def test_a_mass_deletion_is_refused_until_allow_deletes(setup: Setup) -> None:
    """Deleting most files is held with a reason; `push --allow-deletes` then pushes it."""
    _fill(setup.folder, 10)
    first = setup.cli("push", check=True).stdout.split()[1]
    for i in range(7):
        (setup.folder / f"f{i:02d}.txt").unlink()
    proc = setup.cli("push")
    assert proc.returncode == 1
    refused = [e for e in json_events(proc.stderr) if e.get("event") == "push.refused"]
    assert refused and "7 of 10" in refused[0]["reason"] and "--allow-deletes" in refused[0]["reason"]
    assert setup.registry_api().latest(setup.package) == first
    allowed = setup.cli("push", "--allow-deletes", check=True)
    top = allowed.stdout.split()[1]
    assert set(manifest_files(setup, top)) == {"f07.txt", "f08.txt", "f09.txt"}


def test_a_few_deletions_pass_under_the_threshold(setup: Setup) -> None:
    """Deleting less than max_delete_fraction of the files is an ordinary push."""
    _fill(setup.folder, 10)
    setup.cli("push", check=True)
    for i in range(4):
        (setup.folder / f"f{i:02d}.txt").unlink()
    top = setup.cli("push", check=True).stdout.split()[1]
    assert len(manifest_files(setup, top)) == 6


def test_an_emptied_folder_is_held_and_recovers_when_files_return(setup: Setup) -> None:
    """An empty folder is never pushed; once the files are back, pushing resumes normally."""
    _fill(setup.folder, 3)
    first = setup.cli("push", check=True).stdout.split()[1]
    moved = setup.root / "elsewhere"
    os.rename(setup.folder, moved)
    setup.folder.mkdir()
    proc = setup.cli("push")
    assert proc.returncode == 1 and "empty" in proc.stderr
    setup.folder.rmdir()
    os.rename(moved, setup.folder)
    (setup.folder / "new.txt").write_text("after recovery")
    top = setup.cli("push", check=True).stdout.split()[1]
    files = manifest_files(setup, top)
    assert set(files) == {"f00.txt", "f01.txt", "f02.txt", "new.txt"}
    assert setup.registry_api().revision(setup.package, top).meta and first != top


def _can_mount() -> bool:
    return os.geteuid() == 0 and subprocess.run(["which", "mount"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount(), reason="needs root to mount a tmpfs over the folder")
def test_a_folder_on_another_device_is_not_pushed_as_deletions(setup: Setup) -> None:
    """A different file system mounted over the folder (e.g. the disk was unmounted) is held."""
    _fill(setup.folder, 6)
    first = setup.cli("push", check=True).stdout.split()[1]
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(setup.folder)]).returncode != 0:
        pytest.skip("mount not permitted here")
    try:
        (setup.folder / "stray.txt").write_text("on the other device")
        proc = setup.cli("push")
        assert proc.returncode == 1 and "another device" in proc.stderr
        assert setup.registry_api().latest(setup.package) == first
    finally:
        subprocess.run(["umount", str(setup.folder)], check=True)
    (setup.folder / "f00.txt").write_text("edited on the real disk")
    top = setup.cli("push", check=True).stdout.split()[1]
    assert len(manifest_files(setup, top)) == 6


def test_the_daemon_holds_a_mass_deletion_and_converges_when_files_return(setup: Setup) -> None:
    """The daemon refuses, keeps running and retrying, and pushes once the folder is whole again."""
    from conftest import write_config

    write_config(setup.config_path, setup.folder, setup.package, setup.registry, setup.endpoint,
                 setup.state_dir, "settle_seconds = 0.3\n")
    _fill(setup.folder, 10)
    first = setup.pusher().push()
    d = DaemonProcess(setup.config_path)
    try:
        d.wait_for(lambda e: e.get("event") == "rescan.completed")
        saved = {p.name: p.read_bytes() for p in setup.folder.iterdir()}
        for p in list(setup.folder.iterdir()):
            if p.name != "f09.txt":
                p.unlink()
        d.wait_for(lambda e: e.get("event") == "push.refused", timeout=30)
        assert setup.registry_api().latest(setup.package) == first.top_hash
        for name, data in saved.items():
            (setup.folder / name).write_bytes(data)
        (setup.folder / "extra.txt").write_text("and one more")
        done = d.wait_for(lambda e: e.get("event") == "push.completed", timeout=60)
        assert done["deleted"] == 0 and done["files"] == 11
        assert d.proc.poll() is None
    finally:
        d.kill()


def test_state_files_are_private(setup: Setup) -> None:
    """The index and its directory are readable by the service user only."""
    import stat

    (setup.folder / "a.txt").write_text("a")
    setup.cli("push", check=True)
    index = setup.state_dir / "index.sqlite3"
    assert stat.S_IMODE(index.stat().st_mode) == 0o600
    assert stat.S_IMODE(setup.state_dir.stat().st_mode) & 0o077 == 0


def test_moved_keys_are_deleted_keys_whose_size_and_hash_an_added_file_has() -> None:
    """The rename rule, pure: a deleted key counts as moved only when an added file
    has its size and its hash (of the entry's own hash type); an added file of
    another size is never read."""
    from quiltsync.core.safety import moved_keys
    from quiltsync.core.types import Entry, HashValue

    def h(v: str, t: str = "sha2-256-chunked") -> HashValue:
        return HashValue(t, v)

    entries = {"old/a": Entry(h("A"), 10, "s3://b/old/a?versionId=1", None),
               "old/b": Entry(h("B", "SHA256"), 20, "s3://b/old/b?versionId=1", None),
               "old/c": Entry(h("C"), 30, "s3://b/old/c?versionId=1", None)}
    local = {"new/a": (10, {"sha2-256-chunked": h("A"), "SHA256": h("a")}),
             "new/b": (20, {"sha2-256-chunked": h("b"), "SHA256": h("B", "SHA256")}),
             "new/c": (30, {"sha2-256-chunked": h("other"), "SHA256": h("other")}),
             "new/d": (99, {})}
    read: list[str] = []

    def hash_of(lk: str, hash_type: str) -> HashValue | None:
        read.append(lk)
        return local[lk][1][hash_type]

    moved = moved_keys(list(entries), list(local), entries, lambda lk: local[lk][0], hash_of)
    assert moved == {"old/a", "old/b"}  # old/c: same size, other bytes
    assert "new/d" not in read

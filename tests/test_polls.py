"""The poll threads and the watch around polled mounts, on local directories (no FUSE needed)."""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

from quiltsync.config import FolderConfig
from quiltsync.core.types import FileStat
from quiltsync.core.watchmode import Layout, Part
from quiltsync.service import polls as polls_mod
from quiltsync.service.polls import PollDone, Polls, _Poll


def _folder(root: Path, **kw: object) -> FolderConfig:
    return FolderConfig(path=root, package="t/p", registry="s3://bucket-p", poll_seconds=2, **kw)


def _local_layout(root: Path, *polled: str) -> Layout:
    parts = [Part("", "ext4", not polled)] + [Part(rel, "ext4", True) for rel in polled]
    return Layout("poll" if not polled else "auto", tuple(parts), str(root))


def test_a_poll_compares_its_first_scan_with_the_baseline_of_its_own_parts_only(tmp_path: Path) -> None:
    (tmp_path / "local").mkdir()
    (tmp_path / "share").mkdir()
    (tmp_path / "share" / "a.csv").write_text("1")
    (tmp_path / "local" / "b.csv").write_text("2")
    a = FileStat.of(os.stat(tmp_path / "share" / "a.csv"))
    baseline = {"share/a.csv": a, "local/b.csv": FileStat(9, 9, 9), "share/gone.csv": a}
    poll = _Poll(_folder(tmp_path), _local_layout(tmp_path, "share"), baseline)
    first = poll.once(time.monotonic)
    # local/b.csv is not polled: its stale baseline must not make it a change; the deletion waits
    assert first.error is None and not first.full and first.waiting == {"share/gone.csv"}
    second = poll.once(time.monotonic)
    assert second.settled == {"share/gone.csv"}


def test_a_poll_that_raises_anything_reports_it_instead_of_dying(tmp_path: Path) -> None:
    def broken(_path: str):
        raise ValueError("boom")

    poll = _Poll(_folder(tmp_path), _local_layout(tmp_path), {}, scandir=broken)
    done = poll.once(time.monotonic)
    assert done.error is not None and "ValueError: boom" in done.error and poll.busy_since is None


def test_a_share_that_is_no_longer_mounted_fails_the_poll_instead_of_deleting_its_files(tmp_path: Path) -> None:
    (tmp_path / "share").mkdir()
    (tmp_path / "share" / "a.csv").write_text("1")
    planned = Layout("auto", (Part("", "ext4", False), Part("share", "nfs4", True)), str(tmp_path))
    poll = _Poll(_folder(tmp_path), planned, {"share/a.csv": FileStat.of(os.stat(tmp_path / "share/a.csv"))})
    done = poll.once(time.monotonic)  # tmp_path/share is a plain directory: not the nfs4 share planned
    assert done.error is not None and "not on its share anymore" in done.error
    assert not done.settled and not done.waiting


def test_a_poll_stuck_in_a_filesystem_call_is_reported_stalled_and_others_are_not(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    monkeypatch.setattr(polls_mod, "HANG_SECONDS", 0.3)
    release = threading.Event()
    entered = threading.Event()

    def hanging(path: str):
        entered.set()
        release.wait(30)
        return os.scandir(path)

    posted: queue.SimpleQueue[PollDone] = queue.SimpleQueue()
    polls = Polls(posted.put)
    hung = _Poll(_folder(tmp_path), _local_layout(tmp_path), {}, scandir=hanging)
    with polls._lock:
        polls._polls["t/p"] = hung
    threading.Thread(target=polls._run, args=(hung,), daemon=True).start()
    other = tmp_path / "other"
    other.mkdir()
    polls.watch(FolderConfig(path=other, package="t/q", registry="s3://bucket-p", poll_seconds=2),
                _local_layout(other), {})
    assert posted.get(timeout=10).package == "t/q"  # the other folder's poll goes on
    assert entered.wait(10)
    deadline = time.monotonic() + 10
    while "t/p" not in polls.stalled():  # wait for the hang detector to see it (0.3 s here)
        assert time.monotonic() < deadline, "the stuck poll was never reported"
        time.sleep(0.05)
    assert "t/q" not in polls.stalled()
    release.set()
    while (done := posted.get(timeout=10)).package != "t/p":
        pass
    assert done.error is None and "t/p" not in polls.stalled()
    polls.shutdown()


def test_the_watch_around_a_polled_mount_never_enters_it_and_follows_new_directories(tmp_path: Path) -> None:
    from quiltsync.local.scanner import make_ignore_spec
    from quiltsync.local.watcher import Watcher

    (tmp_path / "lab" / "share").mkdir(parents=True)
    (tmp_path / "lab" / "notes").mkdir()
    changes: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    w = Watcher(lambda _pkg, rel: changes.put(rel), lambda _p: None)
    w.start()
    try:
        w.watch("t/p", tmp_path, make_ignore_spec([]), ["lab/share"])
        (tmp_path / "lab" / "share" / "behind.csv").write_text("polled, not watched")
        (tmp_path / "lab" / "notes" / "n.txt").write_text("watched")
        seen = []
        while "lab/notes/n.txt" not in seen:
            seen.append(changes.get(timeout=10))
        assert not any(p and p.startswith("lab/share/") for p in seen), seen
        (tmp_path / "lab" / "new").mkdir()  # appears later beside the mount: watched with its subtree
        while changes.get(timeout=10) != "lab/new":
            pass
        deadline = time.monotonic() + 10
        while True:  # its recursive watch is added by the observer thread right after the event
            (tmp_path / "lab" / "new" / "deep.txt").write_text(str(time.monotonic()))
            try:
                if changes.get(timeout=0.5) == "lab/new/deep.txt":
                    break
            except queue.Empty:
                pass
            assert time.monotonic() < deadline, "no event from a directory created beside the mount"
        (tmp_path / "top.txt").write_text("root files are watched too")
        while changes.get(timeout=10) != "top.txt":
            pass
    finally:
        w.stop()


def test_a_push_leaves_files_a_poll_holds_back_as_last_pushed(setup) -> None:
    """A full rescan while another host still writes files on the share: those files (changed,
    new or deleted) stay as the last revision has them; the poll hands them over later."""
    from conftest import manifest_files

    (setup.folder / "a.txt").write_text("a1")
    (setup.folder / "x.bin").write_text("x1")
    (setup.folder / "gone.txt").write_text("g")
    pusher = setup.pusher()
    pusher.push()
    (setup.folder / "a.txt").write_text("a2")
    (setup.folder / "x.bin").write_text("x2, half")
    (setup.folder / "new.bin").write_text("half")
    (setup.folder / "gone.txt").unlink()
    held = pusher.push(hold={"x.bin", "new.bin", "gone.txt"})
    assert manifest_files(setup, held.top_hash) == {"a.txt": b"a2", "x.bin": b"x1", "gone.txt": b"g"}
    later = pusher.push(paths=["x.bin", "new.bin", "gone.txt"])
    assert manifest_files(setup, later.top_hash) == {"a.txt": b"a2", "x.bin": b"x2, half", "new.bin": b"half"}


def test_a_held_file_is_not_deleted_when_the_base_comes_from_the_registry(setup) -> None:
    """A lost index (or a new host): the base has no local stats, and a file held back by the
    poll (deleted locally while another host rewrites it) must stay in the revision."""
    from conftest import manifest_files

    (setup.folder / "a.txt").write_text("a1")
    (setup.folder / "x.bin").write_text("x1")
    setup.pusher().push()
    for f in setup.state_dir.glob("index.sqlite3*"):
        f.unlink()
    (setup.folder / "x.bin").unlink()
    (setup.folder / "a.txt").write_text("a2")
    result = setup.pusher().push(hold={"x.bin"})
    assert manifest_files(setup, result.top_hash) == {"a.txt": b"a2", "x.bin": b"x1"}


def test_two_folders_sharing_a_watch_keep_it_when_one_is_unwatched(tmp_path: Path) -> None:
    """Folder A (with a polled mount) watches lab/notes recursively, as folder B's own root."""
    from quiltsync.local.scanner import make_ignore_spec
    from quiltsync.local.watcher import Watcher

    (tmp_path / "lab" / "share").mkdir(parents=True)
    (tmp_path / "lab" / "notes").mkdir()
    changes: queue.SimpleQueue[tuple[str, str | None]] = queue.SimpleQueue()
    w = Watcher(lambda pkg, rel: changes.put((pkg, rel)), lambda _p: None)
    w.start()
    try:
        w.watch("t/a", tmp_path, make_ignore_spec([]), ["lab/share"])
        w.watch("t/b", tmp_path / "lab" / "notes", make_ignore_spec([]))
        w.unwatch("t/a")
        (tmp_path / "lab" / "notes" / "n.txt").write_text("still watched for b")
        while changes.get(timeout=10) != ("t/b", "n.txt"):
            pass
    finally:
        w.stop()

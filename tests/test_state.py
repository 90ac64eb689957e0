"""Local state with one owner: the index across threads and processes, the state-dir lock.

These run in-process against real SQLite files and real child processes; no S3.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from quiltsync.core.types import Entry, FileRecord, FileStat, HashValue, LastPush
from quiltsync.local.index import Index, IndexUnavailable
from quiltsync.local.locks import AlreadyRunning, DaemonLock, package_lock, running_daemon


def _commit(index: Index, top: str, n: int = 3) -> None:
    files = {f"f{i}": FileRecord(FileStat(1, 1, i), 1, Entry(HashValue("SHA256", f"h{i}"), 1, f"s3://b/f{i}?versionId=v"))
             for i in range(n)}
    index.commit(LastPush("team/data", "s3://b", "/data", top, {"version": "v0"}, 1.0), files, replace_all=True)


def _read_in_child(path: Path) -> str:
    code = textwrap.dedent(f"""
        import sqlite3
        db = sqlite3.connect({str(path)!r})
        print(db.execute("SELECT top_hash FROM revision").fetchone()[0])
        db.close()
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_another_process_sees_every_commit_while_threads_open_and_close_connections(tmp_path: Path) -> None:
    """A reader process sees each commit, although other connections of the writer's process
    came and went in between (closing any descriptor of the file used to drop the writer's
    locks, and the reader then deleted the WAL the writer still wrote to)."""
    path = tmp_path / "index.sqlite3"
    index = Index(path)
    for n in range(1, 4):
        _commit(index, f"top{n}")
        # another handle of the same process opens and closes the file, from another thread
        other = threading.Thread(target=lambda: Index(path).close())
        other.start()
        other.join()
        assert _read_in_child(path) == f"top{n}"
    _commit(index, "top4")
    assert _read_in_child(path) == "top4"
    index.close()


def test_every_thread_uses_its_own_connection_of_the_one_index(tmp_path: Path) -> None:
    """Pushers on pool threads and the health recorder share one Index without sharing a connection."""
    index = Index(tmp_path / "index.sqlite3")
    seen: list[int] = []

    def work() -> None:
        seen.append(id(index.db))
        index.write_health([("registry", "s3://b", "ok", "fine")], 1.0)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 4 and index.health()[0][:3] == ("registry", "s3://b", "ok")
    index.close()


def test_a_busy_index_is_never_moved_aside(tmp_path: Path) -> None:
    """An index another process holds locked is reported, not renamed to .corrupt-* (rows kept)."""
    path = tmp_path / "index.sqlite3"
    index = Index(path)
    _commit(index, "kept")
    index.close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(IndexUnavailable, match="another process"):
            Index(path, timeout=0.2).last_push("team/data")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not list(tmp_path.glob("*.corrupt-*"))
    again = Index(path)
    assert again.last_push("team/data").top_hash == "kept"  # type: ignore[union-attr]
    again.close()


def test_a_damaged_index_is_moved_aside_and_the_reason_logged(tmp_path: Path) -> None:
    """A file SQLite calls 'not a database' is kept aside for inspection, and index.rebuilt says why."""
    path = tmp_path / "index.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with capture_logs() as logs:
        index = Index(path)
    assert index.last_push("team/data") is None
    aside = list(tmp_path.glob("index.sqlite3.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    rebuilt = [e for e in logs if e["event"] == "index.rebuilt"]
    assert rebuilt and "not a database" in rebuilt[0]["reason"]
    index.close()


def test_the_index_file_is_private(tmp_path: Path) -> None:
    """index.sqlite3 and its WAL are readable by the owner only (they name every file pushed)."""
    index = Index(tmp_path / "index.sqlite3")
    _commit(index, "x")
    for p in tmp_path.glob("index.sqlite3*"):
        assert p.stat().st_mode & 0o077 == 0, p
    index.close()


def test_a_second_daemon_lock_fails_at_once_naming_the_first(tmp_path: Path) -> None:
    """The state dir lock is exclusive; the loser learns the winner's pid; release frees it."""
    first = DaemonLock(tmp_path)
    first.acquire()
    assert running_daemon(tmp_path) == os.getpid()
    code = textwrap.dedent(f"""
        from pathlib import Path
        from quiltsync.local.locks import DaemonLock, AlreadyRunning
        try:
            DaemonLock(Path({str(tmp_path)!r})).acquire()
        except AlreadyRunning as e:
            print(e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30).stdout
    assert f"pid {os.getpid()}" in out
    with pytest.raises(AlreadyRunning):
        DaemonLock(tmp_path).acquire()
    first.release()
    assert running_daemon(tmp_path) is None


def test_one_push_per_package_at_a_time(tmp_path: Path) -> None:
    """A second pusher of the same package waits for the first one's lock, and says so once."""
    order: list[str] = []
    waited = threading.Event()
    with package_lock(tmp_path, "team/data"):
        def second() -> None:
            with package_lock(tmp_path, "team/data", on_wait=waited.set):
                order.append("second")
        t = threading.Thread(target=second)
        t.start()
        assert waited.wait(10)
        order.append("first")
    t.join(10)
    assert order == ["first", "second"]

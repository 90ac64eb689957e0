"""The local index: SQLite in ``state_dir``, one row per pushed file.

Per package it keeps the last pushed revision (top_hash, package metadata, when,
and the registry's identity: endpoint and bucket) and, per logical key, the stat
the file had when it was pushed plus the entry that went into the manifest
(hash, size, physical key with versionId, entry metadata). That is enough for a
new process to rebuild the last revision in memory without browsing the
registry, and to tell unchanged files by stat alone. It also holds the daemon's
health results and the holds an operator releases (both read by other processes).

One ``Index`` object per process owns the file. Each thread gets its own
connection (``sqlite3`` connections are not shared between threads), and every
descriptor of the file is SQLite's: the process never opens or closes the file
behind SQLite's back, because closing *any* descriptor of a file drops all of
the process's POSIX locks on it (FACTS.md), and another process would then
believe it is the last user and delete the WAL that this one still writes.

Trust, but verify: before a push builds on the rows, the pusher recomputes the
revision's top_hash from them; a mismatch makes it rebuild from the registry. A
database is moved aside only when SQLite itself says it is damaged or not a
database (never because it is busy), and that is logged as ``index.rebuilt``.
Each push is committed in one transaction, after the registry accepted it: the
index is never ahead of the registry.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from quiltsync.core.types import FINE_RACY_NS, RACY_NS, Entry, FileRecord, FileStat, HashValue, LastPush
from quiltsync.errors import QuiltsyncError
from quiltsync.logs import get_logger

SCHEMA_VERSION = 2
BUSY_TIMEOUT_S = 30.0
# SQLite's primary result codes that mean "this file is damaged" (not "busy").
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS revision (
    package TEXT PRIMARY KEY,
    registry TEXT NOT NULL,
    folder TEXT NOT NULL,
    top_hash TEXT NOT NULL,
    meta TEXT NOT NULL,
    pushed_at REAL NOT NULL,
    root_dev INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS health (
    check_name TEXT NOT NULL,
    target TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT NOT NULL,
    checked_at REAL NOT NULL,
    PRIMARY KEY (check_name, target)
);
CREATE TABLE IF NOT EXISTS hold (
    package TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    since REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS entry (
    package TEXT NOT NULL,
    logical_key TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    recorded_ns INTEGER NOT NULL,
    hash_type TEXT NOT NULL,
    hash TEXT NOT NULL,
    physical_key TEXT NOT NULL,
    meta TEXT,
    PRIMARY KEY (package, logical_key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entry_by_size ON entry (package, size);
"""


class IndexUnavailable(QuiltsyncError):
    """The index could not be opened (busy past the timeout, or unreadable)."""


def is_damaged(e: sqlite3.DatabaseError) -> bool:
    """SQLite says the file is corrupt or not a database (not merely busy or locked)."""
    code = getattr(e, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


class Index:
    """The process's one handle on ``state_dir/index.sqlite3``; thread-safe."""

    def __init__(self, path: Path, *, timeout: float = BUSY_TIMEOUT_S) -> None:
        self.path = path
        self.timeout = timeout
        self.log = get_logger("quiltsync.index")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._open()

    # -- connections -------------------------------------------------------------
    def _open(self) -> None:
        try:
            self._setup(self.db)
        except sqlite3.DatabaseError as e:
            if not is_damaged(e):
                self.close()
                raise IndexUnavailable(f"index {self.path}: {e}; is another process holding it?") from None
            self.close()
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    os.replace(src, Path(str(aside) + suffix))
            self.log.warning("index.rebuilt", path=str(self.path), moved_to=str(aside),
                             reason=f"SQLite reports the database damaged: {e}; starting a new index "
                                    "(it is rebuilt from the registry by hashing, without uploads)")
            self._setup(self.db)

    def _setup(self, db: sqlite3.Connection) -> None:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        db.executescript(_SCHEMA)
        db.execute("INSERT OR IGNORE INTO info VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            created = not self.path.exists()
            # check_same_thread=False only so that close() may close every thread's connection
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            if created:
                os.chmod(self.path, 0o600)  # WAL and SHM files take the database's mode
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            self._local.db = db
            with self._lock:
                self._all.append(db)
        return db

    def close(self) -> None:
        """Close every connection of this index (all threads): at process end."""
        with self._lock:
            conns, self._all = self._all, []
        for db in conns:
            db.close()
        self._local = threading.local()

    @contextmanager
    def _write(self, db: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        db = db or self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- revisions -----------------------------------------------------------------
    def last_push(self, package: str) -> LastPush | None:
        r = self.db.execute(
            "SELECT package, registry, folder, top_hash, meta, pushed_at, root_dev "
            "FROM revision WHERE package = ?",
            (package,),
        ).fetchone()
        if r is None:
            return None
        return LastPush(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6])

    def files(self, package: str) -> dict[str, FileRecord]:
        """Every recorded file of a package, as stored (unverified)."""
        return {
            lk: FileRecord(
                FileStat(size, mtime_ns, inode),
                recorded_ns,
                Entry(HashValue(sys.intern(ht), hv), size, pk, json.loads(meta) if meta else None),
            )
            for lk, size, mtime_ns, inode, recorded_ns, ht, hv, pk, meta in self.db.execute(
                "SELECT logical_key, size, mtime_ns, inode, recorded_ns, hash_type, hash, "
                "physical_key, meta FROM entry WHERE package = ?",
                (package,),
            )
        }

    def racy_keys(self, package: str) -> set[str]:
        """Keys whose recorded stat is racy (``types.is_racy``), found by SQLite."""
        return {str(lk) for (lk,) in self.db.execute(
            "SELECT logical_key FROM entry WHERE package = ? AND mtime_ns + CASE WHEN mtime_ns % 1000000000 = 0 "
            "THEN ? ELSE ? END >= recorded_ns", (package, RACY_NS, FINE_RACY_NS))}

    def holding(self, package: str, size: int, digest: HashValue) -> list[tuple[str, str]]:
        """(logical key, physical key) of the recorded entries with these bytes (size
        and hash): where a renamed or copied file's bytes already are."""
        return [(str(lk), str(pk)) for lk, pk in self.db.execute(
            "SELECT logical_key, physical_key FROM entry WHERE package = ? AND size = ? AND hash = ? "
            "AND hash_type = ? ORDER BY logical_key", (package, size, digest.value, digest.type))]

    def has_size(self, package: str, size: int) -> bool:
        return self.db.execute("SELECT 1 FROM entry WHERE package = ? AND size = ? LIMIT 1",
                               (package, size)).fetchone() is not None

    def count(self, package: str) -> int:
        """How many entries of a package the index records."""
        return int(self.db.execute("SELECT count(*) FROM entry WHERE package = ?", (package,)).fetchone()[0])

    def pinned_page(self, package: str, start: int, count: int) -> list[tuple[str, str]]:
        """(logical key, physical key) of entries ``start`` .. ``start + count`` in logical
        key order: a slice for the health checks' rotating sample (which runs only when
        every entry is pinned), read without loading the package's rows."""
        return [(str(lk), str(pk)) for lk, pk in self.db.execute(
            "SELECT logical_key, physical_key FROM entry WHERE package = ? "
            "ORDER BY logical_key LIMIT ? OFFSET ?", (package, count, start))]

    def unpinned_candidates(self, package: str) -> list[tuple[str, str]]:
        """(logical key, physical key) of entries that may lack a usable versionId
        (none, empty or "null"; the caller decides exactly)."""
        return [(str(lk), str(pk)) for lk, pk in self.db.execute(
            "SELECT logical_key, physical_key FROM entry WHERE package = ? AND (physical_key NOT LIKE "
            "'%?versionId=%' OR physical_key LIKE '%versionId=null%' OR physical_key LIKE '%versionId=&%' "
            "OR physical_key LIKE '%versionId=') ORDER BY logical_key", (package,))]

    def commit(
        self,
        last: LastPush,
        upserts: Mapping[str, FileRecord],
        deletes: Iterable[str] = (),
        *,
        replace_all: bool = False,
    ) -> None:
        """Record a pushed (or adopted) revision in one transaction."""
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO revision VALUES (?, ?, ?, ?, ?, ?, ?)",
                (last.package, last.registry, last.folder, last.top_hash,
                 json.dumps(last.meta, sort_keys=True), last.pushed_at, last.root_dev),
            )
            if replace_all:
                db.execute("DELETE FROM entry WHERE package = ?", (last.package,))
            else:
                db.executemany(
                    "DELETE FROM entry WHERE package = ? AND logical_key = ?",
                    ((last.package, lk) for lk in deletes),
                )
            db.executemany(
                "INSERT OR REPLACE INTO entry VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (last.package, lk, r.entry.size, r.stat.mtime_ns, r.stat.inode,
                     r.recorded_ns, r.entry.hash.type, r.entry.hash.value, r.entry.physical_key,
                     json.dumps(r.entry.meta, sort_keys=True) if r.entry.meta is not None else None)
                    for lk, r in upserts.items()
                ),
            )

    def refresh_stats(self, package: str, files: Mapping[str, FileRecord]) -> None:
        """Update the stat of files whose content was found unchanged."""
        if not files:
            return
        with self._write() as db:
            db.executemany(
                "UPDATE entry SET mtime_ns = ?, inode = ?, recorded_ns = ? "
                "WHERE package = ? AND logical_key = ?",
                ((r.stat.mtime_ns, r.stat.inode, r.recorded_ns, package, lk) for lk, r in files.items()),
            )

    # -- holds (set by the daemon, released by `quiltsync push --allow-deletes`) -----
    def set_hold(self, package: str, reason: str, since: float) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO hold VALUES (?, ?, ?)", (package, reason, since))

    def clear_hold(self, package: str) -> bool:
        with self._write() as db:
            return db.execute("DELETE FROM hold WHERE package = ?", (package,)).rowcount > 0

    def holds(self) -> dict[str, tuple[str, float]]:
        """package -> (reason, since) of every held folder."""
        return {p: (r, s) for p, r, s in self.db.execute("SELECT package, reason, since FROM hold")}

    # -- health (written by the daemon, read by `quiltsync status`) -------------------
    def write_health(self, results: Iterable[tuple[str, str, str, str]], checked_at: float) -> None:
        """Replace the recorded health with (check, target, status, detail) rows."""
        with self._write() as db:
            db.execute("DELETE FROM health")
            db.executemany("INSERT OR REPLACE INTO health VALUES (?, ?, ?, ?, ?)",
                           ((c, t, s, d, checked_at) for c, t, s, d in results))

    def health(self) -> list[tuple[str, str, str, str, float]]:
        return list(self.db.execute(
            "SELECT check_name, target, status, detail, checked_at FROM health ORDER BY check_name, target"))

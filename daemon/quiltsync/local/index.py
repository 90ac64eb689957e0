"""The local index: SQLite in ``state_dir``, one row per pushed file.

Per package it keeps the last pushed revision (top_hash, package metadata, when)
and, per logical key, the stat the file had when it was pushed plus the entry that
went into the manifest (hash, size, physical key with versionId, entry metadata).
That is enough for a new process to rebuild the last revision in memory without
browsing the registry, and to tell unchanged files by stat alone.

Trust, but verify: before a push builds on the rows, the pusher recomputes the
revision's top_hash from them; a mismatch (a torn write, a manual edit, a bug)
makes it rebuild from the registry. An unreadable database
file is moved aside and started afresh. Each push is committed in one
transaction, after the registry accepted it: the index is never ahead of the
registry.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from quiltsync.local.hashing import HashValue
from quiltsync.core.planner import BaseEntry, is_racy
from quiltsync.local.scanner import FileStat

SCHEMA_VERSION = 1

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
"""


@dataclass(frozen=True, slots=True)
class Revision:
    """The last revision quiltsync pushed (or adopted) for a package."""

    package: str
    registry: str
    folder: str
    top_hash: str
    meta: dict
    pushed_at: float
    root_dev: int = 0


@dataclass(frozen=True, slots=True)
class Row:
    """One file as pushed: the stat it had and the manifest entry it became."""

    stat: FileStat
    recorded_ns: int
    entry: BaseEntry

    # planner.Known: the rows themselves serve as the planner's index (no copies)
    @property
    def hash(self) -> HashValue:
        return self.entry.hash

    @property
    def racy(self) -> bool:
        return is_racy(self.stat.mtime_ns, self.recorded_ns)


@dataclass(slots=True)
class Snapshot:
    revision: Revision
    rows: dict[str, Row]

    def base(self) -> dict[str, BaseEntry]:
        return {lk: r.entry for lk, r in self.rows.items()}


class Index:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.db = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            db = self._connect()
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            db.executescript(_SCHEMA)
            return db
        except sqlite3.DatabaseError:
            # Not a database (or damaged): keep it for inspection, start afresh.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            os.replace(self.path, aside)
            db = self._connect()
            db.executescript(_SCHEMA)
            return db

    def _connect(self) -> sqlite3.Connection:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def close(self) -> None:
        self.db.close()

    # -- reading ---------------------------------------------------------------
    def revision(self, package: str) -> Revision | None:
        r = self.db.execute(
            "SELECT package, registry, folder, top_hash, meta, pushed_at, root_dev "
            "FROM revision WHERE package = ?",
            (package,),
        ).fetchone()
        if r is None:
            return None
        return Revision(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6])

    def load(self, package: str, registry: str, folder: str) -> Snapshot | None:
        """The last revision and its rows, if they are for this registry and folder;
        None otherwise (the caller rebuilds). Not verified: see Snapshot.verify."""
        rev = self.revision(package)
        if rev is None or rev.registry != registry or rev.folder != folder:
            return None
        return Snapshot(rev, self.rows(package))

    def rows(self, package: str) -> dict[str, Row]:
        """Every recorded file of a package, as stored (unverified)."""
        return {
            lk: Row(
                FileStat(size, mtime_ns, inode),
                recorded_ns,
                BaseEntry(HashValue(ht, hv), size, pk, json.loads(meta) if meta else None),
            )
            for lk, size, mtime_ns, inode, recorded_ns, ht, hv, pk, meta in self.db.execute(
                "SELECT logical_key, size, mtime_ns, inode, recorded_ns, hash_type, hash, "
                "physical_key, meta FROM entry WHERE package = ?",
                (package,),
            )
        }

    # -- writing ---------------------------------------------------------------
    def commit(
        self,
        revision: Revision,
        upserts: Mapping[str, Row],
        deletes: Iterable[str] = (),
        *,
        replace_all: bool = False,
    ) -> None:
        """Record a pushed (or adopted) revision in one transaction."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT OR REPLACE INTO revision VALUES (?, ?, ?, ?, ?, ?, ?)",
                (revision.package, revision.registry, revision.folder, revision.top_hash,
                 json.dumps(revision.meta, sort_keys=True), revision.pushed_at, revision.root_dev),
            )
            if replace_all:
                db.execute("DELETE FROM entry WHERE package = ?", (revision.package,))
            else:
                db.executemany(
                    "DELETE FROM entry WHERE package = ? AND logical_key = ?",
                    ((revision.package, lk) for lk in deletes),
                )
            db.executemany(
                "INSERT OR REPLACE INTO entry VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (revision.package, lk, r.entry.size, r.stat.mtime_ns, r.stat.inode,
                     r.recorded_ns, r.entry.hash.type, r.entry.hash.value, r.entry.physical_key,
                     json.dumps(r.entry.meta, sort_keys=True) if r.entry.meta is not None else None)
                    for lk, r in upserts.items()
                ),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def refresh_stats(self, package: str, rows: Mapping[str, Row]) -> None:
        """Update the stat of files whose content was found unchanged."""
        if not rows:
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany(
                "UPDATE entry SET mtime_ns = ?, inode = ?, recorded_ns = ? "
                "WHERE package = ? AND logical_key = ?",
                ((r.stat.mtime_ns, r.stat.inode, r.recorded_ns, package, lk) for lk, r in rows.items()),
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # -- health (written by the daemon, read by `quiltsync status`) --------------------
    def write_health(self, results: Iterable[tuple[str, str, str, str]], checked_at: float) -> None:
        """Replace the recorded health with (check, target, status, detail) rows."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("DELETE FROM health")
            self.db.executemany("INSERT OR REPLACE INTO health VALUES (?, ?, ?, ?, ?)",
                                ((c, t, s, d, checked_at) for c, t, s, d in results))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def health(self) -> list[tuple[str, str, str, str, float]]:
        return list(self.db.execute(
            "SELECT check_name, target, status, detail, checked_at FROM health ORDER BY check_name, target"))

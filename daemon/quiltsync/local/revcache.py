"""A per-user cache of what never changes in a registry: manifests by top_hash,
revision pointers by their ETag, and the changes between two revisions.

``history``, ``restore --at`` and ``diff`` read revisions; without a cache each
call costs a GET per pointer and per manifest (FACTS.md: 402 requests and 53 MB
for 200 revisions of a 1,000-file package). Everything here is derived from the
registry and safe to lose:

- a manifest is named by its top_hash, so its content never changes (stored
  compressed, with the SHA-256 of its bytes, checked on every read; a row that
  fails is dropped and read again from S3). Its physical keys can: pushing the
  same content again rewrites it with new object versions, so the ETag is kept
  too, and whatever acts on physical keys (restore, revert, prune) reads the
  manifest afresh or checks the ETag from a LIST;
- a pointer ``named_packages/<name>/<unix seconds>`` keeps its content while
  its ETag stays the same (a pointer overwritten in the same second gets a new
  ETag and is read again);
- the changes between two top_hashes never change either, nor does what a
  listing shows of one revision (message, file count, pinned, workflow, metadata).

Keys include the registry's identity (endpoint and bucket): physical keys are
not part of a top_hash, so the same top_hash may point at other bytes elsewhere.

The file lives in the user's cache directory ($CACHE_DIRECTORY under systemd,
else $XDG_CACHE_HOME/quiltsync). When it cannot be opened or written, the
commands work without it (a cache in memory for the process). Manifests past
``MAX_BYTES`` (compressed) are evicted, least recently used first.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
import zlib
from pathlib import Path
from typing import Any

MAX_BYTES = 512 * 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS manifest (identity TEXT, top_hash TEXT, etag TEXT, sha256 TEXT, data BLOB,
    size INTEGER, used REAL, PRIMARY KEY (identity, top_hash));
CREATE TABLE IF NOT EXISTS pointer (identity TEXT, package TEXT, stamp INTEGER, etag TEXT, top_hash TEXT,
    PRIMARY KEY (identity, package, stamp));
CREATE TABLE IF NOT EXISTS change (identity TEXT, old TEXT, new TEXT, changes TEXT,
    PRIMARY KEY (identity, old, new));
CREATE TABLE IF NOT EXISTS summary (identity TEXT, top_hash TEXT, summary TEXT, PRIMARY KEY (identity, top_hash));
"""


def default_path() -> Path:
    base = os.environ.get("CACHE_DIRECTORY", "").split(":")[0]
    if not base:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = str(Path(base) / "quiltsync")
    return Path(base) / "revisions.sqlite3"


class RevisionCache:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else default_path()
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = self._open(str(self.path))
            self.persistent = True
        except (OSError, sqlite3.Error):  # unwritable, or not a database: work without it
            self.db = self._open(":memory:")
            self.persistent = False

    @staticmethod
    def _open(where: str) -> sqlite3.Connection:
        db = sqlite3.connect(where, timeout=10, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
        return db

    def _read(self, sql: str, args: tuple[object, ...]) -> list[Any]:
        """Rows, or none when the cache cannot be read (it is only a cache)."""
        try:
            with self._lock:
                return list(self.db.execute(sql, args).fetchall())
        except sqlite3.Error:
            return []

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        try:
            with self._lock:
                self.db.execute(sql, args)
        except sqlite3.Error:
            pass  # a cache that cannot be written is only slower

    # -- manifests ------------------------------------------------------------------------
    def manifest(self, identity: str, top_hash: str, etag: str | None = None) -> bytes | None:
        """The manifest as last read; with ``etag``, only if it is still that object."""
        rows = self._read("SELECT sha256, data, etag FROM manifest WHERE identity = ? AND top_hash = ?",
                          (identity, top_hash))
        if not rows or (etag is not None and (not etag or rows[0][2] != etag)):
            return None  # an empty ETag (a store that sends none) proves nothing
        row = rows[0]
        try:
            data = zlib.decompress(row[1])
        except zlib.error:
            data = b""
        if hashlib.sha256(data).hexdigest() != row[0]:
            self._write("DELETE FROM manifest WHERE identity = ? AND top_hash = ?", (identity, top_hash))
            return None
        self._write("UPDATE manifest SET used = ? WHERE identity = ? AND top_hash = ?",
                    (time.time(), identity, top_hash))
        return data

    def put_manifest(self, identity: str, top_hash: str, data: bytes, etag: str) -> None:
        packed = zlib.compress(data, 6)
        self._write("INSERT OR REPLACE INTO manifest VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (identity, top_hash, etag, hashlib.sha256(data).hexdigest(), packed, len(packed), time.time()))
        self._evict()

    def _evict(self) -> None:
        try:
            with self._lock:
                total = self.db.execute("SELECT COALESCE(SUM(size), 0) FROM manifest").fetchone()[0]
                if total <= MAX_BYTES:
                    return
                for identity, top, size in self.db.execute(
                        "SELECT identity, top_hash, size FROM manifest ORDER BY used").fetchall():
                    self.db.execute("DELETE FROM manifest WHERE identity = ? AND top_hash = ?", (identity, top))
                    total -= size
                    if total <= MAX_BYTES:
                        break
        except sqlite3.Error:
            pass

    # -- pointers -------------------------------------------------------------------------
    def pointers(self, identity: str, package: str) -> dict[int, tuple[str, str]]:
        """stamp -> (etag, top_hash) as last read."""
        rows = self._read("SELECT stamp, etag, top_hash FROM pointer WHERE identity = ? AND package = ?",
                          (identity, package))
        return {stamp: (etag, top) for stamp, etag, top in rows}

    def put_pointers(self, identity: str, package: str, rows: list[tuple[int, str, str]]) -> None:
        """(stamp, etag, top_hash) rows, in one transaction."""
        if not rows:
            return
        try:
            with self._lock:
                self.db.execute("BEGIN")
                self.db.executemany("INSERT OR REPLACE INTO pointer VALUES (?, ?, ?, ?, ?)",
                                    [(identity, package, s, e, t) for s, e, t in rows])
                self.db.execute("COMMIT")
        except sqlite3.Error:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def forget_pointers(self, identity: str, package: str, stamps: list[int]) -> None:
        for stamp in stamps:
            self._write("DELETE FROM pointer WHERE identity = ? AND package = ? AND stamp = ?",
                        (identity, package, stamp))

    # -- changes between two revisions ------------------------------------------------------
    def changes(self, identity: str, old: str, new: str) -> list[tuple[str, str]] | None:
        rows = self._read("SELECT changes FROM change WHERE identity = ? AND old = ? AND new = ?",
                          (identity, old, new))
        if not rows:
            return None
        try:
            return [(str(k), str(kind)) for k, kind in json.loads(rows[0][0])]
        except (ValueError, TypeError):
            return None

    def put_changes(self, identity: str, old: str, new: str, changes: list[tuple[str, str]]) -> None:
        self._write("INSERT OR REPLACE INTO change VALUES (?, ?, ?, ?)", (identity, old, new, json.dumps(changes)))

    # -- what a listing shows of a revision ---------------------------------------------------
    def summary(self, identity: str, top_hash: str) -> dict[str, Any] | None:
        rows = self._read("SELECT summary FROM summary WHERE identity = ? AND top_hash = ?", (identity, top_hash))
        try:
            return dict(json.loads(rows[0][0])) if rows else None
        except (ValueError, TypeError):
            return None

    def put_summary(self, identity: str, top_hash: str, summary: dict[str, Any]) -> None:
        self._write("INSERT OR REPLACE INTO summary VALUES (?, ?, ?)", (identity, top_hash, json.dumps(summary)))

    def close(self) -> None:
        self.db.close()

"""A package's revisions, read cheaply: what `history`, `restore`, `diff` and `revert` ask.

``Catalog`` pairs a registry with the per-user ``RevisionCache``: the list of
revisions costs one LIST (per 1,000 pointers) plus a GET only for pointers not
seen before (or rewritten: a new ETag); a manifest is read from S3 once per
top_hash, verified, and kept; the changes between two revisions are computed
once. A revision is named by a top_hash prefix (6+ hex digits) or by a time
(the revision that was latest then).
"""

from __future__ import annotations

import datetime as dt
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quiltsync.core.diff import Change, diff_entries
from quiltsync.core.types import Entry, Revision
from quiltsync.errors import PermanentError, QuiltsyncError, RestoreError, UsageError
from quiltsync.local import hashing
from quiltsync.local.revcache import RevisionCache
from quiltsync.remote.registry import Registry, unpinned_keys

_HEX = re.compile(r"[0-9a-f]{6,64}")


@dataclass(frozen=True, slots=True)
class Picked:
    """A revision a command resolved, and why it was that one (for the output)."""

    stamp: int | None  # the pointer's unix time, when known
    top_hash: str
    why: str


def parse_time(text: str) -> float:
    """ISO-8601 (UTC when no zone is given), or a plain date (its midnight, UTC)."""
    t = text.strip()
    try:
        moment = dt.datetime.fromisoformat(t.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"{text!r}: expected a top_hash prefix (6+ hex digits) or a time like "
                         "2026-11-28, 2026-11-28T14:30 or 2026-11-28T14:30:00+01:00") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    try:
        stamp = moment.timestamp()
        iso(stamp)
    except (ValueError, OverflowError, OSError):
        raise UsageError(f"{text!r}: a time outside the years 1-9999 UTC") from None
    return stamp


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class _Undecided(Exception):
    """The bytes of an entry could not be read or did not match the entry."""


class Catalog:
    def __init__(self, registry: Registry, package: str, cache: RevisionCache | None = None) -> None:
        self.registry = registry
        self.package = package
        self.cache = cache if cache is not None else RevisionCache()
        self._revisions: list[tuple[int, str]] | None = None
        self._listed: list[tuple[int, str]] | None = None  # (stamp, ETag) of one LIST
        self._parsed: dict[str, Revision] = {}
        self._cached_pointers: dict[int, tuple[str, str]] | None = None
        self._fresh: list[tuple[int, str, str]] = []  # pointers read from S3, to cache

    @property
    def identity(self) -> str:
        return self.registry.identity

    # -- the list of revisions ------------------------------------------------------------
    def pointers(self) -> list[tuple[int, str]]:
        """(unix time, ETag) of every revision pointer, oldest first: one LIST a call."""
        if self._listed is None:
            self._listed = self.registry.pointers(self.package)
        return self._listed

    def revisions(self, last: int | None = None) -> list[tuple[int, str]]:
        """(unix time, top_hash) of every revision pointer (or of the ``last`` newest),
        oldest first."""
        if self._revisions is not None:
            return self._revisions[-last:] if last else self._revisions
        listed = self.pointers()
        wanted = listed[-last:] if last else listed
        out = [(stamp, top) for stamp, etag in wanted
               if (top := self._top_hash(stamp, etag, self._known())) is not None]
        self.cache.put_pointers(self.identity, self.package, self._fresh)
        self._fresh = []
        if not last:
            self._revisions = out
            gone = sorted(set(self._known()) - {s for s, _ in listed})
            if gone:
                self.cache.forget_pointers(self.identity, self.package, gone)
        return out

    def _known(self) -> dict[int, tuple[str, str]]:
        if self._cached_pointers is None:
            self._cached_pointers = self.cache.pointers(self.identity, self.package)
        return self._cached_pointers

    def _top_hash(self, stamp: int, etag: str, known: dict[int, tuple[str, str]]) -> str | None:
        """A pointer's top_hash: from the cache while its ETag is the same, else one GET."""
        hit = known.get(stamp)
        if hit is not None and etag and hit[0] == etag:
            return hit[1]
        top = self.registry.read_pointer(self.package, stamp)
        if top is not None:
            self._fresh.append((stamp, etag, top))
        return top

    def revision_version(self, top_hash: str, version_id: str) -> Revision:
        """One object version of a manifest (immutable: cached by its versionId, not kept
        in memory: prune walks every manifest of a bucket)."""
        name = f"{top_hash}@{version_id}"
        return self._cached(top_hash, self.cache.manifest(self.identity, name, "immutable")) or \
            self._read(top_hash, name, lambda: (self.registry.manifest_version(top_hash, version_id), "immutable"))

    def revision(self, top_hash: str, *, fresh: bool = False) -> Revision:
        """A revision, from the cache when it holds it; ``fresh``: read from S3 (its
        physical keys matter: the same top_hash pushed again names other object versions)."""
        rev = None if fresh else self._parsed.get(top_hash) or \
            self._cached(top_hash, self.cache.manifest(self.identity, top_hash))
        if rev is None:
            rev = self._read(top_hash, top_hash, lambda: self.registry.manifest_object(top_hash))
        self._parsed[top_hash] = rev
        return rev

    def manifest_current(self, top_hash: str) -> bytes:
        """A manifest's bytes as S3 has them now: from the cache while its ETag (one
        HEAD, no body) is the one cached, else read once and cached. For readers of a
        few lines (the health checks' sample), which need the current physical keys
        but not every entry parsed; the bytes are those verified when cached."""
        etag = self.registry.manifest_etag(top_hash)
        if etag is None:
            raise PermanentError(f"no manifest s3://{self.registry.bucket}/.quilt/packages/{top_hash}")
        data = self.cache.manifest(self.identity, top_hash, etag)
        if data is not None:
            return data
        data, etag = self.registry.manifest_object(top_hash)
        self.registry.parse_revision(top_hash, data)  # verify before caching
        self.cache.put_manifest(self.identity, top_hash, data, etag)
        return data

    def _cached(self, top_hash: str, data: bytes | None) -> Revision | None:
        """Cached manifest bytes as a revision (None: none, or they do not verify)."""
        if data is None:
            return None
        try:
            return self.registry.parse_revision(top_hash, data)
        except PermanentError:
            return None

    def _read(self, top_hash: str, name: str, read: Callable[[], tuple[bytes, str]]) -> Revision:
        """Read from S3, verify, then keep in the cache under ``name``."""
        data, etag = read()
        rev = self.registry.parse_revision(top_hash, data)
        self.cache.put_manifest(self.identity, name, data, etag)
        return rev

    # -- naming a revision ------------------------------------------------------------------
    def resolve(self, spec: str, *, allow_time: bool = True) -> Picked:
        """A top_hash prefix, or (``allow_time``) a time: the revision that was latest then."""
        h = spec.strip().lower()
        if _HEX.fullmatch(h):
            revs = self.revisions()
            matches = sorted({t for _, t in revs if t.startswith(h)})
            if len(matches) == 1:
                stamp = max(s for s, t in revs if t == matches[0])
                return Picked(stamp, matches[0], f"top_hash {h}")
            if len(matches) > 1:
                raise UsageError(f"{spec!r}: {len(matches)} revisions of {self.package} start with it; "
                                 "give more digits")
            if len(h) == 64:  # a revision without a pointer (pruned from history) may still exist
                return Picked(None, h, "top_hash")
            if not allow_time or not re.fullmatch(r"\d{8}", h):
                raise RestoreError(f"{spec!r}: no revision of {self.package} in {self.registry.url} starts with it")
        elif not allow_time:
            raise UsageError(f"{spec!r}: expected 64 hex digits or a unique prefix of 6 or more")
        return self.at(parse_time(spec), spec)

    def at(self, when: float, spec: str | None = None) -> Picked:
        """The revision that was latest at ``when``: the pointers' names are their
        times, so one LIST and the chosen pointer's content are enough."""
        listed = self.pointers()
        asked = spec if spec is not None else iso(when)
        for stamp, etag in sorted(listed, reverse=True):
            if stamp > when:
                continue
            top = self._top_hash(stamp, etag, self._known())
            if top is None:  # deleted between the LIST and the GET
                continue
            self.cache.put_pointers(self.identity, self.package, self._fresh)
            self._fresh = []
            newer = sum(1 for s, _ in listed if s > stamp)
            return Picked(stamp, top, f"latest at {iso(when)}: pushed {iso(stamp)}"
                          + (f", {newer} newer revision(s) since" if newer else ", still the latest"))
        first = f"; the first is from {iso(listed[0][0])}" if listed else ""
        raise RestoreError(f"{self.package} had no revision yet at {asked} ({iso(when)}){first}")

    def summary(self, top_hash: str) -> dict[str, Any]:
        """message, files, pinned, workflow and metadata of a revision (cached: a
        long history is listed without parsing every manifest again)."""
        hit = self.cache.summary(self.identity, top_hash)
        if hit is not None:
            return hit
        rev = self.revision(top_hash)
        out = {"message": rev.meta.get("message"), "files": len(rev.entries),
               "pinned": not unpinned_keys(rev.entries), "workflow": rev.meta.get("workflow"),
               "metadata": rev.meta.get("user_meta")}
        self.cache.put_summary(self.identity, top_hash, out)
        return out

    # -- what changed -------------------------------------------------------------------------
    def changes(self, old: str | None, new: str) -> list[Change]:
        """From revision ``old`` (None: nothing) to ``new``, by top_hash; cached by the
        pair, so a listing reads no manifest it has compared before."""
        if old is None:
            return diff_entries({}, self.revision(new).entries)
        if old == new:
            return []
        cached = self.cache.changes(self.identity, old, new)
        if cached is not None:
            return [Change(k, kind) for k, kind in cached]
        undecided: set[str] = set()

        def same(key: str, a: Entry, b: Entry) -> bool:
            try:
                return self._same_bytes(key, a, b)
            except _Undecided:
                undecided.add(key)
                return False

        out = diff_entries(self.revision(old).entries, self.revision(new).entries, same)
        if not undecided:  # a verdict that could not read the bytes is not kept
            self.cache.put_changes(self.identity, old, new, [(c.key, c.kind) for c in out])
        return out

    def _same_bytes(self, key: str, a: Entry, b: Entry) -> bool:
        """Entries hashed in ways that cannot be compared: read both, hash both alike.

        Each download lands under a fixed name (never the logical key: a manifest
        may hold any key) and must match its own entry; an entry that cannot be
        read or does not match counts as changed, and the verdict is not cached."""
        with tempfile.TemporaryDirectory(prefix="quiltsync-diff-") as tmp:
            digests = []
            for side, entry in (("a", a), ("b", b)):
                if not entry.physical_key.startswith("s3://"):
                    raise _Undecided(key)
                path = Path(tmp) / side / "object"
                try:
                    self.registry.fetch(self.package, Revision("", {}, {"object": entry}, self.identity),
                                        path.parent, use_cache=False)
                    own = hashing.hash_like(path, entry.hash.type)
                except (QuiltsyncError, OSError):
                    raise _Undecided(key) from None
                if own is not None and own != entry.hash:
                    raise _Undecided(key)
                digests.append(hashing.chunked_sha256(path))
        return digests[0] == digests[1]

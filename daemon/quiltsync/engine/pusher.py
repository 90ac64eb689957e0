"""One folder's push pass: scan, plan against the last revision, push the difference.

The base revision comes from, in order: the revision the last push in this
process returned, the local index (rebuilt in memory and checked against its
top_hash), or the registry's latest manifest (read from S3, not quilt3's cache).
Nothing is uploaded or hashed for files whose stat matches the index.

A push is made without ``force``: when another writer moved `latest`, quilt3
raises a conflict, and the pass re-plans on top of the new latest and pushes
again, so both revisions stay in the history and the new latest equals the
folder (the folder is the source of truth; see docs/design.md).
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from quiltsync.local import hashing
from quiltsync.config import FolderConfig
from quiltsync.errors import PermanentError, PushConflict, PushRefused, SourceChanged, TransientError
from quiltsync.local.index import Index, Revision, Row
from quiltsync.logs import get_logger
from quiltsync.core.planner import Plan, plan_push
from quiltsync.remote.registry import Registry, RemoteRevision, bucket_versioning, top_hash_of, unpinned_keys
from quiltsync.local.scanner import (
    FileStat,
    RootUnavailable,
    Scan,
    make_ignore_spec,
    rescan_paths,
    scan_folder,
)
from quiltsync.local.stillcopy import Snapshots

MAX_CONFLICT_RETRIES = 5
S3_MAX_KEY_BYTES = 1024
HOT_NS = 2_000_000_000  # modified this recently: maybe still being written


@dataclass(frozen=True, slots=True)
class PushResult:
    package: str
    registry: str
    top_hash: str | None  # None when nothing was pushed
    parent_top_hash: str | None
    added: int = 0
    modified: int = 0
    deleted: int = 0
    files: int = 0
    bytes_uploaded: int = 0
    duration_ms: int = 0
    changed_during_push: list[str] = field(default_factory=list)

    @property
    def pushed(self) -> bool:
        return self.top_hash is not None and self.top_hash != self.parent_top_hash


@dataclass(slots=True)
class _Base:
    revision: RemoteRevision | None
    rows: dict[str, Row]  # what the index knows of local files (the planner's index)
    trusted: bool  # True: from this process or the index; False: read from the registry
    verified: bool = True  # False: index rows whose top_hash is checked before a push


class FolderPusher:
    """Pushes one configured folder; keeps the last revision as the next base."""

    def __init__(
        self,
        folder: FolderConfig,
        index: Index,
        registry: Registry | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.folder = folder
        self.index = index
        self.registry = registry or Registry(folder.registry)
        self.clock = clock
        self.sleep = sleep
        self.ignore = make_ignore_spec(folder.ignore)
        self.log = get_logger("quiltsync.push").bind(package=folder.package, registry=folder.registry)
        self._last: tuple[RemoteRevision, dict[str, Row]] | None = None
        self._not_before = 0.0  # no push before this unix time (see _wait_for_next_second)
        self._hot: set[str] = set()  # keys that changed during an upload: snapshot them

    # -- the pass ----------------------------------------------------------------
    def _drop_unpushable(self, scan: Scan) -> None:
        """S3 keys are at most 1,024 bytes: a logical key longer than that under the
        package prefix would fail the whole push, so that file is skipped, named."""
        room = S3_MAX_KEY_BYTES - len(self.folder.package.encode()) - 1
        for lk in [lk for lk in scan.files if len(lk.encode()) > room]:
            del scan.files[lk]
            self.log.warning("scan.skipped", path=str(self.folder.path / lk),
                             reason=f"path is longer than S3 allows for a key ({room} bytes here)")

    def scan(self, paths: Iterable[str] | None = None, base: _Base | None = None) -> Scan:
        """The folder's files: a full scan, or (``paths`` given and the base's rows
        trusted to be the last scan) the rows updated for those paths only."""
        try:
            if paths is not None and base is not None and base.trusted:
                previous = {lk: r.stat for lk, r in base.rows.items()}
                scan = rescan_paths(self.folder.path, self.ignore, previous, paths)
            else:
                scan = scan_folder(self.folder.path, self.ignore)
        except RootUnavailable as e:
            self.log.error("push.refused", reason=f"folder root unavailable: {e}")
            raise PushRefused(f"{self.folder.package}: folder root unavailable: {e}") from None
        for s in scan.skipped:
            self.log.warning("scan.skipped", path=s.path, reason=s.reason)
        self._drop_unpushable(scan)
        return scan

    def push(self, *, defer_moving: bool = False, paths: Iterable[str] | None = None,
             allow_deletes: bool = False) -> PushResult:
        """One pass. ``defer_moving``: a file whose stat changed since the scan (still
        being written) is left for the next pass instead of being pushed half-written.
        ``paths``: the only paths that changed (relative), when the caller knows them.
        ``allow_deletes``: an operator confirmed the deletions the safety checks hold."""
        started = time.monotonic()
        recorded_ns = time.time_ns()
        base = self._load_base()
        scan = self.scan(paths, base)
        for _attempt in range(MAX_CONFLICT_RETRIES + 1):
            plan = plan_push(scan.files, base.rows, base.revision.entries if base.revision else {},
                             self._hash_file)
            if not plan.changes:
                latest = self.registry.latest(self.folder.package) if base.trusted else None
                if base.trusted and latest != (base.revision.top_hash if base.revision else None):
                    self.log.warning("push.conflict", expected=_top(base.revision), latest=latest,
                                     detail="latest moved since our last push; rebasing on it")
                    base = self._remote_base(base)
                    continue
                self._adopt(base, plan, scan, recorded_ns)
                self.log.info("push.skipped", reason="no changes", files=len(scan.files),
                              hashed=plan.hashed, duration_ms=int((time.monotonic() - started) * 1000))
                return self._no_push(base, scan)
            if not base.verified:
                if base.revision is not None and \
                        top_hash_of(base.revision.meta, base.revision.entries) != base.revision.top_hash:
                    self.log.warning("index.rebuilt", reason="index rows do not reproduce their "
                                     "recorded top_hash; rebuilding from the registry")
                    base = self._remote_base(_Base(None, {}, False))
                    continue
                base.verified = True
            self._check_safe(plan, scan, base, allow_deletes)
            self._check_versioning()
            try:
                return self._push_plan(plan, scan, base, started, recorded_ns, defer_moving)
            except PushConflict as e:
                self.log.warning("push.conflict", expected=_top(base.revision), detail=str(e))
                base = self._remote_base(base)
        raise PushConflict(
            f"{self.folder.package}: `latest` kept moving under {MAX_CONFLICT_RETRIES} retries; "
            "another writer is pushing this package continuously"
        )

    # -- base revisions ---------------------------------------------------------
    def _load_base(self) -> _Base:
        if self._last is not None:
            rev, rows = self._last
            return _Base(rev, dict(rows), True)
        snap = self.index.load(self.folder.package, self.folder.registry, str(self.folder.path))
        if snap is not None:
            rev = RemoteRevision(snap.revision.top_hash, snap.revision.meta, snap.base())
            return _Base(rev, snap.rows, True, verified=False)
        if self.index.revision(self.folder.package) is not None:
            self.log.warning("index.rebuilt", reason="the index was made for another folder or registry")
        return self._remote_base(_Base(None, {}, False))

    def _remote_base(self, known: _Base) -> _Base:
        """The registry's latest, keeping what the index knows of local files."""
        rev = self.registry.latest_revision(self.folder.package)
        self._last = None
        # The other writer's pointer is named by a second <= now: ours must not reuse it.
        self._not_before = math.floor(self.clock()) + 1
        return _Base(rev, known.rows, False)

    def _hash_file(self, lk: str, hash_type: str) -> hashing.HashValue | None:
        try:
            return hashing.hash_like(self.folder.path / lk, hash_type)
        except OSError:
            return None

    # -- safety -------------------------------------------------------------------
    def _check_safe(self, plan: Plan, scan: Scan, base: _Base, allow_deletes: bool) -> None:
        """Stop before a push that would drop data by accident (marker-free: the
        recorded revision, its root device and its file count are the reference)."""
        if base.revision is None or not plan.deleted or allow_deletes:
            return
        total = len(base.revision.entries)
        hint = "; once that is intended, run `quiltsync push --allow-deletes`"
        reason = None
        recorded = self.index.revision(self.folder.package)
        if not scan.files:
            reason = (f"folder {self.folder.path} is empty but revision {base.revision.top_hash[:12]} has "
                      f"{total} files; refusing to push a deletion of everything")
        elif recorded is not None and recorded.root_dev and recorded.root_dev != scan.root_dev:
            reason = (f"folder {self.folder.path} is on another device than when it was last pushed "
                      f"(unmounted, or a different disk mounted there); refusing to push "
                      f"{len(plan.deleted)} deletions")
        elif len(plan.deleted) > 1 and len(plan.deleted) > self.folder.max_delete_fraction * total:
            reason = (f"this push would delete {len(plan.deleted)} of {total} files of {self.folder.package} "
                      f"(more than max_delete_fraction = {self.folder.max_delete_fraction:g}); "
                      f"first: {plan.deleted[0]!r}")
        if reason is not None:
            self.log.error("push.refused", reason=reason + hint, deleted=len(plan.deleted), files=total)
            raise PushRefused(f"{self.folder.package}: {reason}{hint}")

    def _check_versioning(self) -> None:
        """Refuse to push to a bucket that does not keep versions (FACTS.md: an old
        top_hash would then silently restore the newest bytes)."""
        bucket = self.folder.bucket
        status = bucket_versioning(bucket)
        if status == "Enabled":
            return
        what = "was never enabled" if status is None else "is Suspended"
        if self.folder.allow_unversioned:
            self.log.warning("push.unversioned", bucket=bucket,
                             detail=f"versioning of bucket {bucket} {what}; pushing because "
                                    "allow_unversioned = true: older revisions will restore the newest bytes")
            return
        reason = (f"versioning of bucket {bucket} {what}, so older revisions could not be restored "
                  f"(quilt3 would silently return the newest bytes); enable it with `aws s3api "
                  f"put-bucket-versioning --bucket {bucket} --versioning-configuration Status=Enabled`, "
                  "or set allow_unversioned = true for this folder")
        self.log.error("push.refused", reason=reason)
        raise PushRefused(f"{self.folder.package}: {reason}")

    # -- pushing ------------------------------------------------------------------
    def _push_plan(self, plan: Plan, scan: Scan, base: _Base, started: float,
                   recorded_ns: int, defer_moving: bool = False) -> PushResult:
        uploads: dict[str, tuple[Path, int]] = {}
        direct: dict[str, Path] = {}  # uploaded from the folder itself (not a snapshot)
        set_stats: dict[str, FileStat] = {}
        vanished: list[str] = []
        set_ns = time.time_ns()  # before the stats below: the racy check must be conservative
        snapshots = None
        for lk in plan.uploads:
            path = self.folder.path / lk
            try:
                st = FileStat.of(os.stat(path))
            except OSError:
                vanished.append(lk)
                continue
            if defer_moving and st != scan.files[lk] and lk not in self._hot:
                vanished.append(lk)  # still being written: next round
                continue
            if not os.access(path, os.R_OK):
                self.log.warning("scan.skipped", path=str(path), reason="permission denied")
                continue
            if lk in self._hot or (not defer_moving and st.mtime_ns > set_ns - HOT_NS):
                # Being written (or changed during an earlier upload): upload a copy
                # taken while the file stood still, so the revision is never torn.
                snapshots = snapshots or Snapshots(self.folder, self.index.path.parent)
                snap = snapshots.take(path)
                if snap is None:
                    vanished.append(lk)
                    continue
                st, copy = snap
                uploads[lk] = (copy, st.size)
            else:
                uploads[lk] = (path, st.size)
                direct[lk] = path
            set_stats[lk] = st
        try:
            return self._publish(plan, scan, base, started, recorded_ns, uploads, direct, set_stats,
                                 vanished, set_ns)
        finally:
            if snapshots is not None:
                snapshots.clear()

    def _publish(self, plan: Plan, scan: Scan, base: _Base, started: float, recorded_ns: int,
                 uploads: dict[str, tuple[Path, int]], direct: dict[str, Path],
                 set_stats: dict[str, FileStat], vanished: list[str], set_ns: int) -> PushResult:
        if not uploads and not plan.deleted:  # all deferred, vanished or unreadable
            return self._no_push(base, scan, vanished)
        self._wait_for_next_second()
        self.log.info("push.started", uploads=len(uploads), deletes=len(plan.deleted),
                      parent_top_hash=_top(base.revision))
        counts = {"added": len([k for k in plan.added if k in uploads]),
                  "modified": len([k for k in plan.modified if k in uploads]),
                  "deleted": len(plan.deleted)}
        message = (f"quiltsync@{socket.gethostname()}: {counts['added']} added, "
                   f"{counts['modified']} modified, {counts['deleted']} deleted")
        def changed_sources() -> list[str]:
            return sorted(lk for lk, path in direct.items() if _stat_or_none(path) != set_stats[lk])

        try:
            new = self.registry.push(self.folder.package, base.revision, uploads, plan.deleted, message,
                                     changed_sources)
        except SourceChanged as e:
            self._hot.update(e.keys)
            self.log.warning("push.aborted", keys=e.keys[:20], count=len(e.keys),
                             detail="files changed while being uploaded; nothing was published; "
                                    "they are pushed from a still copy next round")
            return self._no_push(base, scan, sorted([*e.keys, *vanished]))
        self._hot.difference_update(uploads)
        pushed_at = self.clock()
        changed = [lk for lk, st in set_stats.items() if _stat_or_none(self.folder.path / lk) != st]
        rows = self._rows_after(new, base, plan, scan, set_stats, set_ns, recorded_ns)
        revision = Revision(self.folder.package, self.folder.registry, str(self.folder.path),
                            new.top_hash, new.meta, pushed_at, scan.root_dev)
        if base.trusted:
            upserts = {lk: rows[lk] for lk in (*uploads, *plan.refresh)}
            self.index.commit(revision, upserts, plan.deleted)
        else:
            self.index.commit(revision, rows, replace_all=True)
        self._last = (new, rows)
        result = PushResult(
            self.folder.package, self.folder.registry, new.top_hash, _top(base.revision),
            files=len(new.entries), bytes_uploaded=sum(st.size for st in set_stats.values()),
            duration_ms=int((time.monotonic() - started) * 1000),
            changed_during_push=sorted([*changed, *vanished]), **counts,
        )
        self.log.info("push.completed", top_hash=result.top_hash, parent_top_hash=result.parent_top_hash,
                      added=result.added, modified=result.modified, deleted=result.deleted,
                      files=result.files, bytes_uploaded=result.bytes_uploaded,
                      duration_ms=result.duration_ms, hashed=plan.hashed)
        unpinned = unpinned_keys({lk: new.entries[lk] for lk in uploads if lk in new.entries})
        if unpinned:
            self.log.warning("health.failed", check="manifest_pinned", top_hash=new.top_hash,
                             detail=f"{len(unpinned)} pushed entries have no versionId "
                                    f"(first: {unpinned[0]!r}); this revision cannot be restored exactly")
        if result.changed_during_push:
            self.log.info("push.changed_during_push", paths=result.changed_during_push[:20],
                          count=len(result.changed_during_push))
        return result

    def _no_push(self, base: _Base, scan: Scan, changed: list[str] | None = None) -> PushResult:
        """A pass that published nothing: latest stays the base revision."""
        return PushResult(self.folder.package, self.folder.registry, _top(base.revision),
                          _top(base.revision), files=len(scan.files), changed_during_push=changed or [])

    def _rows_after(self, new: RemoteRevision, base: _Base, plan: Plan, scan: Scan,
                    set_stats: dict[str, FileStat], set_ns: int, recorded_ns: int) -> dict[str, Row]:
        rows: dict[str, Row] = {}
        for lk, entry in new.entries.items():
            if lk in set_stats:
                rows[lk] = Row(set_stats[lk], set_ns, entry)
            elif lk in plan.refresh:
                rows[lk] = Row(scan.files[lk], recorded_ns, entry)
            elif lk in base.rows:
                old = base.rows[lk]
                rows[lk] = Row(old.stat, old.recorded_ns, entry)
        return rows

    def _adopt(self, base: _Base, plan: Plan, scan: Scan, recorded_ns: int) -> None:
        """Nothing to push: record what was learnt (fresh stats, or a registry revision)."""
        rev = base.revision
        if rev is None:
            return
        if base.trusted:
            self.index.refresh_stats(self.folder.package, {
                lk: Row(scan.files[lk], recorded_ns, rev.entries[lk]) for lk in plan.refresh})
            for lk in plan.refresh:
                base.rows[lk] = Row(scan.files[lk], recorded_ns, rev.entries[lk])
            if self._last is not None:
                self._last = (self._last[0], base.rows)
            return
        rows = self._rows_after(rev, base, plan, scan, {}, recorded_ns, recorded_ns)
        previous = self.index.revision(self.folder.package)
        self.index.commit(
            Revision(self.folder.package, self.folder.registry, str(self.folder.path), rev.top_hash,
                     rev.meta, previous.pushed_at if previous else 0.0, scan.root_dev),
            rows, replace_all=True)
        self._last = (rev, rows)
        self.log.info("index.adopted", top_hash=rev.top_hash, files=len(rows))

    def _wait_for_next_second(self) -> None:
        """quilt3 names revision pointers by unix second: two pushes of a package in
        one second would overwrite the first's pointer, hiding it from history."""
        rev = self.index.revision(self.folder.package)
        not_before = max(self._not_before, math.floor(rev.pushed_at) + 1 if rev and rev.pushed_at else 0)
        wait = not_before - self.clock()
        if wait > 0:
            self.sleep(wait)


def _top(rev: RemoteRevision | None) -> str | None:
    return rev.top_hash if rev else None


def _stat_or_none(path: Path) -> FileStat | None:
    try:
        return FileStat.of(os.stat(path))
    except OSError:
        return None


def push_with_retries(
    pusher: FolderPusher,
    *,
    allow_deletes: bool = False,
    attempts: int = 5,
    cap_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> PushResult:
    """One push pass; transient failures are retried with capped exponential backoff.

    Permanent failures (access denied, no such bucket) are reported once and raised.
    """

    for attempt in range(1, attempts + 1):
        try:
            return pusher.push(allow_deletes=allow_deletes)
        except TransientError as e:
            if attempt == attempts:
                pusher.log.error("push.failed", error=str(e), attempt=attempt, retry_in_s=None)
                raise
            delay = min(cap_s, 2.0 ** (attempt - 1))
            pusher.log.warning("push.failed", error=str(e), attempt=attempt, retry_in_s=delay)
            sleep(delay)
        except (PermanentError, PushConflict) as e:
            pusher.log.error("push.failed", error=str(e), attempt=attempt, retry_in_s=None)
            raise
    raise AssertionError("unreachable")

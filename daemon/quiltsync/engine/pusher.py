"""One folder's push pass, as an explicit pipeline.

    resolve a verified base -> scan -> plan -> safety verdict -> upload and
    publish -> commit to the index

1. **Base** (resolved once a pass, verified): the revision this process pushed
   last, if the index still records it as the package's last push (another
   process, say `quiltsync push --allow-deletes`, may have pushed since); else
   the index's rows, checked by recomputing their top_hash; else the registry's
   latest manifest (read from S3, not quilt3's cache). A base is only ever used
   for the registry (endpoint and bucket) it came from.
2. **Scan**: stat only; the whole folder, or only the paths events named.
3. **Plan** (pure, ``core.planner``): added, modified, deleted; hashes only
   where stats cannot decide.
4. **Safety** (pure, ``core.safety``): a mass deletion, an emptied or remounted
   folder is refused and held (recorded in the index until released); a bucket
   without versioning is refused.
5. **Publish**: render the commit message, check name, message and metadata
   against the bucket's workflows config (``remote.workflows``: refused before
   any upload), upload and write the manifest without ``force``; another
   writer's revision makes the pass rebase on it and plan again.
6. **Commit** the index in one transaction, after the registry accepted.

The whole pass holds the package's lock in ``state_dir``, so a `quiltsync push`
and the daemon never push one package at the same time.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quiltsync.config import FolderConfig
from quiltsync.core.manifest import ManifestWriter, revision_meta, top_hash_of
from quiltsync.core.message import MessageValues, render
from quiltsync.core.planner import Plan, hold_back, plan_push
from quiltsync.core.safety import deletion_verdict
from quiltsync.core.types import Entry, FileRecord, FileStat, HashValue, LastPush, PushResult, Revision
from quiltsync.errors import (
    DeletionsHeld,
    NotVersioned,
    PermanentError,
    PushConflict,
    PushRefused,
    SourceChanged,
    TransientError,
    WorkflowRefused,
)
from quiltsync.local import hashing
from quiltsync.local.index import Index
from quiltsync.local.locks import package_lock
from quiltsync.local.memory import gc_paused
from quiltsync.local.scanner import RootUnavailable, Scan, make_ignore_spec, rescan_paths, scan_folder
from quiltsync.local.stillcopy import StillCopies
from quiltsync.logs import get_logger
from quiltsync.remote.registry import Registry, unpinned_keys, version_id_of
from quiltsync.remote.transfer import Progress

__all__ = ["FolderPusher", "PushResult", "push_with_retries"]

MAX_CONFLICT_RETRIES = 5
S3_MAX_KEY_BYTES = 1024
HOT_NS = 2_000_000_000  # modified this recently: maybe still being written
PROGRESS_SECONDS = 5.0  # push.progress at most this often during an upload


@dataclass(slots=True)
class Base:
    """The revision a pass builds on, and what the index knows of the local files."""

    revision: Revision | None
    files: dict[str, FileRecord]
    trusted: bool  # True: this process's or the index's (files = the last scan); False: the registry's
    recorded: LastPush | None  # the index's row for the package, read once a pass

    @property
    def top_hash(self) -> str | None:
        return self.revision.top_hash if self.revision else None


@dataclass(slots=True)
class _Uploads:
    """What the upload step sends: from the folder itself, or from still copies."""

    sources: dict[str, tuple[Path, int]]
    direct: dict[str, Path]
    stats: dict[str, FileStat]
    skipped: list[str]  # vanished, still moving, or copies that could not be taken
    set_ns: int
    reused: dict[str, Entry] = field(default_factory=dict)  # bytes already in the bucket: not uploaded


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
        self._last: Base | None = None  # this process's last revision, trusted while the index agrees
        self._not_before = 0.0  # no push before this unix time (see _wait_for_next_second)
        self._hot: set[str] = set()  # keys that changed during an upload: pushed from still copies
        self._refusal: str | None = None  # the refusal last logged: logged once, until a pass succeeds
        self._writer: ManifestWriter | None = None  # encodes only the entries that changed (core.manifest)
        self._racy: set[str] = set()  # keys of self._last whose recorded stat is racy: looked at every pass
        self.on_progress: Callable[[Progress], None] | None = None  # every upload update (cli push's bar)

    @property
    def state_dir(self) -> Path:
        return self.index.path.parent

    # -- the pass -------------------------------------------------------------------
    def push(self, *, defer_moving: bool = False, paths: Iterable[str] | None = None,
             allow_deletes: bool = False, hold: Iterable[str] = ()) -> PushResult:
        """One pass. ``defer_moving``: a file whose stat changed since the scan (still
        being written) is left for the next pass instead of being pushed half-written.
        ``paths``: the only paths that changed (relative), when the caller knows them.
        ``allow_deletes``: an operator confirmed the deletions the safety checks hold.
        ``hold``: keys to leave as the base has them (files on a share that another
        host is still writing: the poll hands them over once they stood still)."""
        def waiting() -> None:
            self.log.info("push.waiting", detail="another process is pushing this package; waiting for it")

        with package_lock(self.state_dir, self.folder.package, on_wait=waiting):
            result = self._pass(defer_moving, paths, allow_deletes, frozenset(hold))
        if self.folder.package in self.index.holds() and self.index.clear_hold(self.folder.package):
            self.log.info("push.released", detail="the hold on deletions was released by --allow-deletes"
                          if allow_deletes else "the folder recovered; the hold on deletions is released")
        return result

    def _pass(self, defer_moving: bool, paths: Iterable[str] | None, allow_deletes: bool,
              hold: frozenset[str] = frozenset()) -> PushResult:
        started = time.monotonic()
        recorded_ns = time.time_ns()
        with gc_paused():  # allocation-heavy and cycle-free (local/memory.py)
            base = self.resolve_base()
            scan = self.scan(paths)
        for _attempt in range(MAX_CONFLICT_RETRIES + 1):
            files = {k: v for k, v in scan.files.items() if k not in hold} if hold else scan.files
            plan = plan_push(files, base.files, base.revision.entries if base.revision else {},
                             self._hash_file, self._only(scan, base))
            plan = hold_back(plan, hold)  # as the base has them: not added, changed or deleted (nor read) now
            if not plan.changes:
                if base.trusted and self.registry.latest(self.folder.package) != base.top_hash:
                    base = self._rebase(base, "latest moved since our last push; rebasing on it")
                    continue
                if not self._metadata_changed(base):
                    self._adopt(base, plan, scan, recorded_ns)
                    self._refusal = None
                    self.log.info("push.skipped", reason="no changes", files=len(scan.files),
                                  hashed=plan.hashed, duration_ms=_ms_since(started))
                    return self._no_push(base, scan)
            self._check_safe(plan, scan, base, allow_deletes)
            self._check_versioning()
            try:
                return self._upload_and_publish(plan, scan, base, started, recorded_ns, defer_moving)
            except PushConflict as e:
                base = self._rebase(base, str(e))
        raise PushConflict(
            f"{self.folder.package}: `latest` kept moving under {MAX_CONFLICT_RETRIES} retries; "
            "another writer is pushing this package continuously"
        )

    # -- 1. the base ----------------------------------------------------------------------
    def resolve_base(self) -> Base:
        """The verified revision to build on (see the module docstring)."""
        last = self.index.last_push(self.folder.package)
        if last is None:
            return self._remote_base({}, None)
        if last.registry != self.registry.identity or last.folder != str(self.folder.path):
            self.log.warning("index.rebuilt", reason=f"the index was made for {last.registry} and "
                             f"{last.folder}; rebuilding for {self.registry.identity} and {self.folder.path}")
            return self._remote_base({}, last)
        if self._last is not None and last.top_hash == self._last.top_hash:
            return Base(self._last.revision, dict(self._last.files), True, last)
        files = self.index.files(self.folder.package)
        entries = {lk: r.entry for lk, r in files.items()}
        if top_hash_of(last.meta, entries) == last.top_hash:
            return Base(Revision(last.top_hash, last.meta, entries, self.registry.identity), files, True, last)
        self.log.warning("index.rebuilt", reason="index rows do not reproduce their recorded "
                         "top_hash; rebuilding from the registry")
        return self._remote_base({}, last)

    def _remote_base(self, files: dict[str, FileRecord], recorded: LastPush | None) -> Base:
        """The registry's latest, keeping what the index knows of local files."""
        rev = self.registry.latest_revision(self.folder.package)
        self._last = None
        # The other writer's pointer is named by a second <= now: ours must not reuse it.
        self._not_before = math.floor(self.clock()) + 1
        return Base(rev, files, False, recorded)

    def _rebase(self, base: Base, detail: str) -> Base:
        self.log.warning("push.conflict", expected=base.top_hash, detail=detail)
        return self._remote_base(base.files, base.recorded)

    # -- 2. the scan ----------------------------------------------------------------------
    def scan(self, paths: Iterable[str] | None = None) -> Scan:
        """The folder's files: a full scan, or the last scan updated for ``paths`` only."""
        try:
            if paths is not None and self._last is not None:
                previous = {lk: r.stat for lk, r in self._last.files.items()}
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

    def _only(self, scan: Scan, base: Base) -> set[str] | None:
        """The keys a plan must look at: those a rescan touched and the racy ones, when
        the rescan started from the base's own stats (this process's last revision);
        None (every key) after a full scan or on any other base."""
        if scan.touched is None or self._last is None or base.top_hash != self._last.top_hash or not base.trusted:
            return None
        return scan.touched | self._racy

    def _drop_unpushable(self, scan: Scan) -> None:
        """S3 keys are at most 1,024 bytes: a logical key longer than that under the
        package prefix would fail the whole push, so that file is skipped, named."""
        room = S3_MAX_KEY_BYTES - len(self.folder.package.encode()) - 1
        for lk in [lk for lk in scan.files if len(lk.encode()) > room]:
            del scan.files[lk]
            self.log.warning("scan.skipped", path=str(self.folder.path / lk),
                             reason=f"path is longer than S3 allows for a key ({room} bytes here)")

    # -- 3. the plan's callback -------------------------------------------------------------
    def _hash_file(self, lk: str, hash_type: str) -> HashValue | None:
        try:
            return hashing.hash_like(self.folder.path / lk, hash_type)
        except OSError:
            return None

    # -- 4. safety ------------------------------------------------------------------------
    def _check_safe(self, plan: Plan, scan: Scan, base: Base, allow_deletes: bool) -> None:
        """Stop before a push that would drop data by accident; the folder is held."""
        recorded = base.recorded

        def verdict(deleted: list[str]) -> Any:
            return deletion_verdict(
                package=self.folder.package, folder=str(self.folder.path), base_top_hash=base.top_hash,
                base_files=len(base.revision.entries) if base.revision else 0, scanned_files=len(scan.files),
                deleted=deleted, recorded_root_dev=recorded.root_dev if recorded else 0,
                root_dev=scan.root_dev, max_delete_fraction=self.folder.max_delete_fraction,
                allow_deletes=allow_deletes)

        held = verdict(plan.deleted)
        if held is not None and plan.added and base.revision is not None:
            # a renamed folder deletes nothing: its bytes come back under the new names
            moved = self._moved(plan, scan, base.revision.entries)
            if moved:
                held = verdict([k for k in plan.deleted if k not in moved])
        if held is None:
            return
        self.index.set_hold(self.folder.package, held.reason, time.time())
        self._refused(held.reason, deleted=held.deleted, files=held.files)
        raise DeletionsHeld(f"{self.folder.package}: {held.reason}")

    def _moved(self, plan: Plan, scan: Scan, entries: dict[str, Entry]) -> set[str]:
        """Deleted keys whose bytes an added file has (same size and hash): moved, not lost."""
        gone: dict[tuple[int, HashValue], list[str]] = {}
        for lk in plan.deleted:
            e = entries[lk]
            gone.setdefault((e.size, e.hash), []).append(lk)
        sizes = {size for size, _h in gone}
        types = {h.type for _size, h in gone}
        moved: set[str] = set()
        for lk in plan.added:
            size = scan.files[lk].size
            if size not in sizes:
                continue
            for hash_type in types:
                local = self._hash_file(lk, hash_type)
                if local is not None and (size, local) in gone:
                    moved.update(gone[(size, local)])
                    break
        return moved

    def _refused(self, reason: str, **fields: object) -> None:
        """Log ``push.refused`` once per reason: a retry that is refused again for
        the same reason adds nothing to the log."""
        if reason != self._refusal:
            self.log.error("push.refused", reason=reason, **fields)
        self._refusal = reason

    def _check_versioning(self) -> None:
        """Refuse to push to a bucket that does not keep versions (FACTS.md: an old
        top_hash would then silently restore the newest bytes)."""
        bucket = self.folder.bucket
        status = self.registry.versioning()
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
        self._refused(reason)
        raise NotVersioned(f"{self.folder.package}: {reason}")

    def _metadata_changed(self, base: Base) -> bool:
        """``[folder.metadata]`` differs from the latest revision's: worth a revision
        of its own, even when no file changed."""
        if self.folder.metadata is None or base.revision is None:
            return False
        def canonical(v: object) -> str:  # JSON's view: 1, 1.0 and true differ
            return json.dumps(v, sort_keys=True)
        return canonical(base.revision.meta.get("user_meta")) != canonical(self.folder.metadata)

    def _revision_meta(self, base: Base, message: str, uploads: _Uploads, deleted: list[str]) -> dict[str, Any]:
        """The new revision's package metadata, with the stamp of the bucket's
        workflow; WorkflowRefused (before any upload) when the workflow rejects it."""
        meta = revision_meta(base.revision.meta if base.revision else None, self.folder.metadata, None)
        entries = base.revision.entries if base.revision else {}
        gone = set(deleted) | set(uploads.sources) | set(uploads.reused)

        def rows() -> list[tuple[str, int, dict[str, Any]]]:
            out = [(lk, e.size, (e.meta or {}).get("user_meta") or {}) for lk, e in entries.items() if lk not in gone]
            out += [(lk, e.size, {}) for lk, e in uploads.reused.items()]  # renamed or copied: new keys all the same
            return out + [(lk, size, {}) for lk, (_src, size) in uploads.sources.items()]

        try:
            stamp = self.registry.workflow_stamp(self.folder.package, workflow=self.folder.workflow,
                                                 message=message, user_meta=meta.get("user_meta") or {},
                                                 entries=rows)
        except WorkflowRefused as e:
            self._refused(str(e), check="workflow")
            raise WorkflowRefused(f"{self.folder.package}: {e}") from None
        return revision_meta(meta, None, stamp)

    # -- 5. upload and publish ------------------------------------------------------------
    def _upload_and_publish(self, plan: Plan, scan: Scan, base: Base, started: float,
                            recorded_ns: int, defer_moving: bool) -> PushResult:
        copies = StillCopies(self.folder, self.state_dir)
        try:
            uploads = self._sources(plan, scan, defer_moving, copies)
            if not uploads.sources and not plan.deleted and not self._metadata_changed(base):
                # all deferred, vanished or unreadable
                return self._no_push(base, scan, uploads.skipped)
            return self._publish(plan, scan, base, started, recorded_ns, uploads)
        finally:
            copies.clear()

    def _sources(self, plan: Plan, scan: Scan, defer_moving: bool, copies: StillCopies) -> _Uploads:
        """Re-stat each file to upload; files being written go up as still copies."""
        out = _Uploads({}, {}, {}, [], time.time_ns())  # set_ns before the stats: conservative
        for lk in plan.uploads:
            path = self.folder.path / lk
            st = _stat_or_none(path)
            if st is None or (defer_moving and st != scan.files[lk] and lk not in self._hot):
                out.skipped.append(lk)  # vanished, or still being written: next round
                continue
            if not os.access(path, os.R_OK):
                self.log.warning("scan.skipped", path=str(path), reason="permission denied")
                continue
            if lk in self._hot or (not defer_moving and st.mtime_ns > out.set_ns - HOT_NS):
                copy = copies.take(path)
                if copy is None:
                    out.skipped.append(lk)
                    continue
                st, source = copy
            else:
                source = path
                out.direct[lk] = path
            out.sources[lk] = (source, st.size)
            out.stats[lk] = st
        return out

    def _reuse(self, base: Base, uploads: _Uploads) -> None:
        """Renames and copies without uploads: a file whose size and hash equal an
        entry of the base revision gets that entry's physical key and version (quilt3
        entries may point at any object version of the bucket); one local read, no
        upload, and only for files whose size some entry has. The index finds them
        (by size, then hash) while it records the base revision, so this costs what
        changed, not a walk of the entries. Only pinned versions of this registry's
        bucket are reused (an unpinned key would follow later writes). The torn-file
        guard still applies: a file that changes before the publish aborts it, as an
        upload would."""
        rev, recorded = base.revision, base.recorded
        if rev is None or not uploads.sources or recorded is None or recorded.top_hash != rev.top_hash:
            return
        package, prefix = self.folder.package, f"s3://{self.registry.bucket}/"
        for lk, (source, size) in list(uploads.sources.items()):
            if not self.index.has_size(package, size):
                continue
            try:
                local = hashing.chunked_sha256(source)
            except OSError:
                continue  # unreadable now: the upload reports it
            for other, pk in self.index.holding(package, size, local):
                known = rev.entries.get(other)
                if known is not None and known.physical_key == pk and pk.startswith(prefix) \
                        and version_id_of(pk) not in (None, "null"):
                    uploads.reused[lk] = Entry(local, size, pk, None)
                    del uploads.sources[lk]
                    break

    def _progress(self) -> Callable[[Progress], None]:
        """An upload's progress: ``on_progress`` (a terminal's bar) hears every
        update (from upload threads); without one, ``push.progress`` is logged at
        most every PROGRESS_SECONDS, so a short push logs none."""
        lock, hook = threading.Lock(), self.on_progress
        last = [time.monotonic()]

        def report(p: Progress) -> None:
            if hook is not None:  # a terminal's bar shows it: log lines would break the bar
                hook(p)
                return
            now = time.monotonic()
            with lock:
                if now - last[0] < PROGRESS_SECONDS:
                    return
                last[0] = now
            self.log.info("push.progress", bytes_done=p.bytes_done, bytes_total=p.bytes_total,
                          files_done=p.files_done, files_total=p.files_total)
        return report

    def _publish(self, plan: Plan, scan: Scan, base: Base, started: float, recorded_ns: int,
                 uploads: _Uploads) -> PushResult:
        self._reuse(base, uploads)
        setting = uploads.sources.keys() | uploads.reused.keys()
        counts = {"added": sum(k in setting for k in plan.added),
                  "modified": sum(k in setting for k in plan.modified),
                  "deleted": len(plan.deleted)}
        before = base.revision.entries if base.revision else {}
        files = len(before) + sum(k not in before for k in setting) - sum(k in before for k in plan.deleted)
        message = render(self.folder.message, MessageValues(
            socket.gethostname(), self.folder.package, str(self.folder.path), files=files, when=self.clock(),
            **counts))
        meta = self._revision_meta(base, message, uploads, plan.deleted)
        self._wait_for_next_second(base.recorded)
        self.log.info("push.started", uploads=len(uploads.sources), deletes=len(plan.deleted),
                      reused=len(uploads.reused), parent_top_hash=base.top_hash)

        def changed_sources() -> list[str]:
            return sorted(lk for lk, path in uploads.direct.items() if _stat_or_none(path) != uploads.stats[lk])

        if self._writer is None:
            self._writer = self.registry.manifest_writer()
        try:
            published = self.registry.push(self.folder.package, base.revision, uploads.sources, plan.deleted,
                                           message=message, meta=meta, writer=self._writer,
                                           reused=uploads.reused, changed_sources=changed_sources,
                                           progress=self._progress())
        except SourceChanged as e:
            self._hot.update(e.keys)
            self.log.warning("push.aborted", keys=e.keys[:20], count=len(e.keys),
                             detail="files changed while being uploaded; nothing was published; "
                                    "they are pushed from a still copy next round")
            return self._no_push(base, scan, sorted([*e.keys, *uploads.skipped]))
        new = published.revision
        self._hot.difference_update(uploads.sources)
        self._refusal = None
        changed = [lk for lk, st in uploads.stats.items() if _stat_or_none(self.folder.path / lk) != st]
        self._commit(new, base, plan, scan, uploads, recorded_ns)
        result = PushResult(
            self.folder.package, self.folder.registry, new.top_hash, base.top_hash,
            files=len(new.entries), bytes_uploaded=sum(size for _src, size in uploads.sources.values()),
            duration_ms=_ms_since(started), changed_during_push=sorted([*changed, *uploads.skipped]), **counts,
            manifest_bytes=published.manifest_bytes, reused=len(uploads.reused),
        )
        self._report(result, new, uploads, plan.hashed)
        return result

    # -- 6. commit ---------------------------------------------------------------------
    def _commit(self, new: Revision, base: Base, plan: Plan, scan: Scan, uploads: _Uploads,
                recorded_ns: int) -> None:
        last = self._last_push(new, self.clock(), scan.root_dev)
        if base.trusted:
            # base.files are the base revision's entries: only what this push set changes
            upserts = {lk: FileRecord(st, uploads.set_ns, new.entries[lk]) for lk, st in uploads.stats.items()}
            upserts.update({lk: FileRecord(scan.files[lk], recorded_ns, new.entries[lk]) for lk in plan.refresh})
            files = base.files  # resolve_base() made it this pass's own copy
            for lk in plan.deleted:
                files.pop(lk, None)
            files.update(upserts)
            self.index.commit(last, upserts, plan.deleted)
        else:
            files = self._files_after(new, base, plan, scan, uploads.stats, uploads.set_ns, recorded_ns)
            self.index.commit(last, files, replace_all=True)
        self._remember(Base(new, files, True, None), base, [*plan.deleted, *uploads.stats, *plan.refresh]
                       if base.trusted else None)

    def _remember(self, last: Base, base: Base, changed: list[str] | None) -> None:
        """``last`` is this process's revision now; ``changed``: the keys in which it
        differs from ``base`` (None: unknown, recount everything). Keeps the set of
        racy keys up to date at the cost of what changed."""
        previous, self._last = self._last, last
        files = last.files
        if changed is None or previous is None or base.top_hash != previous.top_hash:
            self._racy = self.index.racy_keys(self.folder.package)  # the index records ``files`` now
            return
        self._racy = {lk for lk in (*self._racy, *changed) if lk in files and files[lk].racy}

    def _report(self, result: PushResult, new: Revision, uploads: _Uploads, hashed: int) -> None:
        self.log.info("push.completed", top_hash=result.top_hash, parent_top_hash=result.parent_top_hash,
                      added=result.added, modified=result.modified, deleted=result.deleted,
                      files=result.files, bytes_uploaded=result.bytes_uploaded,
                      duration_ms=result.duration_ms, hashed=hashed, reused=result.reused,
                      manifest_bytes=result.manifest_bytes)
        unpinned = unpinned_keys({lk: new.entries[lk] for lk in uploads.stats if lk in new.entries})
        if unpinned:
            self.log.warning("health.failed", check="manifest_pinned", top_hash=new.top_hash,
                             detail=f"{len(unpinned)} pushed entries have no versionId "
                                    f"(first: {unpinned[0]!r}); this revision cannot be restored exactly")
        if result.changed_during_push:
            self.log.info("push.changed_during_push", paths=result.changed_during_push[:20],
                          count=len(result.changed_during_push))

    def _last_push(self, rev: Revision, pushed_at: float, root_dev: int) -> LastPush:
        return LastPush(self.folder.package, self.registry.identity, str(self.folder.path), rev.top_hash,
                        rev.meta, pushed_at, root_dev)

    def _no_push(self, base: Base, scan: Scan, changed: list[str] | None = None) -> PushResult:
        """A pass that published nothing: latest stays the base revision."""
        return PushResult(self.folder.package, self.folder.registry, base.top_hash, base.top_hash,
                          files=len(scan.files), changed_during_push=changed or [])

    @staticmethod
    def _files_after(new: Revision, base: Base, plan: Plan, scan: Scan, set_stats: dict[str, FileStat],
                     set_ns: int, recorded_ns: int) -> dict[str, FileRecord]:
        files: dict[str, FileRecord] = {}
        for lk, entry in new.entries.items():
            if lk in set_stats:
                files[lk] = FileRecord(set_stats[lk], set_ns, entry)
            elif lk in plan.refresh:
                files[lk] = FileRecord(scan.files[lk], recorded_ns, entry)
            elif lk in base.files:
                old = base.files[lk]
                files[lk] = FileRecord(old.stat, old.recorded_ns, entry)
        return files

    def _adopt(self, base: Base, plan: Plan, scan: Scan, recorded_ns: int) -> None:
        """Nothing to push: record what was learnt (fresh stats, or a registry revision)."""
        rev = base.revision
        if rev is None:
            return
        if base.trusted:
            fresh = {lk: FileRecord(scan.files[lk], recorded_ns, rev.entries[lk]) for lk in plan.refresh}
            self.index.refresh_stats(self.folder.package, fresh)
            base.files.update(fresh)
            self._remember(Base(rev, base.files, True, None), base, list(plan.refresh))
            return
        files = self._files_after(rev, base, plan, scan, {}, recorded_ns, recorded_ns)
        previous = base.recorded
        self.index.commit(self._last_push(rev, previous.pushed_at if previous else 0.0, scan.root_dev),
                          files, replace_all=True)
        self._remember(Base(rev, files, True, None), base, None)
        self.log.info("index.adopted", top_hash=rev.top_hash, files=len(files))

    def _wait_for_next_second(self, last: LastPush | None) -> None:
        """quilt3 names revision pointers by unix second: two pushes of a package in
        one second would overwrite the first's pointer, hiding it from history."""
        not_before = max(self._not_before, math.floor(last.pushed_at) + 1 if last and last.pushed_at else 0)
        wait = not_before - self.clock()
        if wait > 0:
            self.sleep(wait)


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


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

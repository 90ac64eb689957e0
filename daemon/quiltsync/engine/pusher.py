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
4. **Safety** (``engine.gates`` around the pure ``core.safety``): a mass
   deletion, an emptied or remounted folder is refused and held (recorded in the
   index until released); a bucket without versioning is refused.
5. **Publish**: gather what to send (``engine.uploads``: still copies of files
   being written, renames and copies pointed at versions already in the bucket),
   render the commit message, check name, message and metadata against the
   bucket's workflows config (``engine.gates``: refused before any upload),
   upload and write the manifest without ``force``; another writer's revision
   makes the pass rebase on it and plan again.
6. **Commit** the index in one transaction, after the registry accepted.

The whole pass holds the package's lock in ``state_dir``, so a `quiltsync push`
and the daemon never push one package at the same time.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from quiltsync.config import FolderConfig
from quiltsync.core.manifest import ManifestWriter, top_hash_of
from quiltsync.core.message import MessageValues, render
from quiltsync.core.planner import Plan, hold_back, plan_push
from quiltsync.core.types import FileRecord, FileStat, HashValue, LastPush, PushResult, Revision
from quiltsync.engine.gates import Gates
from quiltsync.engine.uploads import Uploads, changed_since_stat, gather, progress_reporter, reuse_known
from quiltsync.errors import (
    PermanentError,
    PushConflict,
    PushRefused,
    SourceChanged,
    TransientError,
)
from quiltsync.local import hashing
from quiltsync.local.index import Index
from quiltsync.local.locks import package_lock
from quiltsync.local.memory import gc_paused
from quiltsync.local.scanner import RootUnavailable, Scan, make_ignore_spec, rescan_paths, scan_folder, stat_or_none
from quiltsync.local.stillcopy import StillCopies
from quiltsync.logs import get_logger
from quiltsync.remote.registry import Registry, unpinned_keys
from quiltsync.remote.transfer import Progress

__all__ = ["FolderPusher", "PushResult", "push_with_retries"]

MAX_CONFLICT_RETRIES = 5
S3_MAX_KEY_BYTES = 1024


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
        self.gates = Gates(folder, index, self.registry, self.log)  # refused before any upload (engine/gates.py)
        self._last: Base | None = None  # this process's last revision, trusted while the index agrees
        self._not_before = 0.0  # no push before this unix time (see _wait_for_next_second)
        self._hot: set[str] = set()  # keys that changed during an upload: pushed from still copies
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
                if not self.gates.metadata_changed(base.revision):
                    self._adopt(base, plan, scan, recorded_ns)
                    self.gates.passed()
                    self.log.info("push.skipped", reason="no changes", files=len(scan.files),
                                  hashed=plan.hashed, duration_ms=_ms_since(started))
                    return self._no_push(base, scan)
            self.gates.deletions(plan, scan, base.revision, base.recorded, allow_deletes, self._hash_file)
            self.gates.versioning()
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

    # -- 5. upload and publish ------------------------------------------------------------
    def _upload_and_publish(self, plan: Plan, scan: Scan, base: Base, started: float,
                            recorded_ns: int, defer_moving: bool) -> PushResult:
        copies = StillCopies(self.folder, self.state_dir)
        try:
            uploads = gather(self.folder.path, plan.uploads, scan.files, defer_moving=defer_moving,
                             hot=self._hot, copies=copies, log=self.log)
            if not uploads.sources and not plan.deleted and not self.gates.metadata_changed(base.revision):
                # all deferred, vanished or unreadable
                return self._no_push(base, scan, uploads.skipped)
            return self._publish(plan, scan, base, started, recorded_ns, uploads)
        finally:
            copies.clear()

    def _publish(self, plan: Plan, scan: Scan, base: Base, started: float, recorded_ns: int,
                 uploads: Uploads) -> PushResult:
        reuse_known(uploads, self.index, self.folder.package, self.registry.bucket, base.revision, base.recorded)
        setting = uploads.sources.keys() | uploads.reused.keys()
        counts = {"added": sum(k in setting for k in plan.added),
                  "modified": sum(k in setting for k in plan.modified),
                  "deleted": len(plan.deleted)}
        before = base.revision.entries if base.revision else {}
        files = len(before) + sum(k not in before for k in setting) - sum(k in before for k in plan.deleted)
        message = render(self.folder.message, MessageValues(
            socket.gethostname(), self.folder.package, str(self.folder.path), files=files, when=self.clock(),
            **counts))
        meta = self.gates.revision_meta(base.revision, message, uploads, plan.deleted)
        self._wait_for_next_second(base.recorded)
        self.log.info("push.started", uploads=len(uploads.sources), deletes=len(plan.deleted),
                      reused=len(uploads.reused), parent_top_hash=base.top_hash)

        if self._writer is None:
            self._writer = self.registry.manifest_writer()
        try:
            published = self.registry.push(self.folder.package, base.revision, uploads.sources, plan.deleted,
                                           message=message, meta=meta, writer=self._writer,
                                           reused=uploads.reused, changed_sources=lambda: changed_since_stat(uploads),
                                           progress=progress_reporter(self.on_progress, self.log))
        except SourceChanged as e:
            self._hot.update(e.keys)
            self.log.warning("push.aborted", keys=e.keys[:20], count=len(e.keys),
                             detail="files changed while being uploaded; nothing was published; "
                                    "they are pushed from a still copy next round")
            return self._no_push(base, scan, sorted([*e.keys, *uploads.skipped]))
        new = published.revision
        self._hot.difference_update(uploads.sources)
        self.gates.passed()
        changed = [lk for lk, st in uploads.stats.items() if stat_or_none(self.folder.path / lk) != st]
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
    def _commit(self, new: Revision, base: Base, plan: Plan, scan: Scan, uploads: Uploads,
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

    def _report(self, result: PushResult, new: Revision, uploads: Uploads, hashed: int) -> None:
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

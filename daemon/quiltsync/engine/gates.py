"""The gates of a push pass: what stops it before any byte is uploaded.

Step 4 of ``engine.pusher``'s pipeline (the safety verdict: a mass deletion, an
emptied or remounted folder is refused and held; a bucket without versioning is
refused) and the workflow part of step 5 (the bucket's workflows config checks
the package name, the rendered message and the metadata). Each refusal is logged
as ``push.refused`` once per reason, however often the pass is retried, until a
pass gets through.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from quiltsync.config import FolderConfig
from quiltsync.core.manifest import revision_meta
from quiltsync.core.planner import Plan
from quiltsync.core.safety import Held, deletion_verdict, moved_keys
from quiltsync.core.types import HashValue, LastPush, Revision
from quiltsync.engine.uploads import Uploads
from quiltsync.errors import DeletionsHeld, NotVersioned, WorkflowRefused
from quiltsync.local.index import Index
from quiltsync.local.scanner import Scan
from quiltsync.remote.registry import Registry


class Gates:
    def __init__(self, folder: FolderConfig, index: Index, registry: Registry, log: Any) -> None:
        self.folder = folder
        self.index = index
        self.registry = registry
        self.log = log
        self._refusal: str | None = None  # the refusal last logged: logged once, until a pass succeeds

    def passed(self) -> None:
        """A pass got through (published, or found nothing to push): log the next refusal again."""
        self._refusal = None

    def refused(self, reason: str, **fields: object) -> None:
        """Log ``push.refused`` once per reason: a retry that is refused again for
        the same reason adds nothing to the log."""
        if reason != self._refusal:
            self.log.error("push.refused", reason=reason, **fields)
        self._refusal = reason

    def deletions(self, plan: Plan, scan: Scan, rev: Revision | None, recorded: LastPush | None,
                  allow_deletes: bool, hash_file: Callable[[str, str], HashValue | None]) -> None:
        """Stop before a push that would drop data by accident; the folder is held."""

        def verdict(deleted: list[str]) -> Held | None:
            return deletion_verdict(
                package=self.folder.package, folder=str(self.folder.path),
                base_top_hash=rev.top_hash if rev else None,
                base_files=len(rev.entries) if rev else 0, scanned_files=len(scan.files),
                deleted=deleted, recorded_root_dev=recorded.root_dev if recorded else 0,
                root_dev=scan.root_dev, max_delete_fraction=self.folder.max_delete_fraction,
                allow_deletes=allow_deletes)

        held = verdict(plan.deleted)
        if held is not None and plan.added and rev is not None:
            # a renamed folder deletes nothing: its bytes come back under the new names
            moved = moved_keys(plan.deleted, plan.added, rev.entries, lambda lk: scan.files[lk].size, hash_file)
            if moved:
                held = verdict([k for k in plan.deleted if k not in moved])
        if held is None:
            return
        self.index.set_hold(self.folder.package, held.reason, time.time())
        self.refused(held.reason, deleted=held.deleted, files=held.files)
        raise DeletionsHeld(f"{self.folder.package}: {held.reason}")

    def versioning(self) -> None:
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
        self.refused(reason)
        raise NotVersioned(f"{self.folder.package}: {reason}")

    def metadata_changed(self, rev: Revision | None) -> bool:
        """``[folder.metadata]`` differs from the latest revision's: worth a revision
        of its own, even when no file changed."""
        if self.folder.metadata is None or rev is None:
            return False

        def canonical(v: object) -> str:  # JSON's view: 1, 1.0 and true differ
            return json.dumps(v, sort_keys=True)
        return canonical(rev.meta.get("user_meta")) != canonical(self.folder.metadata)

    def revision_meta(self, rev: Revision | None, message: str, uploads: Uploads,
                      deleted: list[str]) -> dict[str, Any]:
        """The new revision's package metadata, with the stamp of the bucket's
        workflow; WorkflowRefused (before any upload) when the workflow rejects it."""
        meta = revision_meta(rev.meta if rev else None, self.folder.metadata, None)
        entries = rev.entries if rev else {}
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
            self.refused(str(e), check="workflow")
            raise WorkflowRefused(f"{self.folder.package}: {e}") from None
        return revision_meta(meta, None, stamp)

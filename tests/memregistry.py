"""An in-memory registry with ``Registry``'s interface, for decision tests only.

The push path itself is always tested against the real local S3 (moto); this
fake lets the daemon's scheduling and state be driven in-process with a fake
clock. It keeps object versions and revisions like S3 and quilt3 would:
uploads get a new versionId, a push whose base is not `latest` conflicts, and
top_hashes are quilt3's (``core.manifest.top_hash_of``).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from quiltsync.core.manifest import top_hash_of
from quiltsync.core.types import Entry, Revision
from quiltsync.errors import PushConflict
from quiltsync.local.hashing import chunked_sha256


class MemoryRegistry:
    def __init__(self, url: str = "s3://memory", endpoint: str = "memory://one") -> None:
        self.url = url
        self.bucket = url[len("s3://"):]
        self.identity = f"{url} at {endpoint}"
        self.objects: dict[tuple[str, str], bytes] = {}
        self.revisions: dict[str, Revision] = {}
        self.pointers: dict[str, str] = {}  # package -> latest top_hash
        self.pushes: list[Revision] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def latest(self, name: str) -> str | None:
        return self.pointers.get(name)

    def revision(self, name: str, top_hash: str) -> Revision:
        return self.revisions[top_hash]

    def latest_revision(self, name: str) -> Revision | None:
        top = self.latest(name)
        return None if top is None else self.revisions[top]

    def versioning(self) -> str | None:
        return "Enabled"

    def workflow_stamp(self, name: str, **_: object) -> dict | None:
        return None  # a bucket without a workflows config

    def push(self, name: str, base: Revision | None, uploads: Mapping[str, tuple[Path, int]],
             deletes: list[str], *, message: str | None, meta: Mapping[str, object],
             changed_sources: Callable[[], list[str]] | None = None) -> Revision:
        with self._lock:
            if self.pointers.get(name) != (base.top_hash if base else None):
                raise PushConflict(f"{name}: latest moved")
            entries = {lk: e for lk, e in (base.entries if base else {}).items() if lk not in deletes}
            for lk, (path, size) in uploads.items():
                vid = f"v{next(self._ids)}"
                self.objects[(f"{name}/{lk}", vid)] = Path(path).read_bytes()[:size]
                entries[lk] = Entry(chunked_sha256(path), size, f"s3://{self.bucket}/{name}/{lk}?versionId={vid}")
            header = {**meta, "message": message}
            rev = Revision(top_hash_of(header, entries), header, entries, self.identity)
            self.revisions[rev.top_hash] = rev
            self.pointers[name] = rev.top_hash
            self.pushes.append(rev)
            return rev

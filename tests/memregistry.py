"""An in-memory registry with ``Registry``'s interface, for decision tests only.

The push path itself is always tested against the real local S3 (moto); this
fake lets the daemon's scheduling and state be driven in-process with a fake
clock. It keeps object versions and revisions like S3 and quilt3 would:
uploads get a new versionId, a push whose base is not `latest` conflicts, and
top_hashes and manifests are quilt3's (``core.manifest.ManifestWriter``).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from quiltsync.core.manifest import ManifestWriter
from quiltsync.core.types import Entry, Revision
from quiltsync.errors import PushConflict
from quiltsync.local.hashing import chunked_sha256
from quiltsync.remote.registry import Published


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
        self.manifest_bytes_override = 0  # report manifests this large (pacing tests); 0: their real size

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

    @staticmethod
    def manifest_writer() -> ManifestWriter:
        return ManifestWriter()

    def push(self, name: str, base: Revision | None, uploads: Mapping[str, tuple[Path, int]],
             deletes: Collection[str], *, message: str | None, meta: Mapping[str, object],
             writer: ManifestWriter, reused: Mapping[str, Entry] | None = None,
             changed_sources: Callable[[], list[str]] | None = None,
             progress: Callable[[object], None] | None = None) -> Published:
        with self._lock:
            if self.pointers.get(name) != (base.top_hash if base else None):
                raise PushConflict(f"{name}: latest moved")
            entries = {lk: e for lk, e in (base.entries if base else {}).items() if lk not in deletes}
            entries.update(reused or {})
            for lk, (path, size) in uploads.items():
                vid = f"v{next(self._ids)}"
                self.objects[(f"{name}/{lk}", vid)] = Path(path).read_bytes()[:size]
                entries[lk] = Entry(chunked_sha256(path), size, f"s3://{self.bucket}/{name}/{lk}?versionId={vid}")
            header = {**meta, "message": message}
            built = writer.build(header, entries)
            rev = Revision(built.top_hash, header, entries, self.identity)
            self.revisions[rev.top_hash] = rev
            self.pointers[name] = rev.top_hash
            self.pushes.append(rev)
            return Published(rev, self.manifest_bytes_override or built.size)

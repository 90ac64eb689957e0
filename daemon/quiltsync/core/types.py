"""The values quiltsync passes between its layers, one name per concept.

Frozen, slotted dataclasses; no I/O. The index, the registry boundary, the
planner and the push pipeline all speak these:

- ``FileStat``: what a scan sees of a file (size, mtime, inode);
- ``HashValue``: a content hash as quilt3 writes it into a manifest;
- ``Entry``: one manifest entry (hash, size, physical key with versionId, metadata);
- ``Revision``: a package revision (top_hash, package metadata, entries) and the
  registry it lives in;
- ``FileRecord``: one file as the index remembers it: the stat it had when it
  was pushed and the entry it became;
- ``LastPush``: what the index recorded about a package's last revision;
- ``PushResult``: what one push pass did.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

# The racy window: a stat is trusted only for files whose mtime is older than the
# moment it was recorded by more than the filesystem's timestamp granularity.
# ext4, xfs, btrfs, tmpfs stamp with the kernel's coarse clock (one tick, 1-10 ms);
# filesystems with whole-second stamps (FAT: 2 s, HFS+, ext3: 1 s) show it as
# mtimes with no nanoseconds, and get the wide window.
RACY_NS = 2_000_000_000
FINE_RACY_NS = 100_000_000


def is_racy(mtime_ns: int, recorded_ns: int) -> bool:
    """Whether a stat recorded at ``recorded_ns`` could hide a same-size write."""
    window = RACY_NS if mtime_ns % 1_000_000_000 == 0 else FINE_RACY_NS
    return mtime_ns + window >= recorded_ns


@dataclass(frozen=True, slots=True)
class FileStat:
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStat:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass(frozen=True, slots=True)
class HashValue:
    type: str
    value: str

    def as_manifest(self) -> dict[str, str]:
        return {"type": self.type, "value": self.value}


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a revision's manifest."""

    hash: HashValue
    size: int
    physical_key: str  # s3://bucket/key?versionId=...
    meta: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Revision:
    """A package revision as its manifest has it, and the registry it lives in.

    ``registry`` is the registry's identity (endpoint and bucket, see
    ``remote.settings.S3Settings.identity``): entries are only valid there.
    """

    top_hash: str
    meta: dict[str, Any]
    entries: dict[str, Entry]
    registry: str = ""


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One file as pushed: the stat it had and the entry it became."""

    stat: FileStat
    recorded_ns: int  # wall clock when the stat was taken
    entry: Entry

    # the planner's view of a known file (see planner.Known)
    @property
    def hash(self) -> HashValue:
        return self.entry.hash

    @property
    def racy(self) -> bool:
        return is_racy(self.stat.mtime_ns, self.recorded_ns)


@dataclass(frozen=True, slots=True)
class LastPush:
    """What the index recorded about a package's last revision."""

    package: str
    registry: str  # identity: endpoint and bucket
    folder: str
    top_hash: str
    meta: dict[str, Any]
    pushed_at: float
    root_dev: int = 0


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
    manifest_bytes: int = 0  # the size of the manifest this push wrote
    reused: int = 0  # files whose bytes were already in the bucket (renames, copies): not uploaded

    @property
    def pushed(self) -> bool:
        return self.top_hash is not None and self.top_hash != self.parent_top_hash

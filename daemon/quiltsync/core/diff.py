"""What changed between two revisions, and when a path changed: pure.

Entries are compared by content, not by how it was hashed: quilt3 manifests use
three hash types (``SHA256``, the default ``sha2-256-chunked``, ``CRC64NVME``),
so a revision rebuilt by another tool may hash unchanged files differently.
``same_content`` decides what the entries alone can decide:

- the same physical key with the same versionId is the same bytes;
- different sizes are different bytes;
- equal hash types compare their values;
- ``SHA256`` against ``sha2-256-chunked`` for a file of one part (up to 8 MiB):
  the chunked hash of one part is base64(sha256(sha256(bytes))), derived from
  the plain one;
- empty files are equal whatever their hash type.

Anything else (a multi-part file hashed both ways, CRC64NVME against SHA-256) is
``None``: the caller reads the bytes and hashes them the other way.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from quiltsync.core.types import Entry

SHA256 = "SHA256"
CHUNKED = "sha2-256-chunked"
ONE_PART = 8 * 1024 * 1024  # quilt3's first part size: files up to this have one part

ADDED, MODIFIED, DELETED = "A", "M", "D"


@dataclass(frozen=True, slots=True, order=True)
class Change:
    key: str
    kind: str  # A | M | D

    def line(self) -> str:
        return f"{self.kind} {self.key}"


def _pinned(physical_key: str) -> bool:
    """The URL names one object version (not none, not the overwritable "null")."""
    _url, _sep, query = physical_key.partition("?")
    vids = [p[len("versionId="):] for p in query.split("&") if p.startswith("versionId=")]
    return bool(vids) and vids[0] not in ("", "null")


def _chunked_of_sha256(hex_digest: str) -> str | None:
    try:
        return base64.b64encode(hashlib.sha256(bytes.fromhex(hex_digest)).digest()).decode()
    except ValueError:
        return None


def same_content(a: Entry, b: Entry) -> bool | None:
    """Whether two entries hold the same bytes; None when the entries cannot tell."""
    if a.size != b.size:
        return False
    if a.hash.type == b.hash.type:
        return a.hash.value == b.hash.value
    if a.physical_key == b.physical_key and _pinned(a.physical_key):
        return True
    if a.size == 0:
        return True
    if {a.hash.type, b.hash.type} == {SHA256, CHUNKED} and 0 < a.size <= ONE_PART:
        plain, chunked = (a, b) if a.hash.type == SHA256 else (b, a)
        return _chunked_of_sha256(plain.hash.value) == chunked.hash.value
    return None


def diff_entries(old: Mapping[str, Entry], new: Mapping[str, Entry],
                 same: Callable[[str, Entry, Entry], bool] | None = None) -> list[Change]:
    """The changes from ``old`` to ``new``, sorted by key. ``same(key, a, b)`` decides
    what ``same_content`` cannot (it reads bytes); without it such keys count as
    modified."""
    out = [Change(k, DELETED) for k in old if k not in new]
    for k, e in new.items():
        before = old.get(k)
        if before is None:
            out.append(Change(k, ADDED))
            continue
        verdict = same_content(before, e)
        if verdict is None:
            verdict = same(k, before, e) if same is not None else False
        if not verdict:
            out.append(Change(k, MODIFIED))
    return sorted(out)


def counts(changes: Iterable[Change]) -> dict[str, int]:
    out = {"added": 0, "modified": 0, "deleted": 0}
    names = {ADDED: "added", MODIFIED: "modified", DELETED: "deleted"}
    for c in changes:
        out[names[c.kind]] += 1
    return out


def under(key: str, path: str) -> bool:
    """Whether logical key ``key`` is ``path`` or lies in the folder ``path``."""
    path = path.strip("/")
    return not path or key == path or key.startswith(path + "/")

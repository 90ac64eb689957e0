"""Local file hashes in the formats quilt3 manifests use.

``sha2-256-chunked`` (quilt3's default since 6.x): SHA-256 of each 8 MiB part
(the part size doubles past 10,000 parts), then SHA-256 over the concatenated part
digests, base64. An empty file hashes to base64(sha256(b"")). This equals S3's
composite multipart SHA-256, which is what lets quilt3 take hashes from S3.
``SHA256`` (legacy manifests): hex SHA-256 of the whole file.
"""

from __future__ import annotations

import hashlib
import os

from quiltsync.core.quilthash import CHUNKED, LEGACY, PART_SIZE, chunked, part_size
from quiltsync.core.types import HashValue

__all__ = ["CHUNKED", "LEGACY", "PART_SIZE", "chunked_sha256", "hash_like", "legacy_sha256", "part_size"]
_READ = 1024 * 1024


def chunked_sha256(path: str | os.PathLike[str]) -> HashValue:
    """quilt3's sha2-256-chunked hash of a local file, read once, in 1 MiB reads."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        psize = part_size(size)
        digests: list[bytes] = []
        remaining = size
        while remaining > 0:
            h = hashlib.sha256()
            left = min(psize, remaining)
            while left > 0:
                block = f.read(min(_READ, left))
                if not block:
                    raise OSError(f"{path}: file shrank while it was being hashed")
                h.update(block)
                left -= len(block)
            remaining -= min(psize, remaining)
            digests.append(h.digest())
    return chunked(digests)  # no parts (empty file): sha256(b"")


def legacy_sha256(path: str | os.PathLike[str]) -> HashValue:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_READ), b""):
            h.update(block)
    return HashValue(LEGACY, h.hexdigest())


def hash_like(path: str | os.PathLike[str], expected_type: str) -> HashValue | None:
    """Hash a file the way a manifest entry of ``expected_type`` was hashed, if we know how."""
    if expected_type == CHUNKED:
        return chunked_sha256(path)
    if expected_type == LEGACY:
        return legacy_sha256(path)
    return None

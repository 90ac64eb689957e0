"""quilt3's ``sha2-256-chunked`` hash, from part digests (pure; local/hashing.py reads
files, remote/transfer.py hashes the parts it sends).

SHA-256 of each part (8 MiB, doubled while a file would have more than 10,000
parts: quilt3's ``get_checksum_chunksize``), then SHA-256 over the concatenated
part digests, base64. An empty file has no parts: base64(sha256(b"")). This equals
S3's composite multipart SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Sequence

from quiltsync.core.types import HashValue

PART_SIZE = 8 * 1024 * 1024
MAX_PARTS = 10_000
CHUNKED = "sha2-256-chunked"
LEGACY = "SHA256"  # hex SHA-256 of the whole file (older manifests)


def part_size(file_size: int) -> int:
    size = PART_SIZE
    while math.ceil(file_size / size) > MAX_PARTS:
        size *= 2
    return size


def chunked(part_digests: Sequence[bytes]) -> HashValue:
    """The hash of a file from its parts' SHA-256 digests, in order."""
    return HashValue(CHUNKED, base64.b64encode(hashlib.sha256(b"".join(part_digests)).digest()).decode())

"""quilt3's top_hash, computed from values (no quilt3 import: this is pure)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from quiltsync.core.types import Entry

__all__ = ["top_hash_of"]


def top_hash_of(meta: dict[str, Any], entries: Mapping[str, Entry]) -> str:
    """The top_hash quilt3 8.0 computes for this metadata and these entries.

    Written out (not by building a quilt3.Package, which costs ~40 us an entry):
    sha256 over the package metadata, then over each entry's hash, logical key,
    metadata and size, in quilt3's walk order (children sorted at each level,
    which is the order of the keys' path components). A test checks it against
    quilt3's own for nested and unicode keys.
    """
    encode = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
    h = hashlib.sha256(encode(meta).encode())
    for lk in sorted(entries, key=lambda k: k.split("/")):
        e = entries[lk]
        h.update(encode({"hash": e.hash.as_manifest(), "logical_key": lk,
                         "meta": e.meta or {}, "size": e.size}).encode())
    return h.hexdigest()

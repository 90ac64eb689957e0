"""quilt3's top_hash, computed from values (no quilt3 import: this is pure)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from quiltsync.core.types import Entry, HashValue

__all__ = ["ManifestError", "parse_manifest", "revision_meta", "top_hash_of"]


def revision_meta(base_meta: Mapping[str, Any] | None, user_meta: dict[str, Any] | None,
                  workflow: dict[str, Any] | None) -> dict[str, Any]:
    """The package metadata of a new revision (without its message, set per push).

    ``user_meta`` None keeps the base revision's (a folder without
    ``[folder.metadata]`` leaves metadata set by others alone); the workflow stamp
    is this push's, as quilt3 writes it (none: no ``workflow`` key). Other header
    keys of the base are kept, as quilt3 keeps them.
    """
    meta = {k: v for k, v in (base_meta or {}).items() if k not in ("message", "workflow")}
    meta.setdefault("version", "v0")
    if user_meta is not None:
        meta["user_meta"] = user_meta
    if workflow is not None:
        meta["workflow"] = workflow
    return meta


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


class ManifestError(ValueError):
    """Bytes that are not a quilt3 manifest, or not the one they were asked for."""


def parse_manifest(data: bytes, top_hash: str | None = None) -> tuple[dict[str, Any], dict[str, Entry]]:
    """(package metadata, entries) of a quilt3 manifest (JSON lines), as quilt3's
    ``Package.load`` reads it: the first line is the package metadata, each
    further line an entry; lines without physical keys (directory metadata, which
    quilt3 leaves out of the top_hash) are skipped.

    With ``top_hash``, the content must hash to it (ManifestError otherwise).
    About 8x faster than ``Package.load``, which builds a tree of objects.
    """
    lines = data.splitlines()
    try:
        meta = json.loads(lines[0]) if lines else None
        if not isinstance(meta, dict):
            raise ManifestError("the first line is not the package metadata")
        meta.pop("top_hash", None)  # obsolete, as quilt3 drops it
        entries: dict[str, Entry] = {}
        for line in lines[1:]:
            if not line.strip():
                continue
            obj = json.loads(line)
            pks = obj.get("physical_keys")
            if not pks:
                continue
            lk = obj["logical_key"]
            if lk in entries:
                raise ManifestError(f"duplicate logical key {lk!r}")
            h = obj["hash"]
            entries[lk] = Entry(HashValue(h["type"], h["value"]), int(obj["size"]), pks[0], obj.get("meta") or None)
    except (ValueError, KeyError, TypeError) as e:
        if isinstance(e, ManifestError):
            raise
        raise ManifestError(f"not a quilt3 manifest: {type(e).__name__}: {e}") from None
    if top_hash is not None and top_hash_of(meta, entries) != top_hash:
        raise ManifestError(f"the manifest does not hash to {top_hash}")
    return meta, entries

"""quilt3's manifests and top_hashes, read and written from values (no quilt3 import:
this is pure)."""

from __future__ import annotations

import bisect
import hashlib
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any

from quiltsync.core.types import Entry, HashValue

__all__ = ["Built", "ManifestError", "ManifestWriter", "parse_manifest", "revision_meta", "top_hash_of", "walk_key"]


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
    h = hashlib.sha256(_CANON(meta).encode())
    for lk in sorted(entries, key=walk_key):
        h.update(canonical(lk, entries[lk]))
    return h.hexdigest()


def plain(e: Entry) -> bool:
    """Whether an entry's canonical form can be written without a JSON encoder: no
    metadata, and a hash type and value that need no escaping (every hash quilt3
    writes: base64 or hex)."""
    return not e.meta and type(e.size) is int and _PLAIN_HASH.fullmatch(e.hash.type) is not None \
        and _PLAIN_HASH.fullmatch(e.hash.value) is not None


def canonical(lk: str, e: Entry) -> bytes:
    """An entry as quilt3's top hash encodes it (sorted keys, compact, ASCII)."""
    return _plain_canonical(lk, e) if plain(e) else _json_canonical(lk, e)


def _json_canonical(lk: str, e: Entry) -> bytes:
    return _CANON({"hash": e.hash.as_manifest(), "logical_key": lk, "meta": e.meta or {}, "size": e.size}).encode()


def _plain_canonical(lk: str, e: Entry) -> bytes:
    h = e.hash
    return (f'{{"hash":{{"type":"{h.type}","value":"{h.value}"}},"logical_key":{encode_basestring_ascii(lk)},'
            f'"meta":{{}},"size":{e.size}}}').encode()


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
            entries[lk] = Entry(HashValue(sys.intern(h["type"]), h["value"]), int(obj["size"]), pks[0],
                                obj.get("meta") or None)
    except (ValueError, KeyError, TypeError) as e:
        if isinstance(e, ManifestError):
            raise
        raise ManifestError(f"not a quilt3 manifest: {type(e).__name__}: {e}") from None
    if top_hash is not None and top_hash_of(meta, entries) != top_hash:
        raise ManifestError(f"the manifest does not hash to {top_hash}")
    return meta, entries


# -- writing manifests ------------------------------------------------------------------
_LINE = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode  # quilt3's Package._dump
_CANON = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode  # quilt3's _calculate_top_hash
_PLAIN_HASH = re.compile(r"[A-Za-z0-9+/=_.-]*")  # no JSON escaping needed
MAX_RECORD_BYTES = 1_000_000  # quilt3's DEFAULT_MANIFEST_MAX_RECORD_SIZE


def walk_key(lk: str) -> str:
    """quilt3's walk order: children sorted by name at each level of the tree. The
    same order as comparing the lists of path components, cheaper: "/" becomes a
    character below any that a name can hold."""
    return lk.replace("/", "\x00")


@dataclass(frozen=True, slots=True)
class Built:
    """A revision's top_hash and its manifest, byte for byte as quilt3 8.0 writes it,
    as the lines the writer keeps (joined, a manifest is one more copy of them all)."""

    top_hash: str
    parts: list[bytes]

    @property
    def size(self) -> int:
        return sum(map(len, self.parts))

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)


class ManifestWriter:
    """Builds the manifests and top_hashes of one package's revisions, re-encoding only
    the entries that changed since the last build.

    quilt3 (``Package._push``) rebuilds a tree of objects from every entry, encodes
    every entry twice (its manifest line and its canonical form for the top hash)
    and sorts them, for every revision: ~40 us an entry whatever changed. Here each
    entry's manifest line is kept with the Entry it was made from; a build checks
    entries by identity (then equality), encodes the new ones, keeps the walk order
    up to date by bisection, joins the cached lines and hashes canonical forms made
    by string formatting (``plain`` entries: ~0.3 us each; others are cached too).
    About 300 bytes of memory an entry.

    Output equals quilt3's: header line (the package metadata as given, in its key
    order), then one line per entry in walk order: ``{"logical_key", "physical_keys",
    "size", "hash", "meta"}`` by ``json.JSONEncoder(ensure_ascii=False,
    allow_nan=False)``, each line ending in a newline. Directory metadata lines
    (which quilt3 leaves out of the top_hash, and quiltsync never sets) are not
    written. Tests compare both with quilt3's own over generated packages.
    """

    def __init__(self, max_record_bytes: int = MAX_RECORD_BYTES) -> None:
        self.max_record_bytes = max_record_bytes
        # lk -> (entry, line, canonical form if it is not plain: see ``plain``)
        self._cache: dict[str, tuple[Entry, bytes, bytes | None]] = {}
        self._order: list[str] = []  # the cache's keys in walk order

    def __len__(self) -> int:
        return len(self._cache)

    def build(self, meta: Mapping[str, Any], entries: Mapping[str, Entry]) -> Built:
        """The manifest and top_hash of a revision with this package metadata (with
        its ``message`` and ``workflow``, in the order quilt3 writes them) and these
        entries. ManifestError when a record is too large for quilt3's limit, or a
        value is not JSON (NaN)."""
        self._sync(entries)
        header = self._encode_header(meta)
        cache, order = self._cache, self._order
        top = hashlib.sha256(_CANON(meta).encode())
        update = top.update
        for lk in order:  # canonical forms are made as they are hashed: nearly all are plain
            e, _line, canon = cache[lk]
            update(canon if canon is not None else _plain_canonical(lk, e))
        return Built(top.hexdigest(), [header, *(cache[lk][1] for lk in order)])

    def _sync(self, entries: Mapping[str, Entry]) -> None:
        """Bring the cache and the order to ``entries``; all or nothing (a ManifestError
        leaves both as they were)."""
        cache = self._cache
        fresh: dict[str, tuple[Entry, bytes, bytes | None]] = {}
        for lk, e in entries.items():
            hit = cache.get(lk)
            if hit is None or (hit[0] is not e and hit[0] != e):
                fresh[lk] = (e, *self._encode(lk, e))  # raises before anything changed
        if cache.keys() != entries.keys():
            gone = cache.keys() - entries.keys()
            new = entries.keys() - cache.keys()
            for lk in gone:
                del cache[lk]
            if len(gone) + len(new) > len(entries) // 16:
                self._order = sorted(entries, key=walk_key)
            else:
                for lk in gone:
                    del self._order[bisect.bisect_left(self._order, walk_key(lk), key=walk_key)]
                for lk in new:
                    bisect.insort(self._order, lk, key=walk_key)
        cache.update(fresh)

    def _encode(self, lk: str, e: Entry) -> tuple[bytes, bytes | None]:
        meta = e.meta or {}
        h = e.hash.as_manifest()
        try:
            line = (_LINE({"logical_key": lk, "physical_keys": [e.physical_key], "size": e.size,
                           "hash": h, "meta": meta}) + "\n").encode()
            canon = None if plain(e) else _json_canonical(lk, e)
        except ValueError as err:
            raise ManifestError(f"entry {lk!r}: {err}") from None
        if len(line) - 1 > self.max_record_bytes:
            raise ManifestError(f"the manifest record of {lk!r} is {len(line) - 1} bytes; quilt3 allows at most "
                                f"{self.max_record_bytes} (QUILT_MANIFEST_MAX_RECORD_SIZE): its metadata is too large")
        return line, canon

    def _encode_header(self, meta: Mapping[str, Any]) -> bytes:
        try:
            line = _LINE(dict(meta)).encode()
        except ValueError as err:
            raise ManifestError(f"package metadata: {err}") from None
        if len(line) > self.max_record_bytes:
            raise ManifestError(f"the package metadata is {len(line)} bytes in the manifest; quilt3 allows at "
                                f"most {self.max_record_bytes} (QUILT_MANIFEST_MAX_RECORD_SIZE)")
        return line + b"\n"

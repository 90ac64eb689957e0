"""Restore a revision into a directory and prove every byte.

The manifest is read from S3 (not quilt3's manifest cache) and checked against
its top_hash. Every logical key must stay inside DEST (no absolute keys, no
``..``). A revision whose entries are not pinned to object versions is refused
unless forced. Pinned files whose quilt3 object-path cache entry still matches
are copied from the local cache (and reported so); a cache entry whose bytes
fail verification is replaced by a download. Files are downloaded into a temporary directory beside DEST, each is
hashed and compared with its manifest entry, and only a fully verified tree is
renamed to DEST: a failed restore leaves no half-restored DEST behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from quiltsync.core.diff import under
from quiltsync.core.types import Revision
from quiltsync.errors import RestoreError
from quiltsync.local import hashing
from quiltsync.remote.registry import Registry, unpinned_keys


@dataclass(slots=True)
class RestoreReport:
    package: str
    top_hash: str
    dest: Path
    files: int = 0
    bytes: int = 0
    verified: int = 0
    mismatched: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # logical key -> "cache" | "s3"

    @property
    def from_cache(self) -> list[str]:
        return sorted(lk for lk, src in self.sources.items() if src == "cache")


def unsafe_key(lk: str) -> str | None:
    """Why a logical key could write outside DEST, or None if it is safe."""
    p = PurePosixPath(lk)
    if not lk or lk.startswith("/") or p.is_absolute():
        return "absolute path"
    if "\\" in lk or "\x00" in lk:
        return "backslash or NUL in key"
    if any(part in ("", ".", "..") for part in lk.split("/")):
        return "'.', '..' or empty path segment"
    return None


def resolve_top_hash(registry: Registry, package: str, top_hash: str) -> str:
    """Accept a full top_hash or a unique prefix of at least 6 hex digits."""
    h = top_hash.strip().lower()
    if len(h) == 64:
        return h
    if len(h) < 6 or any(c not in "0123456789abcdef" for c in h):
        raise RestoreError(f"--top-hash {top_hash!r}: expected 64 hex digits or a unique prefix of 6 or more")
    matches = sorted({t for _, t in registry.versions(package) if t.startswith(h)})
    if len(matches) != 1:
        what = "no revision" if not matches else f"{len(matches)} revisions"
        raise RestoreError(f"--top-hash {top_hash!r}: {what} of {package} match; give more digits")
    return matches[0]


def select_paths(rev: Revision, paths: list[str], package: str) -> Revision:
    """Only the entries at or under ``paths`` (files or folders, relative to the package)."""
    wanted = [p.strip("/") for p in paths]
    missing = [p for p in wanted if not any(under(lk, p) for lk in rev.entries)]
    if missing:
        raise RestoreError(f"{package}@{rev.top_hash[:12]} has no file or folder {missing[0]!r}"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    entries = {lk: e for lk, e in rev.entries.items() if any(under(lk, p) for p in wanted)}
    return Revision(rev.top_hash, rev.meta, entries, rev.registry)


def restore(registry: Registry, package: str, top_hash: str, dest: Path, *,
            force: bool = False, revision: Revision | None = None,
            paths: list[str] | None = None) -> RestoreReport:
    """Restore ``top_hash`` (or the already read ``revision``) into ``dest``; with
    ``paths``, only those files and folders."""
    dest = dest.absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise RestoreError(f"--dest {dest}: exists and is not an empty directory; choose a new directory")
    if revision is None:
        top_hash = resolve_top_hash(registry, package, top_hash)
        revision = registry.revision(package, top_hash)
    rev = select_paths(revision, paths, package) if paths else revision
    top_hash = rev.top_hash
    bad = [(lk, why) for lk in rev.entries if (why := unsafe_key(lk))]
    if bad:
        lk, why = bad[0]
        raise RestoreError(f"{package}@{top_hash[:12]}: refusing to restore key {lk!r} ({why}); "
                           f"{len(bad)} unsafe key(s) in the manifest")
    unpinned = unpinned_keys(rev.entries)
    if unpinned and not force:
        raise RestoreError(
            f"{package}@{top_hash[:12]}: {len(unpinned)} of {len(rev.entries)} entries are not pinned to an "
            f"object version (first: {unpinned[0]!r}): the revision was pushed while bucket versioning was "
            "off, so S3 can only return the newest bytes of those keys, not this revision's. "
            "Use --force to restore them anyway; every file is still checked and mismatches are listed")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".quiltsync-restore-", dir=dest.parent))
    try:
        sources = registry.fetch(package, rev, tmp)
        report = verify_tree(rev, tmp, package, dest)
        stale = [lk for lk in report.mismatched if sources.get(lk) == "cache"]
        if stale:  # a cache entry that lied: fetch those from S3, then check everything again
            again = Revision(rev.top_hash, rev.meta, {lk: rev.entries[lk] for lk in stale}, rev.registry)
            for lk in stale:
                (tmp / lk).unlink(missing_ok=True)
            sources.update(registry.fetch(package, again, tmp, use_cache=False))
            report = verify_tree(rev, tmp, package, dest)
        report.sources = sources
        if report.mismatched and not force:
            raise RestoreError(
                f"{package}@{top_hash[:12]}: {len(report.mismatched)} file(s) do not match the manifest "
                f"(first: {report.mismatched[0]!r}); nothing was written to {dest}. If the bucket "
                "had no versioning when this revision was pushed, its old bytes are gone")
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
        registry.remember(rev, dest, [lk for lk, src in sources.items()
                                      if src == "s3" and lk not in report.mismatched])
        if report.mismatched:
            raise RestoreError(
                f"{package}@{top_hash[:12]}: restored into {dest} with --force, but "
                f"{len(report.mismatched)} file(s) are not this revision's bytes: "
                + ", ".join(repr(k) for k in report.mismatched[:10]))
        return report
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def verify_tree(rev: Revision, root: Path, package: str, dest: Path) -> RestoreReport:
    report = RestoreReport(package, rev.top_hash, dest)
    for lk, entry in sorted(rev.entries.items()):
        report.files += 1
        path = root / lk
        try:
            size = path.stat().st_size
            got = hashing.hash_like(path, entry.hash.type)
        except OSError:
            report.mismatched.append(lk)
            continue
        if got is None:
            raise RestoreError(f"{lk!r}: cannot verify hash type {entry.hash.type!r}")
        if size != entry.size or got != entry.hash:
            report.mismatched.append(lk)
            continue
        report.verified += 1
        report.bytes += size
    return report

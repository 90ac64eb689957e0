"""quilt3's local cache: find what is stale or corrupt, and remove exactly that.

Layout (quilt3 8.0, FACTS.md), under the cache dir ``.../Quilt/v0``:
- ``manifest/<sha256 of the manifest URL>``: browse's manifest cache, written
  through ``<name>.tmp`` (a leftover .tmp is a download that never finished),
  never evicted, not verified by quilt3;
- ``<2 hex>/<62 hex>``: the object-path cache, JSON ``[local_path, st_dev,
  st_ino, st_mtime_ns]`` keyed by the sha256 of the S3 URL (with versionId);
  install copies from ``local_path`` instead of downloading when it still matches.

A cached manifest is good when it parses, hashes to a top_hash whose manifest URL
in some bucket (a configured registry, or a bucket its entries live in) is its
file name, and every entry is pinned to an object version. Anything else is a
problem ``fix`` removes; good entries are never touched.

What a manifest says is remembered per file (path, inode, size, mtime) for the
life of the process: the daemon's health runs (every ``health_interval_seconds``)
parse only manifests that are new or changed since the last run, not every
cached manifest again (quilt3's parser takes seconds for a 50,000-file
manifest), and import quilt3 only when there is one to parse.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

_OBJ_DIR = re.compile(r"[0-9a-f]{2}")
_OBJ_NAME = re.compile(r"[0-9a-f]{62}")


@dataclass(frozen=True, slots=True)
class CacheProblem:
    path: Path
    kind: str  # temp_file | manifest_corrupt | manifest_mismatch | manifest_unpinned | object_stale | object_corrupt
    detail: str


@dataclass(slots=True)
class CacheReport:
    root: Path
    problems: list[CacheProblem] = field(default_factory=list)
    manifests: int = 0
    objects: int = 0
    total_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


# (meta, {logical_key: (physical_key_url, ...)}) -> (top_hash, [physical key urls])
ParseManifest = Callable[[bytes], tuple[str, list[str]]]


@dataclass(frozen=True, slots=True)
class _Read:
    """What one cached manifest says, as much as its verdict needs (or why it does not parse)."""

    top_hash: str = ""
    buckets: frozenset[str] = frozenset()  # of its entries' physical keys
    unpinned: int = 0  # entries in S3 without a versionId
    error: str | None = None


_reads: dict[tuple[str, int, int, int], _Read] = {}  # (path, inode, size, mtime_ns) -> what it says
_reads_lock = threading.Lock()


def manifest_cache_name(bucket: str, top_hash: str) -> str:
    return hashlib.sha256(f"s3://{bucket}/.quilt/packages/{top_hash}".encode()).hexdigest()


def inspect(root: Path, buckets: Iterable[str], parser: Callable[[], ParseManifest]) -> CacheReport:
    """Look at every cache file under ``root`` (quilt3's ``.../Quilt/v0``).

    ``parser()`` gives the manifest parser (quilt3's, the authority: it imports
    quilt3), called once, only if a manifest is new or changed since the last
    inspection in this process, and outside the per-file checks: if quilt3 cannot
    be imported the inspection fails, rather than calling every manifest corrupt."""
    report = CacheReport(root)
    if not root.is_dir():
        return report
    known = set(buckets)
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            try:
                report.total_bytes += p.lstat().st_size
            except OSError:
                continue
    mdir = root / "manifest"
    parse: ParseManifest | None = None
    seen: dict[tuple[str, int, int, int], _Read] = {}
    if mdir.is_dir():
        for p in sorted(mdir.iterdir()):
            if p.suffix == ".tmp":
                report.problems.append(CacheProblem(p, "temp_file", "leftover of an interrupted download"))
                continue
            report.manifests += 1
            try:
                st = p.stat()
            except OSError:
                continue  # removed meanwhile
            key = (str(p), st.st_ino, st.st_size, st.st_mtime_ns)
            with _reads_lock:
                read = _reads.get(key)
            if read is None:
                if parse is None:
                    parse = parser()
                read = _read_manifest(p, parse)
            seen[key] = read
            problem = _verdict(p, read, known)
            if problem is not None:
                report.problems.append(problem)
    with _reads_lock:  # what is gone from the cache is forgotten
        _reads.clear()
        _reads.update(seen)
    for sub in sorted(root.iterdir()):
        if not (sub.is_dir() and _OBJ_DIR.fullmatch(sub.name)):
            continue
        for p in sorted(sub.iterdir()):
            if _OBJ_NAME.fullmatch(p.name):
                report.objects += 1
                problem = _check_object(p)
                if problem is not None:
                    report.problems.append(problem)
    return report


def _read_manifest(p: Path, parse: ParseManifest) -> _Read:
    try:
        top_hash, physical_keys = parse(p.read_bytes())
    except Exception as e:
        return _Read(error=f"does not parse: {type(e).__name__}: {str(e)[:120]}")
    s3 = [u for u in physical_keys if u.startswith("s3://")]
    return _Read(top_hash, frozenset(urlparse(u).netloc for u in s3), sum("versionId=" not in u for u in s3))


def _verdict(p: Path, read: _Read, known: set[str]) -> CacheProblem | None:
    if read.error is not None:
        return CacheProblem(p, "manifest_corrupt", read.error)
    if not any(manifest_cache_name(b, read.top_hash) == p.name for b in known | read.buckets):
        return CacheProblem(p, "manifest_mismatch",
                            "content does not hash to the top_hash its name stands for (truncated or altered)")
    if read.unpinned:
        return CacheProblem(p, "manifest_unpinned",
                            f"{read.unpinned} entries have no versionId (cached before versioning was "
                            "enabled, or from an unversioned bucket): browse would keep serving them")
    return None


def _check_object(p: Path) -> CacheProblem | None:
    try:
        local_path, dev, ino, mtime = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError) as e:
        return CacheProblem(p, "object_corrupt", f"not a valid object-path entry: {type(e).__name__}")
    try:
        st = os.stat(local_path)
    except OSError:
        return CacheProblem(p, "object_stale", f"points to {local_path}, which is gone")
    if (st.st_dev, st.st_ino, st.st_mtime_ns) != (dev, ino, mtime):
        return CacheProblem(p, "object_stale", f"{local_path} changed since it was cached")
    return None


def fix(report: CacheReport) -> list[CacheProblem]:
    """Remove exactly the problem files; returns what was removed."""
    removed = []
    for problem in report.problems:
        try:
            problem.path.unlink()
            removed.append(problem)
        except FileNotFoundError:
            removed.append(problem)
        except OSError:
            pass
    return removed

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
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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


def manifest_cache_name(bucket: str, top_hash: str) -> str:
    return hashlib.sha256(f"s3://{bucket}/.quilt/packages/{top_hash}".encode()).hexdigest()


def inspect(root: Path, buckets: Iterable[str], parser: Callable[[], ParseManifest]) -> CacheReport:
    """Look at every cache file under ``root`` (quilt3's ``.../Quilt/v0``).

    ``parser()`` gives the manifest parser (quilt3's, the authority: it imports
    quilt3), called once, only if there are manifests, and outside the per-file
    checks: if quilt3 cannot be imported the inspection fails, rather than calling
    every manifest corrupt."""
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
    if mdir.is_dir():
        for p in sorted(mdir.iterdir()):
            if p.suffix == ".tmp":
                report.problems.append(CacheProblem(p, "temp_file", "leftover of an interrupted download"))
                continue
            report.manifests += 1
            if parse is None:
                parse = parser()
            problem = _check_manifest(p, known, parse)
            if problem is not None:
                report.problems.append(problem)
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


def _check_manifest(p: Path, known: set[str], parse: ParseManifest) -> CacheProblem | None:
    try:
        top_hash, physical_keys = parse(p.read_bytes())
    except Exception as e:
        return CacheProblem(p, "manifest_corrupt", f"does not parse: {type(e).__name__}: {str(e)[:120]}")
    buckets = known | {urlparse(u).netloc for u in physical_keys if u.startswith("s3://")}
    if not any(manifest_cache_name(b, top_hash) == p.name for b in buckets):
        return CacheProblem(p, "manifest_mismatch",
                            "content does not hash to the top_hash its name stands for (truncated or altered)")
    unpinned = [u for u in physical_keys if u.startswith("s3://") and "versionId=" not in u]
    if unpinned:
        return CacheProblem(p, "manifest_unpinned",
                            f"{len(unpinned)} entries have no versionId (cached before versioning was "
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

"""Revert: old bytes written back into the watched folder, without losing anything.

The daemon then pushes them as a new revision on top of the latest, so the bytes
they replace stay in the latest revision. Hence the rules:

- a file to overwrite must hold what the latest revision holds (by the index's
  recorded stat, or by hash), or already the old bytes; anything else is an
  unpushed change and the revert is refused without ``force``;
- the old bytes are downloaded into ``.quiltsync-revert-*`` inside the folder
  (ignored by scans), verified against the old entries, and renamed into place
  one file at a time; just before each rename the target is stat'ed again, and
  one that changed since the check is not overwritten (without ``force``);
- nothing is written through a symbolic link or outside the folder, nor over a
  directory.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from quiltsync.config import FolderConfig
from quiltsync.core.diff import same_content
from quiltsync.core.types import Entry, FileRecord, FileStat, Revision
from quiltsync.engine.restore import unsafe_key, verify_tree
from quiltsync.errors import RestoreError
from quiltsync.local import hashing
from quiltsync.local.scanner import stat_or_none
from quiltsync.remote.registry import Registry


@dataclass(slots=True)
class RevertReport:
    written: list[str] = field(default_factory=list)
    same: set[str] = field(default_factory=set)  # already held the old bytes


def revert(folder: FolderConfig, registry: Registry, old: Revision, latest: Revision | None,
           known: Mapping[str, FileRecord], *, force: bool = False) -> RevertReport:
    root = folder.path
    if not root.is_dir():
        raise RestoreError(f"the watched folder {root} is missing or not a directory; nothing was written")
    for lk in old.entries:
        why = unsafe_key(lk) or _unsafe_target(root, lk)
        if why:
            raise RestoreError(f"refusing to write {lk!r} into {root}: {why}; nothing was written")
    report = RevertReport()
    checked, unpushed = _check(root, old, latest, known, report)
    if unpushed and not force:
        raise RestoreError(
            f"{len(unpushed)} file(s) to overwrite have changes that are not in the latest revision yet "
            f"(first: {unpushed[0]!r}); push them first (`quiltsync push --folder {folder.package}`) so nothing "
            "is lost, or add --force to overwrite them")
    todo = Revision(old.top_hash, old.meta, {lk: e for lk, e in old.entries.items() if lk not in report.same},
                    old.registry)
    if not todo.entries:
        return report
    tmp = Path(tempfile.mkdtemp(prefix=".quiltsync-revert-", dir=root))
    try:
        registry.fetch(folder.package, todo, tmp, use_cache=False)
        verified = verify_tree(todo, tmp, folder.package, root)
        if verified.mismatched:
            raise RestoreError(f"{folder.package}@{old.top_hash[:12]}: {len(verified.mismatched)} file(s) do not "
                               f"match the manifest (first: {verified.mismatched[0]!r}); nothing was written")
        for lk in sorted(todo.entries):
            target = root / lk
            if not force and stat_or_none(target) != checked.get(lk):
                raise RestoreError(_partial(report, f"{lk!r} changed while the revert ran; it was left as it is"))
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                _replace(tmp / lk, target)
            except OSError as e:
                raise RestoreError(_partial(report, f"cannot write {target}: {e.strerror or e}")) from None
            report.written.append(lk)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _partial(report: RevertReport, what: str) -> str:
    done = f"{len(report.written)} file(s) were reverted before (first: {report.written[0]!r})" \
        if report.written else "nothing was written"
    return f"{what}; {done}"


def _unsafe_target(root: Path, lk: str) -> str | None:
    """Why writing ``lk`` under ``root`` could leave the folder or clobber a directory."""
    path = root
    parts = lk.split("/")
    for i, part in enumerate(parts):
        path = path / part
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None  # created by the revert from here on: plain directories
        except OSError as e:
            return f"{path}: {e.strerror}"
        last = i == len(parts) - 1
        if stat.S_ISLNK(st.st_mode) and not last:
            return f"{path} is a symbolic link"
        if not last and not stat.S_ISDIR(st.st_mode):
            return f"{path} is not a directory"
        if last and stat.S_ISDIR(st.st_mode):
            return f"{path} is a directory"
    return None


def _check(root: Path, old: Revision, latest: Revision | None, known: Mapping[str, FileRecord],
           report: RevertReport) -> tuple[dict[str, FileStat | None], list[str]]:
    """The stat of each target as checked, and the targets holding unpushed bytes;
    targets that already hold the old bytes go to ``report.same``."""
    checked: dict[str, FileStat | None] = {}
    unpushed: list[str] = []
    for lk, entry in sorted(old.entries.items()):
        path = root / lk
        st = stat_or_none(path)
        checked[lk] = st
        if st is None:
            continue
        current = latest.entries.get(lk) if latest else None
        rec = known.get(lk)
        if current is not None and rec is not None and rec.stat == st and not rec.racy and rec.hash == current.hash:
            now = current  # what the latest revision holds, by the stat recorded when it was pushed
        else:
            try:
                local = hashing.hash_like(path, (current or entry).hash.type) or hashing.chunked_sha256(path)
            except OSError as e:
                raise RestoreError(f"cannot read {path}: {e.strerror or e}; nothing was written") from None
            now = Entry(local, st.size, "")
        if same_content(now, entry) is True:
            report.same.add(lk)
        elif current is None or same_content(now, current) is not True:
            unpushed.append(lk)
    return checked, unpushed




def _replace(src: Path, target: Path) -> None:
    """Rename into place; across filesystems (a mount inside the folder), copy beside
    the target first, then rename there."""
    try:
        os.replace(src, target)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        beside = target.with_name(f".quiltsync-revert-{target.name}")
        shutil.copyfile(src, beside)
        os.replace(beside, target)

"""Walk a watched folder: regular files, their stat, and their logical keys.

The filesystem calls come in as arguments (``scandir``, ``stat``), as in
watchdog's DirectorySnapshot, so a test can change the tree under the scan.
Nothing here hashes or uploads: a scan is stat only.

Rules:
- ignore rules are gitignore syntax (pathspec): built-in defaults plus the
  folder's ``ignore`` list; an ignored directory is not descended into;
- symlinks are never followed out of the root; a symlink to a file inside the
  root is scanned as that file; symlinks to directories are not descended into
  (they would double-count files or loop);
- FIFOs, sockets and devices are skipped with a warning, as are unreadable
  directories and names that are not valid UTF-8 (unreadable files are found,
  and skipped with a warning, when a push needs to read them);
- logical keys use ``/`` whatever the platform.
"""

from __future__ import annotations

import os
import re
import stat as stat_mod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pathspec

from quiltsync.core.types import FileStat

# Editor swap/backup files, lock files, partial downloads, OS litter and VCS dirs:
# never a user's data, and often written and removed within a second.
DEFAULT_IGNORES: tuple[str, ...] = (
    ".git/",
    ".hg/",
    ".svn/",
    "*.swp",
    "*.swo",
    "*.swx",
    "4913",
    "*~",
    ".#*",
    "\\#*#",  # emacs auto-save; a leading '#' would make the line a comment
    ".~lock.*#",
    ".goutputstream-*",
    "*.crdownload",
    "*.part",
    ".DS_Store",
    "Thumbs.db",
    ".quiltsync-*",
)


@dataclass(frozen=True, slots=True)
class Skipped:
    path: str
    reason: str


@dataclass(slots=True)
class Scan:
    root: Path
    files: dict[str, FileStat] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    root_dev: int = 0
    directories: int = 0
    touched: set[str] | None = None  # a rescan: the keys it looked at (others are as before); None: a full scan


class RootUnavailable(Exception):
    """The folder's root is missing, not a directory, or unreadable."""


class IgnoreRules:
    """gitignore rules (pathspec), with a fast path.

    pathspec tries each rule in turn (~10 us a path: most of a scan's time). When
    no rule negates (``!``), a path is ignored iff any rule matches, so the rules
    run as one regex; and rules without an inner ``/`` (most of them) only ever
    look at the last path component, so the scanner, which never descends into
    an ignored directory, checks them against the entry's name alone.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        self.spec = pathspec.GitIgnoreSpec.from_lines([*DEFAULT_IGNORES, *patterns])
        active = [p for p in self.spec.patterns if p.include is not None and p.regex is not None]
        self.fast = all(p.include for p in active)
        by_name = [p for p in active if "/" not in str(getattr(p, "pattern", "/")).rstrip("/")]
        by_path = [p for p in active if p not in by_name]
        self._all = _combine(active)
        self._name = _combine(by_name)
        self._path = _combine(by_path) if by_path else None

    def match_file(self, path: str) -> bool:
        """Whether ``path`` (relative, ``/``-separated, a trailing ``/`` for directories) is ignored."""
        if self.fast:
            return self._all.search(path) is not None
        return self.spec.match_file(path)

    def match_entry(self, rel: str, name: str, is_dir: bool) -> bool:
        """Like match_file for an entry whose parent directories are known not ignored."""
        if not self.fast:
            return self.spec.match_file(rel + "/" if is_dir else rel)
        if self._name.search(name + "/" if is_dir else name) is not None:
            return True
        return self._path is not None and self._path.search(rel + "/" if is_dir else rel) is not None


def _combine(patterns: list[Any]) -> re.Pattern[str]:
    joined = "|".join(f"(?:{p.regex.pattern.replace('(?P<ps_d>/)', '(?:/)')})" for p in patterns)
    return re.compile(joined or r"(?!)")


def make_ignore_spec(patterns: Iterable[str]) -> IgnoreRules:
    return IgnoreRules(patterns)


def scan_folder(
    root: Path,
    ignore: IgnoreRules,
    *,
    scandir: Callable[[str], Iterator[os.DirEntry[str]]] = os.scandir,
    stat: Callable[[str], os.stat_result] = os.stat,
    under: str = "",
    progress: Callable[[], None] | None = None,
) -> Scan:
    """Every file of the folder, or only those ``under`` a directory of it (a polled mount).
    ``progress`` is called after every answered filesystem call (a poll's hang detector)."""
    top = os.path.join(root, under) if under else str(root)
    result = Scan(root=root, root_dev=_root_stat(Path(top), stat).st_dev)
    _walk(result, [(top, under + "/" if under else "")], os.path.realpath(root), ignore, scandir, stat,
          root_level=True, progress=progress)
    return result


def rescan_paths(
    root: Path,
    ignore: IgnoreRules,
    previous: Mapping[str, FileStat],
    paths: Iterable[str],
    *,
    scandir: Callable[[str], Iterator[os.DirEntry[str]]] = os.scandir,
    stat: Callable[[str], os.stat_result] = os.stat,
) -> Scan:
    """``previous`` brought up to date for ``paths`` only (relative; files or directories).

    A path that is now a directory is scanned whole; one that is gone takes what
    was under it along. The caller falls back to ``scan_folder`` when it cannot
    name every changed path (overflow, start-up, a batch too large).
    """
    result = Scan(root=root, root_dev=_root_stat(root, stat).st_dev)
    real_root = os.path.realpath(root)
    fresh = Scan(root=root)
    gone: list[str] = []
    stack: list[tuple[str, str]] = []
    for rel in sorted(set(paths)):
        parts = rel.split("/")
        if not rel or any(p in ("", ".", "..") for p in parts) or ignore.match_file(rel):
            continue
        gone += [rel, rel + "/"]  # whatever was there before: file or subtree
        full = os.path.join(root, rel)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            continue
        except OSError as e:
            fresh.skipped.append(Skipped(full, f"cannot stat: {e.strerror or e}"))
            continue
        if stat_mod.S_ISDIR(st.st_mode):
            if not ignore.match_file(rel + "/"):
                stack.append((full, rel + "/"))
        else:
            _add_file(full, rel, stat_mod.S_ISLNK(st.st_mode), real_root, stat, fresh, st)
    _walk(fresh, stack, real_root, ignore, scandir, stat, root_level=False)
    prefixes = tuple(g for g in gone if g.endswith("/"))
    exact = {g for g in gone if not g.endswith("/")}
    under = [k for k in previous if k.startswith(prefixes)] if prefixes else []  # what was in gone folders
    result.files = dict(previous)
    for k in (*exact, *under):
        result.files.pop(k, None)
    result.touched = {*under, *(exact & previous.keys()), *fresh.files}
    result.files.update(fresh.files)
    result.skipped = fresh.skipped
    return result


def stat_or_none(path: Path) -> FileStat | None:
    """A file's stat now (following symlinks, as a scan does), or None if it is gone
    or cannot be stat'ed: a second look at a file the scan saw."""
    try:
        return FileStat.of(os.stat(path))
    except OSError:
        return None


def _root_stat(root: Path, stat: Callable[[str], os.stat_result]) -> os.stat_result:
    try:
        st = stat(str(root))
    except OSError as e:
        raise RootUnavailable(f"{root}: {e.strerror or e}") from None
    if not stat_mod.S_ISDIR(st.st_mode):
        raise RootUnavailable(f"{root}: not a directory")
    return st


def _walk(
    result: Scan,
    stack: list[tuple[str, str]],
    real_root: str,
    ignore: IgnoreRules,
    scandir: Callable[[str], Iterator[os.DirEntry[str]]],
    stat: Callable[[str], os.stat_result],
    *,
    root_level: bool,
    progress: Callable[[], None] | None = None,
) -> None:
    first = root_level
    while stack:
        dir_path, prefix = stack.pop()
        try:
            entries = list(scandir(dir_path))
        except OSError as e:
            if first:
                raise RootUnavailable(f"{result.root}: {e.strerror or e}") from None
            result.skipped.append(Skipped(dir_path, f"unreadable directory: {e.strerror or e}"))
            continue
        first = False
        result.directories += 1
        for entry in entries:
            if progress is not None:
                progress()
            _visit(entry, prefix, real_root, ignore, stat, stack, result)


def _visit(
    entry: os.DirEntry[str],
    prefix: str,
    real_root: str,
    ignore: IgnoreRules,
    stat: Callable[[str], os.stat_result],
    stack: list[tuple[str, str]],
    result: Scan,
) -> None:
    name = entry.name
    rel = prefix + name
    try:
        is_link = entry.is_symlink()
        is_dir = entry.is_dir(follow_symlinks=False)
    except OSError as e:
        result.skipped.append(Skipped(entry.path, f"cannot stat: {e.strerror or e}"))
        return
    if is_dir:
        if not ignore.match_entry(rel, name, True):
            stack.append((entry.path, rel + "/"))
        return
    if ignore.match_entry(rel, name, False):
        return
    st = None
    if not is_link:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError as e:
            result.skipped.append(Skipped(entry.path, f"cannot stat: {e.strerror or e}"))
            return
        if stat_mod.S_ISREG(st.st_mode) and rel.isascii():  # the common case, without _add_file's checks
            result.files[rel] = FileStat(st.st_size, st.st_mtime_ns, st.st_ino)
            return
    _add_file(entry.path, rel, is_link, real_root, stat, result, st)


def _add_file(
    path: str,
    rel: str,
    is_link: bool,
    real_root: str,
    stat: Callable[[str], os.stat_result],
    result: Scan,
    st: os.stat_result | None,
) -> None:
    """Record one non-directory entry, or say why it is skipped."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        result.skipped.append(Skipped(path, "name is not valid UTF-8; rename it to include it"))
        return
    if is_link:
        target = os.path.realpath(path)
        if not (target == real_root or target.startswith(real_root.rstrip("/") + "/")):
            result.skipped.append(Skipped(path, "symlink points outside the folder"))
            return
        try:
            st = stat(path)
        except OSError as e:
            result.skipped.append(Skipped(path, f"cannot stat: {e.strerror or e}"))
            return
        if stat_mod.S_ISDIR(st.st_mode):
            return  # a symlink to a directory inside the root: its files are scanned there
    assert st is not None
    if not stat_mod.S_ISREG(st.st_mode):
        result.skipped.append(Skipped(path, "not a regular file (FIFO, socket or device)"))
        return
    # Readability is checked only for files that are read (hashed or uploaded): an
    # access() a file would double the cost of a scan.
    result.files[rel] = FileStat(st.st_size, st.st_mtime_ns, st.st_ino)

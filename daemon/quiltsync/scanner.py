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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import pathspec

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
class FileStat:
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStat:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


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
) -> Scan:
    try:
        root_st = stat(str(root))
    except OSError as e:
        raise RootUnavailable(f"{root}: {e.strerror or e}") from None
    if not stat_mod.S_ISDIR(root_st.st_mode):
        raise RootUnavailable(f"{root}: not a directory")
    result = Scan(root=root, root_dev=root_st.st_dev)
    real_root = os.path.realpath(root)
    stack: list[tuple[str, str]] = [(str(root), "")]
    first = True
    while stack:
        dir_path, prefix = stack.pop()
        try:
            entries = list(scandir(dir_path))
        except OSError as e:
            if first:
                raise RootUnavailable(f"{root}: {e.strerror or e}") from None
            result.skipped.append(Skipped(dir_path, f"unreadable directory: {e.strerror or e}"))
            continue
        first = False
        result.directories += 1
        for entry in entries:
            _visit(entry, prefix, real_root, ignore, stat, stack, result)
    return result


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
        name.encode("utf-8")
    except UnicodeEncodeError:
        result.skipped.append(Skipped(entry.path, "name is not valid UTF-8; rename it to include it"))
        return
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
    if is_link:
        target = os.path.realpath(entry.path)
        if not (target == real_root or target.startswith(real_root.rstrip("/") + "/")):
            result.skipped.append(Skipped(entry.path, "symlink points outside the folder"))
            return
    try:
        st = stat(entry.path) if is_link else entry.stat(follow_symlinks=False)
    except OSError as e:
        result.skipped.append(Skipped(entry.path, f"cannot stat: {e.strerror or e}"))
        return
    if stat_mod.S_ISDIR(st.st_mode):
        return  # a symlink to a directory inside the root: its files are scanned there
    if not stat_mod.S_ISREG(st.st_mode):
        result.skipped.append(Skipped(entry.path, "not a regular file (FIFO, socket or device)"))
        return
    # Readability is checked only for files that are read (hashed or uploaded): an
    # access() a file would double the cost of a scan.
    result.files[rel] = FileStat(st.st_size, st.st_mtime_ns, st.st_ino)

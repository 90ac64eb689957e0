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
- FIFOs, sockets and devices are skipped with a warning, as are unreadable files
  and directories and names that are not valid UTF-8;
- logical keys use ``/`` whatever the platform.
"""

from __future__ import annotations

import os
import stat as stat_mod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
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
    "#*#",
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


def make_ignore_spec(patterns: Iterable[str]) -> pathspec.PathSpec:
    return pathspec.GitIgnoreSpec.from_lines([*DEFAULT_IGNORES, *patterns])


def scan_folder(
    root: Path,
    ignore: pathspec.PathSpec,
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
    ignore: pathspec.PathSpec,
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
        if not ignore.match_file(rel + "/"):
            stack.append((entry.path, rel + "/"))
        return
    if ignore.match_file(rel):
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
    if not os.access(entry.path, os.R_OK):
        result.skipped.append(Skipped(entry.path, "permission denied"))
        return
    result.files[rel] = FileStat.of(st)

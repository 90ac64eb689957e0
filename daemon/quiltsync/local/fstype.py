"""What filesystem a folder is on, and what is mounted inside it.

The root's type comes from statfs(2) (its f_type) and from the mount table; the
mount points inside the folder from /proc/self/mountinfo alone, which answers
even when a share does not: reading it never touches the mounted filesystems.
statfs on a hung NFS server or a stopped FUSE process blocks, so ``layout``
asks it on a thread of its own and gives up after ``timeout`` seconds: a root
that does not answer is polled (and the poll reports it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from quiltsync.core.watchmode import (
    MAGIC,
    NOT_ANSWERING,
    Layout,
    Mount,
    is_remote,
    mount_of,
    parse_mountinfo,
    plan_layout,
)

DETECT_TIMEOUT = 3.0
T = TypeVar("T")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def statfs_type(path: str) -> str | None:
    """The filesystem name for statfs(2)'s f_type of ``path`` (None: unknown or failed)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux; f_type first
    if _libc.statfs(os.fsencode(path), buf) != 0:
        return None
    f_type = ctypes.c_ulong.from_buffer(buf).value & 0xFFFFFFFF
    return MAGIC.get(f_type, f"0x{f_type:x}")


def mounts() -> list[Mount]:
    try:
        return parse_mountinfo(Path("/proc/self/mountinfo").read_text(errors="surrogateescape"))
    except OSError:
        return []


def root_type(real: str, table: list[Mount]) -> str:
    """The mount table's name for the filesystem at ``real``, unless statfs knows it is remote."""
    by_statfs = statfs_type(real)
    m = mount_of(real, table)
    name = m.fstype if m is not None else (by_statfs or "unknown")
    if by_statfs is not None and is_remote(by_statfs) and not is_remote(name):
        return by_statfs
    return name


_probing: set[str] = set()  # roots whose statfs has not returned yet: not asked again meanwhile
_probing_lock = threading.Lock()


def layout(root: Path, mode: str, table: list[Mount] | None = None, timeout: float = DETECT_TIMEOUT) -> Layout:
    """How the folder at ``root`` is watched (see ``core.watchmode.plan_layout``).

    A root whose statfs does not return within ``timeout`` gets a layout whose
    root type is ``NOT_ANSWERING``; while that probe is still stuck, asking
    again answers so at once instead of waiting (and leaving a thread) again.
    """
    table = mounts() if table is None else table
    key = os.path.abspath(root)
    with _probing_lock:
        stuck = key in _probing
        _probing.add(key)

    def probe() -> tuple[str, str]:
        try:
            real = os.path.realpath(root)
            return real, root_type(real, table)
        finally:
            with _probing_lock:
                _probing.discard(key)

    found = None if stuck else answered(probe, timeout)
    if found is None:
        return plan_layout("poll", key, NOT_ANSWERING, table)
    return plan_layout(mode, *found, table)


def answered(work: Callable[[], T], timeout: float) -> T | None:
    """``work()`` on a thread of its own, or None if it has not returned within ``timeout``.

    For calls into a filesystem that may not answer (a hung NFS server or a
    stopped FUSE process blocks them): the thread is left behind, a daemon
    thread that ends with the process. Exceptions reach the caller.
    """
    box: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            box.append(work())
        except BaseException as e:  # raised again in the caller's thread
            errors.append(e)

    t = threading.Thread(target=run, name="answered", daemon=True)
    t.start()
    t.join(timeout)
    if errors:
        raise errors[0]
    return box[0] if box else None

"""Is a planned push safe? A pure verdict, before anything is uploaded.

Marker-free: the reference is the revision the push builds on (its file
count) and the root device recorded at the last push. Refused, and held until
the folder recovers or an operator confirms with ``push --allow-deletes``, are
a push that would delete everything of a folder that became empty, deletions
from a folder now on another device (an unmounted disk shows the empty mount
point's device), and one that deletes more than ``max_delete_fraction`` of the
files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from quiltsync.core.types import Entry, HashValue

RELEASE_HINT = "once that is intended, run `quiltsync push --folder {package} --allow-deletes`"


@dataclass(frozen=True, slots=True)
class Held:
    """Why a push was refused; the folder stays held until released."""

    reason: str
    deleted: int
    files: int


def deletion_verdict(
    *,
    package: str,
    folder: str,
    base_top_hash: str | None,
    base_files: int,
    scanned_files: int,
    deleted: list[str],
    recorded_root_dev: int,
    root_dev: int,
    max_delete_fraction: float,
    allow_deletes: bool,
) -> Held | None:
    """None when the push may go on; a ``Held`` naming why not otherwise."""
    if base_top_hash is None or not deleted or allow_deletes:
        return None
    reason = None
    if scanned_files == 0:
        reason = (f"folder {folder} is empty but revision {base_top_hash[:12]} has {base_files} files; "
                  "refusing to push a deletion of everything")
    elif recorded_root_dev and recorded_root_dev != root_dev:
        reason = (f"folder {folder} is on another device than when it was last pushed (unmounted, or a "
                  f"different disk mounted there); refusing to push {len(deleted)} deletions")
    elif len(deleted) > 1 and len(deleted) > max_delete_fraction * base_files:
        reason = (f"this push would delete {len(deleted)} of {base_files} files of {package} (more than "
                  f"max_delete_fraction = {max_delete_fraction:g}); first: {deleted[0]!r}")
    if reason is None:
        return None
    return Held(f"{reason}; {RELEASE_HINT.format(package=package)}", len(deleted), base_files)


def moved_keys(deleted: Iterable[str], added: Iterable[str], entries: Mapping[str, Entry],
               size_of: Callable[[str], int], hash_of: Callable[[str, str], HashValue | None]) -> set[str]:
    """Deleted keys whose bytes an added file has (same size and hash): moved, not
    lost (a renamed folder deletes nothing). ``size_of(key)`` is an added file's
    size; ``hash_of(key, hash_type)`` hashes it (None: unreadable), called only for
    files whose size some deleted entry has."""
    gone: dict[tuple[int, HashValue], list[str]] = {}
    for lk in deleted:
        e = entries[lk]
        gone.setdefault((e.size, e.hash), []).append(lk)
    sizes = {size for size, _h in gone}
    types = {h.type for _size, h in gone}
    moved: set[str] = set()
    for lk in added:
        size = size_of(lk)
        if size not in sizes:
            continue
        for hash_type in types:
            local = hash_of(lk, hash_type)
            if local is not None and (size, local) in gone:
                moved.update(gone[(size, local)])
                break
    return moved

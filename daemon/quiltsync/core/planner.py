"""Decide what a push must do: pure, no I/O but the ``hash_file`` callback.

Inputs: the folder scan (logical key -> stat), the local index (what was pushed,
with the stat the file had then) and the base revision the push builds on (its
entries: hash, size, physical key). Output: which keys to upload from the folder,
which to delete, which are unchanged, and index rows to refresh.

A file counts as unchanged without reading it when its stat equals the index's
and the index's hash is the base entry's hash. A stat that is "racy" (the file
was modified within the timestamp granularity of when it was recorded, so a
same-size write in the same clock tick could hide; see ``types.is_racy``) is never trusted: the file is hashed, as are
files whose stat changed but whose size still equals the base entry's (a touch,
a rewrite with the same bytes, or an index rebuilt from the registry). Hashing is
local; it never uploads.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Protocol

from quiltsync.core.types import Entry, FileStat, HashValue


class Known(Protocol):
    """What the index remembers of a pushed file (types.FileRecord is one)."""

    @property
    def stat(self) -> FileStat: ...
    @property
    def hash(self) -> HashValue: ...
    @property
    def racy(self) -> bool: ...


@dataclass(slots=True)
class Plan:
    added: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    # keys whose content equals the base but whose index row must be (re)written
    refresh: dict[str, HashValue] = field(default_factory=dict)
    hashed: int = 0  # files read to decide

    @property
    def uploads(self) -> list[str]:
        return [*self.added, *self.modified]

    @property
    def changes(self) -> bool:
        return bool(self.added or self.modified or self.deleted)


def plan_push(
    scan: Mapping[str, FileStat],
    index: Mapping[str, Known],
    base: Mapping[str, Entry],
    hash_file: Callable[[str, str], HashValue | None],
    only: Collection[str] | None = None,
) -> Plan:
    """``hash_file(logical_key, hash_type)`` hashes a local file like the base entry was.

    ``only``: the keys that can differ (the paths a rescan looked at, and keys whose
    index stat is racy); every other key of ``scan`` is known to have the stat the
    index records for the base, so looking at it could only find it unchanged. The
    plan then costs what changed, not what the folder holds.
    """
    plan = Plan()
    if only is not None:
        keys: Iterable[str] = [lk for lk in only if lk in scan]
        plan.deleted = sorted(lk for lk in only if lk not in scan and lk in base)
    else:
        keys = scan
        plan.deleted = sorted(base.keys() - scan.keys())
    for lk in keys:
        st = scan[lk]
        entry = base.get(lk)
        if entry is None:
            plan.added.append(lk)
            continue
        known = index.get(lk)
        if known is not None and known.stat == st and not known.racy and known.hash == entry.hash:
            continue
        if st.size != entry.size:
            plan.modified.append(lk)
            continue
        plan.hashed += 1
        local = hash_file(lk, entry.hash.type)
        if local is not None and local == entry.hash:
            plan.refresh[lk] = local
        else:
            plan.modified.append(lk)
    plan.added.sort()
    plan.modified.sort()
    return plan


def hold_back(plan: Plan, keys: Set[str]) -> Plan:
    """``plan`` without any change to ``keys``: they stay as the base revision has them
    (files on a share that another host is still writing)."""
    if not keys:
        return plan
    return Plan([k for k in plan.added if k not in keys], [k for k in plan.modified if k not in keys],
                [k for k in plan.deleted if k not in keys],
                {k: v for k, v in plan.refresh.items() if k not in keys}, plan.hashed)


def pending_changes(scan: Mapping[str, FileStat], index: Mapping[str, Known]) -> int:
    """How many keys differ by stat alone (for status; no hashing, no network)."""
    changed = sum(1 for lk, st in scan.items() if (e := index.get(lk)) is None or e.stat != st)
    return changed + sum(1 for lk in index if lk not in scan)

"""How each part of a folder is watched: inotify events or a stat-only poll. Pure.

inotify reports only what passes through this machine's kernel: a file written
on an NFS/SMB share by another host, or behind a FUSE mount, makes no event at
all (FACTS.md). ``plan_layout`` decides, from the filesystem type of the
folder's root and the mount points inside it, which parts get events and which
are polled; ``effective_interval`` stretches a poll interval so that polling
stays under a CPU budget; ``PollTracker`` turns successive poll snapshots into
the paths that are ready to push (a file still being copied by another host
waits until it stood still for one poll).

Filesystem names are the kernel's, as in /proc/self/mountinfo (``nfs4``,
``fuse.sshfs``); ``MAGIC`` names statfs(2) f_type values for the root.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from quiltsync.core.types import FileStat

# Filesystems whose changes can come from elsewhere without an inotify event.
# Network: changes by other clients; FUSE: changes behind the FUSE process;
# cluster: changes by other nodes of a shared-disk or parallel filesystem.
REMOTE_TYPES: dict[str, str] = {
    "nfs": "network", "nfs4": "network", "cifs": "network", "smb3": "network", "smbfs": "network",
    "smb2": "network", "ncpfs": "network", "ncp": "network", "afs": "network", "coda": "network",
    "9p": "network", "v9fs": "network", "davfs": "network", "virtiofs": "network", "vboxsf": "network",
    "vmhgfs": "network", "prl_fs": "network", "ceph": "cluster", "lustre": "cluster", "gpfs": "cluster",
    "beegfs": "cluster", "fhgfs": "cluster", "glusterfs": "cluster", "ocfs2": "cluster", "gfs2": "cluster",
    "panfs": "cluster", "orangefs": "cluster", "pvfs2": "cluster", "fuse": "fuse", "fuseblk": "fuse",
    "fusectl": "local", "autofs": "network",  # an automount point: what it mounts is usually a share
}

# statfs(2) f_type values (linux/magic.h and the filesystems' sources).
MAGIC: dict[int, str] = {
    0x6969: "nfs", 0x517B: "smbfs", 0xFF534D42: "cifs", 0xFE534D42: "smb2", 0x564C: "ncpfs",
    0x5346414F: "afs", 0x73757245: "coda", 0x01021997: "9p", 0x65735546: "fuse", 0x00C36400: "ceph",
    0x0BD00BD0: "lustre", 0x47504653: "gpfs", 0x19830326: "beegfs", 0x7461636F: "ocfs2",
    0x01161970: "gfs2", 0xAAD7AAEA: "panfs", 0x786F4256: "vboxsf",
    0xEF53: "ext4", 0x58465342: "xfs", 0x9123683E: "btrfs", 0x01021994: "tmpfs", 0x794C7630: "overlay",
    0x2FC12FC1: "zfs", 0x4D44: "vfat", 0x5346544E: "ntfs", 0x2011BAB0: "exfat", 0xF2F52010: "f2fs",
}

MODES = ("auto", "events", "poll")
CPU_BUDGET = 0.02  # polling may use this share of one core, at most
NOT_ANSWERING = "unknown: not answering"


def kind_of(fstype: str) -> str:
    """``network``, ``cluster``, ``fuse`` or ``local`` for a kernel filesystem name."""
    if fstype.startswith(("fuse.", "fuseblk.")):
        return "fuse"
    if fstype == NOT_ANSWERING:
        return "network"
    return REMOTE_TYPES.get(fstype, "local")


def is_remote(fstype: str) -> bool:
    return kind_of(fstype) != "local"


@dataclass(frozen=True, slots=True)
class Mount:
    point: str  # absolute, as the kernel shows it
    fstype: str


def parse_mountinfo(text: str) -> list[Mount]:
    """/proc/self/mountinfo: mount point (field 5) and type (after the ``-``)."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        out.append(Mount(_unescape(fields[4]), right.split()[0]))
    return out


def _unescape(s: str) -> str:
    """The kernel writes space, tab, newline and backslash in mount points as \\ooo."""
    if "\\" not in s:
        return s
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and s[i + 1:i + 4].isdigit() and len(s[i + 1:i + 4]) == 3:
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def mount_of(path: str, mounts: Iterable[Mount]) -> Mount | None:
    """The mount that holds ``path`` (absolute, symlinks resolved): the last of the longest."""
    best: Mount | None = None
    for m in mounts:
        if _under(path, m.point) and (best is None or len(m.point) >= len(best.point)):
            best = m
    return best


def _under(path: str, point: str) -> bool:
    return point == "/" or path == point or path.startswith(point.rstrip("/") + "/")


@dataclass(frozen=True, slots=True)
class Part:
    rel: str  # "" for the folder's root, else a mount point inside it ("data/share")
    fstype: str
    polled: bool

    @property
    def label(self) -> str:
        return self.rel + "/" if self.rel else "/"


@dataclass(frozen=True, slots=True)
class Layout:
    """How one folder is watched: its root part first, then polled mounts inside it."""

    mode: str
    parts: tuple[Part, ...]
    path: str = ""  # the folder's root, symlinks resolved

    @property
    def root(self) -> Part:
        return self.parts[0]

    @property
    def events(self) -> bool:
        return not self.root.polled

    @property
    def polled(self) -> tuple[Part, ...]:
        return tuple(p for p in self.parts if p.polled)

    def describe(self, interval: float | None = None, configured: float | None = None) -> str:
        """One line for `check`, `status` and the logs."""
        every = ""
        if interval is not None:
            every = f" every {_seconds(interval)}"
            if configured is not None and is_stretched(interval, configured):
                every += f" (stretched from {_seconds(configured)}: a poll costs more than 2% of a core)"
        out = []
        if self.events:
            out.append(f"events on / ({self.root.fstype})")
        polled = self.polled
        if polled:
            what = ", ".join(f"{p.label} ({p.fstype})" for p in polled)
            out.append(f"polled{every}: {what}")
        return "; ".join(out)

    def as_json(self, interval: float | None = None) -> list[dict[str, object]]:
        return [{"path": p.label, "fs": p.fstype, "watch": "poll" if p.polled else "events",
                 "interval_s": round(interval, 1) if p.polled and interval is not None else None}
                for p in self.parts]


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


def plan_layout(mode: str, root: str, root_type: str, mounts: Iterable[Mount]) -> Layout:
    """Which parts of the folder at ``root`` (absolute, resolved) are polled.

    ``poll``: the whole folder. ``events``: none. ``auto``: the whole folder when
    its root is on a remote (network, cluster or FUSE) filesystem; otherwise
    events for the root and a poll for each remote mount inside it (the
    outermost one: a poll of a subtree covers the mounts below it).
    """
    if mode == "poll" or (mode == "auto" and is_remote(root_type)):
        return Layout(mode, (Part("", root_type, True),), root)
    parts = [Part("", root_type, False)]
    if mode == "auto":
        latest: dict[str, Mount] = {}  # what was mounted last on a point is what shows there
        for m in mounts:
            if m.point != root and _under(m.point, root):
                latest[m.point] = m
        inside = sorted(latest.values(), key=lambda m: m.point)
        taken: list[str] = []
        for m in inside:
            if not is_remote(m.fstype) or any(_under(m.point, t) for t in taken):
                continue
            taken.append(m.point)
            parts.append(Part(m.point[len(root.rstrip("/")) + 1:], m.fstype, True))
    return Layout(mode, tuple(parts), root)


def is_stretched(interval: float, poll_seconds: float) -> bool:
    """Whether polls run less often than configured (to stay under the CPU budget)."""
    return interval > poll_seconds * 1.01


def keep_polled(layout: Layout, previous: Layout) -> Layout:
    """``layout`` plus the remote parts ``previous`` polled that it lacks (a share unmounted
    meanwhile must stay a polled part: its poll then fails, and its files are not deleted)."""
    if layout.root.polled:
        return layout
    have = {p.rel for p in layout.parts}
    lost = [p for p in previous.polled if p.rel and p.rel not in have and is_remote(p.fstype)]
    return Layout(layout.mode, (*layout.parts, *lost), layout.path) if lost else layout


def effective_interval(poll_seconds: float, poll_cpu_seconds: float, budget: float = CPU_BUDGET) -> float:
    """The poll interval that keeps a poll costing ``poll_cpu_seconds`` under ``budget`` of a core."""
    return max(poll_seconds, poll_cpu_seconds / budget)


@dataclass(frozen=True, slots=True)
class Observation:
    """What one poll found."""

    settled: frozenset[str] = frozenset()  # changes that stood still for a poll: push them
    overdue: dict[str, float] = field(default_factory=dict)  # still changing past the bound: path -> first seen
    full: bool = False  # no baseline: reconcile the whole part once


class PollTracker:
    """Successive snapshots of a polled part in, the paths that may be pushed out.

    - The first snapshot is compared with ``baseline`` (the files as last
      pushed, from the index); without one it asks for one full reconcile.
    - A file seen changing between two polls waits until a poll finds it as the
      one before did: its size and mtime stood still for one poll (another host
      may still be copying it). It is then *settled*. A second look sooner would
      not do: the clients of network and FUSE filesystems cache attributes (FUSE
      1 s by default, NFS 3-60 s), so a stat can repeat itself while the file grows.
    - The wait is bounded: a file still changing ``max_delay`` after it was first
      seen changing, but never sooner than two poll intervals (else a bound at
      or below the interval would push every growing file at its second
      sighting), is *overdue*: pushed anyway, from a still copy.
    - A deletion is a change like any other.
    """

    def __init__(self, max_delay: float, baseline: dict[str, FileStat] | None = None) -> None:
        self.max_delay = max_delay
        self.previous: dict[str, FileStat] | None = baseline
        self._waiting: dict[str, float] = {}  # path -> when it was first seen changing

    def observe(self, now: float, snapshot: dict[str, FileStat], interval: float = 0.0) -> Observation:
        """``interval``: the time between this poll and the next."""
        previous, self.previous = self.previous, snapshot
        if previous is None:
            return Observation(full=True)
        changed = {k for k, v in snapshot.items() if previous.get(k) != v}
        changed.update(k for k in previous if k not in snapshot)
        settled = {p for p in self._waiting if p not in changed}
        for path in settled:
            del self._waiting[path]
        bound = max(self.max_delay, 2 * interval)
        overdue: dict[str, float] = {}
        for path in changed:
            since = self._waiting.setdefault(path, now)
            if now - since >= bound:
                overdue[path] = self._waiting.pop(path)
        return Observation(frozenset(settled), overdue)

    @property
    def waiting(self) -> frozenset[str]:
        return frozenset(self._waiting)

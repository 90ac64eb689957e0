"""What a push pass sends (step 5 of ``engine.pusher``'s pipeline, before the publish).

A planned upload goes up from the folder itself, or from a still copy when the
file changed very recently or changed during an earlier upload (the torn-file
guard); a file whose bytes an entry of the base revision already has (a rename
or a copy) is not uploaded at all but points at that entry's object version.
While the upload runs, its progress goes to a terminal's bar or, every few
seconds, to the log as ``push.progress``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quiltsync.core.types import Entry, FileStat, LastPush, Revision
from quiltsync.local import hashing
from quiltsync.local.index import Index
from quiltsync.local.scanner import stat_or_none
from quiltsync.local.stillcopy import StillCopies
from quiltsync.remote.registry import version_id_of
from quiltsync.remote.transfer import Progress

HOT_NS = 2_000_000_000  # modified this recently: maybe still being written
PROGRESS_SECONDS = 5.0  # push.progress at most this often during an upload


@dataclass(slots=True)
class Uploads:
    """What the upload step sends: from the folder itself, or from still copies."""

    sources: dict[str, tuple[Path, int]]  # key -> (the file or its still copy, size)
    direct: dict[str, Path]  # keys sent from the folder itself: re-stat'ed before the publish
    stats: dict[str, FileStat]  # the stat of what is sent
    skipped: list[str]  # vanished, still moving, or copies that could not be taken
    set_ns: int  # taken before the stats: the index records the stats as of then
    reused: dict[str, Entry] = field(default_factory=dict)  # bytes already in the bucket: not uploaded


def gather(root: Path, keys: Collection[str], scanned: dict[str, FileStat], *, defer_moving: bool,
           hot: Collection[str], copies: StillCopies, log: Any) -> Uploads:
    """Re-stat each file to upload; files being written go up as still copies.
    ``defer_moving``: a file whose stat changed since the scan is left for the next
    pass (unless it is ``hot``: it changed during an earlier upload, and waits no more)."""
    out = Uploads({}, {}, {}, [], time.time_ns())  # set_ns before the stats: conservative
    for lk in keys:
        path = root / lk
        st = stat_or_none(path)
        if st is None or (defer_moving and st != scanned[lk] and lk not in hot):
            out.skipped.append(lk)  # vanished, or still being written: next round
            continue
        if not os.access(path, os.R_OK):
            log.warning("scan.skipped", path=str(path), reason="permission denied")
            continue
        if lk in hot or (not defer_moving and st.mtime_ns > out.set_ns - HOT_NS):
            copy = copies.take(path)
            if copy is None:
                out.skipped.append(lk)
                continue
            st, source = copy
        else:
            source = path
            out.direct[lk] = path
        out.sources[lk] = (source, st.size)
        out.stats[lk] = st
    return out


def changed_since_stat(uploads: Uploads) -> list[str]:
    """Files sent from the folder itself whose stat moved since ``gather`` (the torn-file guard)."""
    return sorted(lk for lk, path in uploads.direct.items() if stat_or_none(path) != uploads.stats[lk])


def reuse_known(uploads: Uploads, index: Index, package: str, bucket: str, rev: Revision | None,
                recorded: LastPush | None) -> None:
    """Renames and copies without uploads: a file whose size and hash equal an
    entry of the base revision gets that entry's physical key and version (quilt3
    entries may point at any object version of the bucket); one local read, no
    upload, and only for files whose size some entry has. The index finds them
    (by size, then hash) while it records the base revision, so this costs what
    changed, not a walk of the entries. Only pinned versions of this registry's
    bucket are reused (an unpinned key would follow later writes). The torn-file
    guard still applies: a file that changes before the publish aborts it, as an
    upload would."""
    if rev is None or not uploads.sources or recorded is None or recorded.top_hash != rev.top_hash:
        return
    prefix = f"s3://{bucket}/"
    for lk, (source, size) in list(uploads.sources.items()):
        if not index.has_size(package, size):
            continue
        try:
            local = hashing.chunked_sha256(source)
        except OSError:
            continue  # unreadable now: the upload reports it
        for other, pk in index.holding(package, size, local):
            known = rev.entries.get(other)
            if known is not None and known.physical_key == pk and pk.startswith(prefix) \
                    and version_id_of(pk) not in (None, "null"):
                uploads.reused[lk] = Entry(local, size, pk, None)
                del uploads.sources[lk]
                break


def progress_reporter(hook: Callable[[Progress], None] | None, log: Any) -> Callable[[Progress], None]:
    """An upload's progress: ``hook`` (a terminal's bar) hears every update (from
    upload threads); without one, ``push.progress`` is logged at most every
    PROGRESS_SECONDS, so a short push logs none."""
    lock = threading.Lock()
    last = [time.monotonic()]

    def report(p: Progress) -> None:
        if hook is not None:  # a terminal's bar shows it: log lines would break the bar
            hook(p)
            return
        now = time.monotonic()
        with lock:
            if now - last[0] < PROGRESS_SECONDS:
                return
            last[0] = now
        log.info("push.progress", bytes_done=p.bytes_done, bytes_total=p.bytes_total,
                 files_done=p.files_done, files_total=p.files_total)
    return report

"""A watched folder as the daemon keeps it, and what its pushes mean for `status`.

The decisions are pure elsewhere (``core.schedule``, ``core.pacing``); this
module turns a push's outcome into the folder's rows of the health table: a
revision that spent the folder's manifest budget (pacing, shown in the `stuck`
row while it delays the next one), a push the bucket's workflow refused (the
`workflow` row, at once rather than at the next health run), and stalls.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from quiltsync.config import FolderConfig
from quiltsync.core.pacing import Pacer
from quiltsync.core.schedule import Scheduler
from quiltsync.service.health import CheckResult
from quiltsync.service.monitor import HealthMonitor
from quiltsync.service.roots import RootState


@dataclass(slots=True)
class FolderState:
    config: FolderConfig
    pusher: Any  # FolderPusher
    generation: int
    root: RootState
    last_push: float | None = None  # wall time
    refused: str | None = None  # why the bucket's workflow refused its last push
    pacer: Pacer = field(default_factory=lambda: Pacer(0))  # the folder's manifest budget (core/pacing.py)

    def paced_detail(self, until: float, now: float) -> str:
        at = dt.datetime.fromtimestamp(time.time() + (until - now), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        cost = self.pacer.last_cost
        size = f"{cost / 1e6:.1f} MB" if cost >= 1e6 else f"{cost / 1e3:.1f} kB"
        return (f"paced: changes go in the next revision at {at} (in {until - now:.0f} s): each revision "
                f"writes a {size} manifest, and max_manifest_bytes_per_day = "
                f"{self.config.max_manifest_bytes_per_day}")


def pace(st: FolderState, schedule: Scheduler, monitor: HealthMonitor | None, log: Any,
         manifest_bytes: int, now: float) -> None:
    """A revision spent its manifest's bytes of the folder's budget: the next one
    may have to wait (shown by `status` through the stuck check's row)."""
    package = st.config.package
    st.pacer.spend(now, manifest_bytes)
    until = st.pacer.ready_at(now)
    if until <= now:
        schedule.pace(package, None)
        row = monitor.results.get(("stuck", package)) if monitor is not None else None
        if monitor is not None and row is not None and row.detail.startswith("paced"):
            monitor.note(CheckResult("stuck", package, "ok", "changes flow"))
        return
    schedule.pace(package, until)
    detail = st.paced_detail(until, now)
    log.info("push.paced", package=package, next_in_s=round(until - now, 1), detail=detail)
    if monitor is not None:
        monitor.note(CheckResult("stuck", package, "ok", detail))


def workflow_refused(st: FolderState, monitor: HealthMonitor | None, error: Exception) -> None:
    """The bucket's workflow refused a push: `status` shows it now (noted once per reason)."""
    if monitor is None:
        return
    if st.refused != str(error) or monitor.ok("workflow", st.config.package) is not False:
        monitor.note(CheckResult("workflow", st.config.package, "fail", f"pushes are refused: {error}"))
    st.refused = str(error)


def workflow_accepted(st: FolderState, monitor: HealthMonitor | None) -> None:
    """A revision was published: only that proves the workflow passes again."""
    if st.refused and monitor is not None:
        st.refused = None
        monitor.note(CheckResult("workflow", st.config.package, "ok", "the workflow accepts this folder again"))


def stuck_rows(schedule: Scheduler, folders: Mapping[str, FolderState], now: float) -> list[CheckResult]:
    """Each folder's `stuck` row: changes flow, wait for pacing, or are stuck (and why)."""
    out = []
    for pkg, st in folders.items():
        why = schedule.stuck(now, pkg, st.config.max_delay_seconds)
        if why is not None and st.root.problem and why.startswith("pushes failing"):
            why += f" ({st.root.problem})"
        paced = schedule.paced(pkg, now)
        out.append(CheckResult("stuck", pkg, "fail", why) if why else
                   CheckResult("stuck", pkg, "ok", st.paced_detail(paced, now)) if paced is not None else
                   CheckResult("stuck", pkg, "ok", "changes flow"))
    return out

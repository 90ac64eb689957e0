"""Which revisions a retention policy keeps: pure, restic/borg semantics.

A revision is one timestamp pointer ``named_packages/<name>/<unix seconds>``
and the top_hash it names. Walking from the newest to the oldest:

- ``keep_last = n``: the n newest revisions;
- ``keep_hourly/daily/weekly/monthly = n``: for each of the n most recent
  hours (days, ISO weeks, months; UTC) that have revisions, the newest
  revision in it; periods without revisions do not count;
- ``keep``: every revision whose top_hash is listed (say, one cited in a paper);
- the latest revision (what ``latest`` points to) is always kept.

A revision may be kept for several reasons; all are reported. A policy that
keeps nothing by time (all zero, no ``keep``) keeps only the latest: a folder
without a ``[folder.retention]`` table is never pruned at all (that is the
caller's rule, not this module's).

Manifests are shared by top_hash: a pruned pointer's manifest is only
removable when no kept pointer names the same top_hash (``removable``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

Revision = tuple[int, str]  # (unix seconds, top_hash)


@dataclass(frozen=True, slots=True)
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    keep: frozenset[str] = frozenset()


@dataclass(slots=True)
class Verdict:
    kept: dict[Revision, list[str]] = field(default_factory=dict)  # revision -> why
    pruned: list[Revision] = field(default_factory=list)  # newest first

    def removable(self) -> list[str]:
        """Top_hashes of pruned revisions that no kept revision names (their manifests go)."""
        keep = {top for _stamp, top in self.kept}
        return sorted({top for _stamp, top in self.pruned if top not in keep})


def _utc(stamp: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(stamp, dt.UTC)


def _hour(s: int) -> str:
    return _utc(s).strftime("%Y-%m-%dT%H")


def _day(s: int) -> str:
    return _utc(s).strftime("%Y-%m-%d")


def _week(s: int) -> str:
    year, week, _ = _utc(s).isocalendar()
    return f"{year}-W{week:02d}"


def _month(s: int) -> str:
    return _utc(s).strftime("%Y-%m")


_PERIODS: tuple[tuple[str, Callable[[int], str]], ...] = (
    ("hourly", _hour), ("daily", _day), ("weekly", _week), ("monthly", _month))


def decide(policy: Policy, revisions: Iterable[Revision], latest: str | None) -> Verdict:
    """Split ``revisions`` into kept (with reasons) and pruned."""
    newest_first = sorted(set(revisions), reverse=True)
    verdict = Verdict()
    seen: dict[str, set[str]] = {name: set() for name, _ in _PERIODS}
    for i, rev in enumerate(newest_first):
        stamp, top = rev
        why: list[str] = []
        if top == latest:
            why.append("latest")
        if top in policy.keep:
            why.append("keep")
        if i < policy.last:
            why.append(f"last {i + 1}")
        for name, period in _PERIODS:
            limit = getattr(policy, name)
            bucket = period(stamp)
            if limit and bucket not in seen[name] and len(seen[name]) < limit:
                seen[name].add(bucket)
                why.append(f"{name} {bucket}")
        if why:
            verdict.kept[rev] = why
        else:
            verdict.pruned.append(rev)
    return verdict

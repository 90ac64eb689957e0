"""Retention policies decide which revisions stay: pure, tested without S3 (restic/borg semantics)."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from quiltsync.core.retention import Policy, decide


def at(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp())


def revs(*times: str) -> list[tuple[int, str]]:
    return [(at(t), f"top{i}") for i, t in enumerate(times)]


def test_keep_last_keeps_the_newest_and_the_latest() -> None:
    r = revs("2026-11-01T10:00", "2026-11-02T10:00", "2026-11-03T10:00", "2026-11-04T10:00", "2026-11-05T10:00")
    v = decide(Policy(last=2), r, latest="top4")
    assert sorted(top for _s, top in v.kept) == ["top3", "top4"]
    assert v.kept[r[4]] == ["latest", "last 1"] and v.kept[r[3]] == ["last 2"]
    assert [top for _s, top in v.pruned] == ["top2", "top1", "top0"]  # newest first
    assert v.removable() == ["top0", "top1", "top2"]


def test_keep_daily_keeps_the_newest_of_each_of_the_last_days_that_have_revisions() -> None:
    r = revs("2026-11-01T08:00", "2026-11-01T20:00",  # day 1: the 20:00 one
             "2026-11-03T09:00",                        # day 3 (day 2 had none: it does not count)
             "2026-11-04T01:00", "2026-11-04T23:59")    # day 4: the 23:59 one
    v = decide(Policy(daily=3), r, latest=None)
    assert {top: why for (_s, top), why in v.kept.items()} == {
        "top4": ["daily 2026-11-04"], "top2": ["daily 2026-11-03"], "top1": ["daily 2026-11-01"]}
    v = decide(Policy(daily=2), r, latest=None)
    assert sorted(top for _s, top in v.kept) == ["top2", "top4"]


def test_hourly_weekly_monthly_and_keep_combine() -> None:
    r = revs("2026-09-15T00:00", "2026-10-20T00:00", "2026-10-30T00:00", "2026-11-02T00:00",
             "2026-11-28T10:05", "2026-11-28T10:50", "2026-11-28T11:10")
    v = decide(Policy(hourly=2, weekly=1, monthly=3, keep=frozenset({"top0"})), r, latest="top6")
    why = {top: reasons for (_s, top), reasons in v.kept.items()}
    assert why["top6"] == ["latest", "hourly 2026-11-28T11", "weekly 2026-W48", "monthly 2026-11"]
    assert why["top5"] == ["hourly 2026-11-28T10"]
    assert why["top2"] == ["monthly 2026-10"] and why["top0"] == ["keep", "monthly 2026-09"]
    assert [top for _s, top in v.pruned] == ["top4", "top3", "top1"]


def test_a_pruned_pointer_keeps_its_manifest_while_a_kept_one_names_it() -> None:
    r = [(at("2026-11-01T00:00"), "same"), (at("2026-11-02T00:00"), "other"), (at("2026-11-03T00:00"), "same")]
    v = decide(Policy(last=1), r, latest="same")
    assert v.pruned == [r[1]] and v.removable() == ["other"]
    v = decide(Policy(last=1), r, latest=None)
    assert v.pruned == [r[1], r[0]] and v.removable() == ["other"]  # "same" is still named by the kept one


stamps = st.lists(st.integers(min_value=1_700_000_000, max_value=1_800_000_000), min_size=1, max_size=40, unique=True)
policies = st.builds(Policy, *(st.integers(0, 5) for _ in range(5)))


@settings(max_examples=300, deadline=None)
@given(stamps, policies, st.data())
def test_every_policy_keeps_the_latest_partitions_and_is_stable(times: list[int], policy: Policy, data) -> None:
    """Kept and pruned split the revisions; the latest is kept; keep_last keeps the n
    newest; and pruning again with the same policy removes nothing more."""
    rs = [(t, f"h{t}") for t in times]
    latest = data.draw(st.sampled_from([None, *[top for _t, top in rs]]))
    v = decide(policy, rs, latest)
    assert set(v.kept) | set(v.pruned) == set(rs) and not set(v.kept) & set(v.pruned)
    if latest is not None:
        assert any(top == latest for _s, top in v.kept)
    newest = sorted(rs, reverse=True)[: policy.last]
    assert set(newest) <= set(v.kept)
    again = decide(policy, list(v.kept), latest)
    assert not again.pruned

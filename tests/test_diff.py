"""Comparing revisions by content across quilt3's hash types: pure, tested directly
with hashes computed by quiltsync's own hashers (which tests elsewhere hold to quilt3's)."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from quiltsync.core.diff import Change, counts, diff_entries, same_content, under
from quiltsync.core.types import Entry
from quiltsync.local.hashing import chunked_sha256, legacy_sha256


def entries_for(path: Path, version: str) -> tuple[Entry, Entry]:
    size = path.stat().st_size
    pk = f"s3://b/k?versionId={version}"
    return Entry(chunked_sha256(path), size, pk), Entry(legacy_sha256(path), size, pk + "-other")


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=4096))
def test_one_part_files_compare_equal_across_sha256_and_chunked(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("d") / "f"
    path.write_bytes(data)
    chunked, legacy = entries_for(path, "1")
    assert same_content(chunked, legacy) is True and same_content(legacy, chunked) is True
    path.write_bytes(data + b"x")
    other = Entry(legacy_sha256(path), path.stat().st_size, "s3://b/other?versionId=9")
    assert same_content(chunked, other) is False


def test_a_two_part_file_hashed_both_ways_cannot_be_decided_from_entries(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(os.urandom(8 * 1024 * 1024 + 1))
    chunked, legacy = entries_for(path, "1")
    assert same_content(chunked, legacy) is None
    same_object = Entry(legacy.hash, legacy.size, chunked.physical_key)
    assert same_content(chunked, same_object) is True  # one object version is one content


def test_diff_entries_asks_the_callback_only_for_undecided_keys(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(os.urandom(8 * 1024 * 1024 + 1))
    chunked, legacy = entries_for(path, "1")
    small = tmp_path / "small"
    small.write_bytes(b"abc")
    s_chunked, s_legacy = entries_for(small, "2")
    asked: list[str] = []

    def same(key: str, a: Entry, b: Entry) -> bool:
        asked.append(key)
        return True

    old = {"big": chunked, "small": s_chunked, "gone": s_chunked}
    new = {"big": legacy, "small": s_legacy, "new": s_legacy}
    changes = diff_entries(old, new, same)
    assert changes == [Change("gone", "D"), Change("new", "A")] and asked == ["big"]
    assert diff_entries(old, new) == [Change("big", "M"), Change("gone", "D"), Change("new", "A")]
    assert counts(changes) == {"added": 1, "modified": 0, "deleted": 1}


def test_under_matches_a_file_or_a_folder_not_a_prefix() -> None:
    assert under("data/a.csv", "data") and under("data/a.csv", "data/") and under("data/a.csv", "data/a.csv")
    assert not under("database.csv", "data") and not under("data/a.csv", "data/a")


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=30).filter(lambda k: not k.endswith("/")),
       st.one_of(st.none(), st.text(min_size=1, max_size=20)))
def test_version_ids_are_read_as_quilt3_reads_them(key: str, vid: str | None) -> None:
    """The fast versionId reader (history checks every entry of every revision) agrees
    with quilt3's PhysicalKey on any key and versionId quilt3 writes."""
    from quiltsync.remote import settings as s3settings

    s3settings.import_quilt3()
    from quilt3.util import PhysicalKey

    from quiltsync.remote.registry import version_id_of

    url = str(PhysicalKey("bucket", key, vid))
    assert version_id_of(url) == PhysicalKey.from_url(url).version_id

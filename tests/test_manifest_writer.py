"""The manifest writer against quilt3 8.0 itself: same bytes, same top_hash.

quiltsync writes manifests without building a ``quilt3.Package`` (core.manifest,
ManifestWriter). Here quilt3 is the oracle: for generated packages (nested and odd
logical keys, entry and package metadata, workflow stamps, messages, the three
hash types) and for sequences of edits applied to one writer (its cache must
never serve a stale line), the manifest must equal quilt3's ``Package._dump``
byte for byte and the top_hash quilt3's ``top_hash``.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from quiltsync.core.manifest import ManifestError, ManifestWriter, parse_manifest, top_hash_of
from quiltsync.core.types import Entry, HashValue
from quiltsync.remote import settings as s3settings

s3settings.import_quilt3()

import quilt3  # noqa: E402
from quilt3.packages import PackageEntry  # noqa: E402
from quilt3.util import PhysicalKey  # noqa: E402

# path segments: ASCII punctuation that sorts around "/" and ".", spaces, non-ASCII
SEGMENT = st.text(alphabet="aAzZ09 ._-~+=,;!@#$%&()[]{}'éß日本\u00a0", min_size=1, max_size=6).filter(
    lambda s: s not in (".", ".."))
KEY = st.lists(SEGMENT, min_size=1, max_size=4).map("/".join)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)
HASH = st.one_of(
    st.builds(HashValue, st.just("sha2-256-chunked"), st.binary(min_size=32, max_size=32).map(
        lambda b: __import__("base64").b64encode(b).decode())),
    st.builds(HashValue, st.just("SHA256"), st.binary(min_size=32, max_size=32).map(bytes.hex)),
    st.builds(HashValue, st.just("SHA256"), st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)),
    # what no quilt3 writes, but a manifest may hold: values that need JSON escaping
    st.builds(HashValue, st.sampled_from(["SHA256", 'x"y', "é"]), st.text(max_size=12)),
)
VERSION = st.text(alphabet="abcdefXYZ0123456789._", min_size=1, max_size=12)


def _pk(lk: str, version: str) -> str:
    # as quilt3 renders a versioned physical key (quoting included)
    return str(PhysicalKey("bkt", f"team/pkg/{lk}", version))


@st.composite
def entries(draw: Any, max_size: int = 12) -> dict[str, Entry]:
    keys = draw(st.lists(KEY, max_size=max_size, unique=True))
    keys = [k for k in keys if not any(o.startswith(k + "/") for o in keys)]  # a file is no folder
    out = {}
    for lk in keys:
        meta = draw(st.none() | st.just({}) | st.fixed_dictionaries({"user_meta": JSON}) | st.dictionaries(
            st.text(max_size=4), JSON, max_size=2))
        out[lk] = Entry(draw(HASH), draw(st.integers(0, 2**40)), _pk(lk, draw(VERSION)), meta or None)
    return out


HEADER = st.fixed_dictionaries(
    {"version": st.just("v0")},
    optional={"user_meta": JSON,
              "workflow": st.fixed_dictionaries({"id": st.text(max_size=6),
                                                 "config": st.just("s3://bkt/.quilt/workflows/config.yml?versionId=x"),
                                                 "schemas": st.dictionaries(st.text(max_size=4), st.text(max_size=9),
                                                                            max_size=2)}),
              "message": st.none() | st.text(max_size=30)})


def quilt3_manifest(meta: dict[str, Any], ents: dict[str, Entry]) -> tuple[str, bytes]:
    pkg = quilt3.Package()
    pkg._meta = dict(meta)
    for lk, e in ents.items():
        pkg._set(lk, PackageEntry(PhysicalKey.from_url(e.physical_key), e.size, e.hash.as_manifest(),
                                  dict(e.meta) if e.meta else None))
    buf = io.BytesIO()
    pkg._dump(buf)
    return pkg.top_hash, buf.getvalue()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HEADER, entries())
def test_a_fresh_build_equals_quilt3s_manifest_and_top_hash(meta: dict[str, Any], ents: dict[str, Entry]) -> None:
    built = ManifestWriter().build(meta, ents)
    top, data = quilt3_manifest(meta, ents)
    assert built.data == data
    assert built.top_hash == top == top_hash_of(meta, ents)
    # and quiltsync reads back what it wrote
    assert parse_manifest(built.data, top) == (meta, ents)


class EditedPackage(RuleBasedStateMachine):
    """One writer across many revisions of a package: what it builds from its cache
    is always what quilt3 writes for the revision from scratch."""

    def __init__(self) -> None:
        super().__init__()
        self.writer = ManifestWriter()
        self.entries: dict[str, Entry] = {}
        self.meta: dict[str, Any] = {"version": "v0", "message": "m"}

    @rule(new=entries(max_size=6))
    def set_entries(self, new: dict[str, Entry]) -> None:
        for lk, e in new.items():
            if any(o.startswith(lk + "/") or lk.startswith(o + "/") for o in self.entries if o != lk):
                continue
            self.entries[lk] = e

    @rule(data=st.data())
    def delete_some(self, data: Any) -> None:
        if self.entries:
            for lk in data.draw(st.lists(st.sampled_from(sorted(self.entries)), max_size=4)):
                self.entries.pop(lk, None)

    @rule(data=st.data())
    def change_in_place(self, data: Any) -> None:
        """A new Entry equal in all but one field, or an equal copy (the cache must
        compare values, not only identities)."""
        if not self.entries:
            return
        lk = data.draw(st.sampled_from(sorted(self.entries)))
        e = self.entries[lk]
        self.entries[lk] = data.draw(st.sampled_from([
            Entry(e.hash, e.size + 1, e.physical_key, e.meta),
            Entry(e.hash, e.size, e.physical_key + "0", e.meta),
            Entry(HashValue(e.hash.type, e.hash.value[::-1]), e.size, e.physical_key, e.meta),
            Entry(e.hash, e.size, e.physical_key, {"user_meta": {"n": e.size}}),
            Entry(e.hash, e.size, e.physical_key, dict(e.meta) if e.meta else None)]))

    @rule(meta=HEADER)
    def new_header(self, meta: dict[str, Any]) -> None:
        self.meta = meta

    @invariant()
    def equals_quilt3(self) -> None:
        built = self.writer.build(self.meta, dict(self.entries))
        assert (built.top_hash, built.data) == quilt3_manifest(self.meta, self.entries)
        assert len(self.writer) == len(self.entries)


TestEditedPackage = EditedPackage.TestCase
TestEditedPackage.settings = settings(max_examples=60, stateful_step_count=25, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])


def test_a_record_over_quilt3s_limit_is_refused_with_the_key_named() -> None:
    big = Entry(HashValue("SHA256", "0" * 64), 1, "s3://bkt/k?versionId=v", {"user_meta": {"x": "y" * 2000}})
    with pytest.raises(ManifestError, match=r"'huge\.csv'.*at most 1000"):
        ManifestWriter(max_record_bytes=1000).build({"version": "v0"}, {"huge.csv": big})


def test_nan_in_metadata_is_refused_as_quilt3_refuses_it() -> None:
    with pytest.raises(ManifestError, match="package metadata"):
        ManifestWriter().build({"version": "v0", "user_meta": {"x": float("nan")}}, {})


def test_a_refused_build_leaves_the_writer_as_it_was() -> None:
    """A record quilt3 would refuse (NaN metadata) fails the build; the next build
    without it is still quilt3's manifest (no key half-added to the order)."""
    ok = {f"k{i}": Entry(HashValue("SHA256", f"{i:064x}"), i, f"s3://bkt/k{i}?versionId=v") for i in range(40)}
    writer = ManifestWriter()
    writer.build({"version": "v0"}, ok)
    bad = {**ok, "nan.csv": Entry(HashValue("SHA256", "0" * 64), 1, "s3://bkt/n?versionId=v", {"x": float("nan")})}
    with pytest.raises(ManifestError, match=r"nan\.csv"):
        writer.build({"version": "v0"}, bad)
    again = {**ok, "new.csv": Entry(HashValue("SHA256", "1" * 64), 2, "s3://bkt/new?versionId=v")}
    built = writer.build({"version": "v0", "message": "m"}, again)
    assert (built.top_hash, built.data) == quilt3_manifest({"version": "v0", "message": "m"}, again)

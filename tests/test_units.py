"""Pure parts: hashing, planning, scanning and key safety, without S3."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quiltsync.core.planner import plan_push
from quiltsync.core.types import RACY_NS, Entry, FileRecord, FileStat, HashValue
from quiltsync.engine.restore import unsafe_key
from quiltsync.local.hashing import chunked_sha256
from quiltsync.local.scanner import make_ignore_spec, scan_folder

MiB = 1024 * 1024


@pytest.mark.parametrize("size", [0, 1, 1023, 8 * MiB - 1, 8 * MiB, 8 * MiB + 1, 17 * MiB])
def test_chunked_sha256_equals_quilt3s_own_checksum(tmp_path: Path, size: int) -> None:
    """Our local hash equals quilt3's sha2-256-chunked for sizes around the part boundary."""
    from quilt3 import checksums

    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    expected = checksums.calculate_multipart_checksum_bytes(data, checksum_type=checksums.SHA256_CHUNKED_HASH_NAME)
    assert chunked_sha256(tmp_path / "f") == HashValue("sha2-256-chunked", expected)


H1, H2 = HashValue("sha2-256-chunked", "one"), HashValue("sha2-256-chunked", "two")
OLD = 1_000_000_000_000_000_000


def _base(**entries: HashValue) -> dict[str, Entry]:
    return {k: Entry(h, 10, f"s3://b/{k}?versionId=v") for k, h in entries.items()}


def _known(st: FileStat, h: HashValue, recorded_ns: int) -> FileRecord:
    return FileRecord(st, recorded_ns, Entry(h, st.size, "s3://b/k?versionId=v"))


def _never(lk: str, t: str) -> HashValue:
    raise AssertionError(f"{lk} should not be hashed")


def test_plan_trusts_an_unchanged_stat_and_reads_nothing() -> None:
    """Same stat as the index, long ago: unchanged without hashing."""
    st = FileStat(10, OLD, 1)
    plan = plan_push({"a": st}, {"a": _known(st, H1, OLD + 10 * RACY_NS)}, _base(a=H1), _never)
    assert not plan.changes and plan.hashed == 0


def test_plan_classifies_added_modified_and_deleted() -> None:
    """New keys are added, a size change is modified, a missing key is deleted."""
    idx = {"a": _known(FileStat(10, OLD, 1), H1, OLD * 2), "b": _known(FileStat(10, OLD, 2), H1, OLD * 2)}
    scan = {"a": FileStat(11, OLD + 5, 1), "c": FileStat(3, OLD, 3)}
    plan = plan_push(scan, idx, _base(a=H1, b=H1), _never)
    assert (plan.added, plan.modified, plan.deleted) == (["c"], ["a"], ["b"])


def test_plan_hashes_a_racy_or_touched_file_and_keeps_equal_content() -> None:
    """A stat recorded within the racy window, or a new mtime with the same size, is decided by hash."""
    st = FileStat(10, OLD, 1)
    racy = {"a": _known(st, H1, OLD + 1)}
    same = plan_push({"a": st}, racy, _base(a=H1), lambda lk, t: H1)
    changed = plan_push({"a": st}, racy, _base(a=H1), lambda lk, t: H2)
    assert not same.changes and same.refresh == {"a": H1} and same.hashed == 1
    assert changed.modified == ["a"]


@pytest.mark.parametrize("key,bad", [
    ("a/b.txt", False), ("..x/y", False), ("../etc/passwd", True), ("/etc/passwd", True),
    ("a/../../b", True), ("a//b", True), ("./a", True), ("a\\..\\b", True),
])
def test_restore_rejects_keys_that_escape_the_destination(key: str, bad: bool) -> None:
    """Absolute keys, `..` and empty segments can never name a path outside DEST."""
    assert (unsafe_key(key) is not None) == bad


def test_scan_skips_special_files_and_links_out_of_the_root(tmp_path: Path) -> None:
    """FIFOs, sockets and symlinks leading outside are skipped with a reason; the rest is scanned."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.txt").write_text("ok")
    (tmp_path / "secret").write_text("outside")
    os.symlink(tmp_path / "secret", root / "leak")
    os.symlink(root / "sub" / "ok.txt", root / "inside-link")
    os.symlink(root, root / "sub" / "loop")
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    try:
        scan = scan_folder(root, make_ignore_spec([]))
    finally:
        sock.close()
    assert set(scan.files) == {"sub/ok.txt", "inside-link"}
    reasons = {Path(s.path).name: s.reason for s in scan.skipped}
    assert "outside" in reasons["leak"] and "FIFO" in reasons["fifo"] and "FIFO" in reasons["sock"]


def test_scan_skips_names_that_are_not_utf8(tmp_path: Path) -> None:
    """A non-UTF-8 file name is skipped with a warning; its neighbours are scanned."""
    (tmp_path / "good.txt").write_text("g")
    with open(os.path.join(os.fsencode(tmp_path), b"bad-\xff.txt"), "wb") as f:
        f.write(b"b")
    scan = scan_folder(tmp_path, make_ignore_spec([]))
    assert set(scan.files) == {"good.txt"}
    assert any("UTF-8" in s.reason for s in scan.skipped)


def test_our_top_hash_equals_quilt3s_for_nested_unicode_keys_and_metadata() -> None:
    """The index is verified with our top_hash; it must equal quilt3's in quilt3's walk order."""
    import quilt3
    from quilt3.packages import PackageEntry
    from quilt3.util import PhysicalKey

    from quiltsync.core.manifest import top_hash_of

    keys = ["a-c", "a/b", "a/b0/c", "a.b", "Z", "é/ü.txt", "名前", "a/b-", "a b/c", "a_/x"]
    entries = {k: Entry(HashValue("sha2-256-chunked", f"h{i}"), i, f"s3://b/{k}?versionId=v{i}",
                            {"n": i} if i % 3 == 0 else None) for i, k in enumerate(keys)}
    meta = {"version": "v0", "message": "ünïcode message", "user_meta": {"k": [1, 2]}}
    pkg = quilt3.Package()
    pkg._meta = dict(meta)
    for k, e in entries.items():
        pkg._set(k, PackageEntry(PhysicalKey.from_url(e.physical_key), e.size, e.hash.as_manifest(), e.meta))
    assert top_hash_of(meta, entries) == pkg.top_hash


@pytest.mark.parametrize("extra", [[], ["*.log", "scratch/", "/top-only.txt", "deep/**/x"], ["*.log", "!keep.log"]])
def test_ignore_rules_agree_with_gitignore_semantics_of_pathspec(extra: list[str]) -> None:
    """The one-regex fast path decides exactly as pathspec's GitIgnoreSpec does."""
    import pathspec

    from quiltsync.local.scanner import DEFAULT_IGNORES

    rules = make_ignore_spec(extra)
    spec = pathspec.GitIgnoreSpec.from_lines([*DEFAULT_IGNORES, *extra])
    paths = ["a.txt", "x.swp", "sub/.x.swp", ".git/", "sub/.git/", ".git/HEAD", "#auto#", "sub/#a#",
             "run.log", "keep.log", "scratch/", "scratch/f", "top-only.txt", "sub/top-only.txt",
             "deep/a/b/x", "deep/x", "4913", "a4913", "notes~", ".#lock", "file.part", "partial",
             ".quiltsync-restore-x/", "d/Thumbs.db", "ok/.DS_Store"]
    assert {p: rules.match_file(p) for p in paths} == {p: spec.match_file(p) for p in paths}
    for p in paths:  # the scanner's per-entry check, for entries whose parents are not ignored
        rel = p.rstrip("/")
        parents = [rel[: i + 1] for i, c in enumerate(rel) if c == "/"]
        if not any(spec.match_file(d) for d in parents):
            assert rules.match_entry(rel, rel.rsplit("/", 1)[-1], p.endswith("/")) == spec.match_file(p), p
    assert rules.match_file("#auto#") and rules.match_file("x.swp") and not rules.match_file("a.txt")


def test_racy_window_is_wide_only_for_whole_second_timestamps() -> None:
    """Whole-second mtimes (FAT, ext3) get a 2 s window; nanosecond mtimes a 100 ms one."""
    from quiltsync.core.types import is_racy

    coarse, fine = 1_700_000_000_000_000_000, 1_700_000_000_123_456_789
    assert is_racy(coarse, coarse + 1_500_000_000) and not is_racy(coarse, coarse + 2_500_000_000)
    assert is_racy(fine, fine + 50_000_000) and not is_racy(fine, fine + 150_000_000)


def test_rescanning_named_paths_matches_a_full_scan(tmp_path: Path) -> None:
    """Updating a scan for the changed paths alone gives what a full scan gives."""
    from quiltsync.local.scanner import rescan_paths

    root = tmp_path / "r"
    for rel in ["a.txt", "d/x.txt", "d/y.txt", "gone/1.txt", "gone/sub/2.txt", "keep/k.txt"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    rules = make_ignore_spec(["*.log"])
    before = scan_folder(root, rules).files
    (root / "a.txt").write_text("changed, longer")
    (root / "d" / "y.txt").unlink()
    import shutil
    shutil.rmtree(root / "gone")
    (root / "new" / "deep").mkdir(parents=True)
    (root / "new" / "deep" / "n.txt").write_text("n")
    (root / "skip.log").write_text("ignored")
    (root / "d" / "x.txt").unlink()
    (root / "d" / "x.txt").mkdir()  # a file replaced by a directory
    (root / "d" / "x.txt" / "inner").write_text("i")
    changed = ["a.txt", "d/y.txt", "gone", "gone/1.txt", "new", "skip.log", "d/x.txt"]
    assert rescan_paths(root, rules, before, changed).files == scan_folder(root, rules).files


def test_the_watches_check_tolerates_directories_being_added_but_not_a_lasting_gap(tmp_path: Path) -> None:
    """A watch count that catches up is ok; one that stays below the directories is a failure."""
    from quiltsync.config import FolderConfig
    from quiltsync.service.health import check_watches

    (tmp_path / "a" / "b").mkdir(parents=True)
    folder = FolderConfig(path=tmp_path, package="t/w", registry="s3://bucket-w")
    counts = iter([1, 3])
    caught_up = check_watches([folder], lambda: next(counts), settle_s=0, layouts={})
    stays_low = check_watches([folder], lambda: 1, settle_s=0, layouts={})
    assert [r.status for r in caught_up] == ["ok"]
    assert [r.status for r in stays_low] == ["fail"] and "not watched" in stays_low[0].detail


def test_a_quilt3_conflict_becomes_a_push_conflict_without_quilt3s_force_advice() -> None:
    """quiltsync never forces a push over another writer's revision: quilt3's "Use force=True
    ... to overwrite" must not reach the push.conflict message, the hashes must."""
    from quilt3.util import QuiltConflictException

    from quiltsync.errors import PushConflict
    from quiltsync.remote.registry import describe, mapped_errors

    # quilt3 8.0's own wording (packages.py, check_hash_conficts)
    quilt3_error = QuiltConflictException(
        f"Package with hash {'a' * 64!r} already exists at the destination; "
        f"expected {'b' * 64!r}. Use force=True (Python) or --force (CLI) to overwrite.")
    with pytest.raises(PushConflict) as caught, mapped_errors("pushing team/data to s3://bucket"):
        raise quilt3_error
    message = str(caught.value)
    assert message.startswith("pushing team/data to s3://bucket: Package with hash")
    assert "a" * 64 in message and "b" * 64 in message
    assert "force" not in message.lower() and "overwrite" not in message
    assert "force" not in describe(quilt3_error).lower()


def test_the_demo_removes_the_temp_dir_it_made_and_keeps_a_workdir(tmp_path: Path, monkeypatch) -> None:
    """`make demo` leaves no quiltsync-demo-* dir in the temp dir, even when it fails; a
    --workdir belongs to the user and keeps its files."""
    import tempfile

    from quiltsync.cli.demo import demo_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its mkdtemp lands here, not in /tmp
    with demo_dir(None) as made:
        (made / "state").mkdir()
        (made / "state" / "index.sqlite3").write_text("x")
    assert made.parent == tmp_path and made.name.startswith("quiltsync-demo-")
    with pytest.raises(RuntimeError), demo_dir(None) as failed:
        (failed / "half-written").write_text("x")
        raise RuntimeError("the demo failed half-way")
    assert [p.name for p in tmp_path.iterdir()] == []
    work = tmp_path / "mine"
    with demo_dir(work) as kept:
        (kept / "experiments").mkdir()
    assert kept == work and (work / "experiments").is_dir()


# -- quilt3's values without importing quilt3 (the push path and the daemon never do) ----
def test_the_daemon_and_the_push_path_import_no_quilt3() -> None:
    """quilt3 costs about 24 MB resident: the daemon's modules, what a push to a
    bucket without workflows config calls before its requests, and the paths of
    the health checks must not import it (the cache check does only to read
    manifests that quilt3's cache holds)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import quiltsync.cli.main, quiltsync.cli.commands, quiltsync.service.daemon\n"
            "import quiltsync.service.health, quiltsync.engine.pusher\n"
            "from quiltsync.remote.registry import Registry, quilt_paths, quilt_credentials_file\n"
            "Registry.manifest_writer(); quilt_paths(); quilt_credentials_file()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'quilt3'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_quilt3_values_computed_without_quilt3_equal_quilt3s() -> None:
    from quilt3 import packages, util

    from quiltsync.remote.registry import manifest_max_record_size, quilt_paths

    assert quilt_paths() == (util.CACHE_PATH, util.BASE_PATH)
    assert manifest_max_record_size() == packages.MANIFEST_MAX_RECORD_SIZE


@settings(max_examples=300, deadline=None)
@given(key=st.text(min_size=1, max_size=40).filter(lambda k: "\x00" not in k),
       vid=st.one_of(st.none(), st.text(max_size=20)))
def test_physical_key_urls_equal_quilt3s(key: str, vid: str | None) -> None:
    from quilt3.util import PhysicalKey

    from quiltsync.remote.registry import physical_key_url

    assert physical_key_url("my-bucket", key, vid) == str(PhysicalKey("my-bucket", key, vid))


def test_warming_up_s3_at_daemon_start_never_fails_on_a_broken_aws_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing profile is reported by the first real request (push.failed, health),
    not by a traceback at start."""
    from quiltsync.remote import settings as s3settings

    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    s3settings.reset()
    s3settings.warm_up()
    monkeypatch.delenv("AWS_PROFILE")
    s3settings.reset()

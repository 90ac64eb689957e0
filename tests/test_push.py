"""The incremental push engine against the real local S3."""

from __future__ import annotations

import os
import time

import pytest

from conftest import Setup, manifest_files


def _fill(folder, n: int = 10, size: int = 2048) -> dict[str, bytes]:
    files = {}
    for i in range(n):
        data = os.urandom(size)
        (folder / f"file-{i:03d}.bin").write_bytes(data)
        files[f"file-{i:03d}.bin"] = data
    return files


def _object_puts(requests) -> list[str]:
    return [r.path for r in requests if r.method == "PUT" and not r.is_quilt_metadata]


def test_first_push_versions_every_file_with_pinned_versions(setup: Setup) -> None:
    """A first push creates a revision whose files are the folder's bytes, each pinned to a versionId."""
    files = _fill(setup.folder)
    result = setup.pusher().push()
    assert result.pushed and result.added == len(files) and result.parent_top_hash is None
    assert setup.registry_api().latest(setup.package) == result.top_hash
    rev = setup.registry_api().revision(setup.package, result.top_hash)
    assert all("versionId=" in e.physical_key for e in rev.entries.values())
    assert manifest_files(setup, result.top_hash) == files


def test_second_push_after_one_edit_uploads_exactly_that_file(setup: Setup, local_s3) -> None:
    """After one edit, a new process uploads only the edited file, in at most 15 requests."""
    _fill(setup.folder, n=50)
    first = setup.pusher().push()
    (setup.folder / "file-007.bin").write_bytes(b"changed " * 500)
    local_s3.reset_requests()
    second = setup.pusher().push()  # a new pusher and index handle: as a new process
    puts = _object_puts(local_s3.requests)
    assert puts == [f"/{setup.registry[5:]}/team/data/file-007.bin"]
    assert len(local_s3.requests) <= 15, [str(r) for r in local_s3.requests]
    assert second.parent_top_hash == first.top_hash and second.modified == 1 and second.added == 0
    assert manifest_files(setup, second.top_hash)["file-007.bin"] == b"changed " * 500


def test_deletion_and_added_subfolder_make_one_revision(setup: Setup) -> None:
    """Deleting a file and adding a nested folder show up in the next revision and nowhere else."""
    files = _fill(setup.folder, n=4)
    pusher = setup.pusher()
    pusher.push()
    (setup.folder / "file-001.bin").unlink()
    (setup.folder / "new" / "deeper").mkdir(parents=True)
    (setup.folder / "new" / "deeper" / "x.txt").write_text("x")
    (setup.folder / "new" / "y.txt").write_text("y")
    result = pusher.push()
    assert (result.added, result.modified, result.deleted) == (2, 0, 1)
    got = manifest_files(setup, result.top_hash)
    expected = {k: v for k, v in files.items() if k != "file-001.bin"}
    expected.update({"new/deeper/x.txt": b"x", "new/y.txt": b"y"})
    assert got == expected


def test_a_20_mib_file_is_pushed_multipart_and_restores_byte_for_byte(setup: Setup, tmp_path) -> None:
    """Files of 8 MiB and more go multipart; the revision restores with the same bytes."""
    from quiltsync.engine.restore import restore

    big = os.urandom(20 * 1024 * 1024)
    (setup.folder / "model.bin").write_bytes(big)
    result = setup.pusher().push()
    report = restore(setup.registry_api(), setup.package, result.top_hash, tmp_path / "out")
    assert report.verified == 1
    assert (tmp_path / "out" / "model.bin").read_bytes() == big


def test_unchanged_folder_makes_no_push(setup: Setup, local_s3) -> None:
    """With nothing changed, no revision is made and only the latest pointer is read."""
    _fill(setup.folder, n=5)
    setup.pusher().push()
    before = setup.registry_api().versions(setup.package)
    local_s3.reset_requests()
    result = setup.pusher().push()
    assert not result.pushed
    assert [r.method for r in local_s3.requests] == ["GET"]
    assert setup.registry_api().versions(setup.package) == before


def test_touch_without_a_content_change_makes_no_push(setup: Setup) -> None:
    """A new mtime with the same bytes is recognised by hash: no new revision."""
    _fill(setup.folder, n=3)
    pusher = setup.pusher()
    first = pusher.push()
    later = time.time() + 5
    os.utime(setup.folder / "file-000.bin", (later, later))
    result = pusher.push()
    assert not result.pushed and result.top_hash == first.top_hash


def test_an_old_top_hash_restores_its_old_bytes(setup: Setup, tmp_path) -> None:
    """Restoring revision 1 after an edit gives revision 1's bytes, verified."""
    from quiltsync.engine.restore import restore

    (setup.folder / "a.txt").write_text("version one")
    pusher = setup.pusher()
    first = pusher.push()
    (setup.folder / "a.txt").write_text("version two!")
    pusher.push()
    restore(setup.registry_api(), setup.package, first.top_hash, tmp_path / "old")
    assert (tmp_path / "old" / "a.txt").read_text() == "version one"


def test_two_pushes_within_one_second_both_stay_in_history(setup: Setup) -> None:
    """quilt3 names revision pointers by second; quiltsync never pushes one package twice in a second."""
    pusher = setup.pusher()
    tops = []
    for i in range(3):
        (setup.folder / "counter.txt").write_text(str(i))
        tops.append(pusher.push().top_hash)
    assert [t for _, t in setup.registry_api().versions(setup.package)] == tops


def test_a_second_writer_moving_latest_loses_neither_revision(setup: Setup) -> None:
    """Another writer's revision stays in history; ours is pushed on top and equals the folder."""
    import quilt3

    (setup.folder / "ours.txt").write_text("1")
    (setup.folder / "shared.txt").write_text("base")
    pusher = setup.pusher()
    first = pusher.push()
    theirs = quilt3.Package.browse(setup.package, setup.registry)
    theirs_file = setup.root / "theirs.txt"
    theirs_file.write_text("from another machine")
    theirs.set("theirs.txt", str(theirs_file))
    time.sleep(1.1)
    other = theirs.push(setup.package, setup.registry, message="other writer")
    (setup.folder / "ours.txt").write_text("2")
    result = pusher.push()
    history = [t for _, t in setup.registry_api().versions(setup.package)]
    assert history == [first.top_hash, other.top_hash, result.top_hash]
    assert result.parent_top_hash == other.top_hash
    assert manifest_files(setup, result.top_hash) == {"ours.txt": b"2", "shared.txt": b"base"}
    assert "theirs.txt" in manifest_files(setup, other.top_hash)


def test_a_new_process_builds_the_next_revision_without_reading_a_manifest(setup: Setup, local_s3) -> None:
    """The index is enough to rebuild the last revision: no manifest GET, no browse."""
    _fill(setup.folder, n=20)
    setup.pusher().push()
    (setup.folder / "file-003.bin").write_bytes(b"new")
    local_s3.reset_requests()
    setup.pusher().push()
    assert not [r for r in local_s3.requests if r.method == "GET" and "/.quilt/packages/" in r.path]


def test_a_tampered_index_is_never_built_on(setup: Setup, local_s3) -> None:
    """Index rows that no longer reproduce their top_hash are replaced from the registry before a push."""
    import sqlite3

    _fill(setup.folder, n=10)
    first = setup.pusher().push()
    db = sqlite3.connect(setup.state_dir / "index.sqlite3")
    db.execute("UPDATE entry SET hash = 'AAAA' WHERE logical_key = 'file-002.bin'")
    db.commit()
    db.close()
    (setup.folder / "file-005.bin").write_bytes(b"an edit after the index was damaged")
    local_s3.reset_requests()
    result = setup.pusher().push()
    assert result.parent_top_hash == first.top_hash and result.modified == 1
    assert _object_puts(local_s3.requests) == [f"/{setup.registry[5:]}/team/data/file-005.bin"]
    old = setup.registry_api().revision(setup.package, first.top_hash).entries["file-002.bin"]
    new = setup.registry_api().revision(setup.package, result.top_hash).entries["file-002.bin"]
    assert new.hash == old.hash and new.hash.value != "AAAA"


def test_a_missing_index_is_rebuilt_from_the_registry_and_the_folder(setup: Setup, local_s3) -> None:
    """Deleting the state dir loses nothing: the folder is compared with the latest revision."""
    import shutil

    _fill(setup.folder, n=10)
    first = setup.pusher().push()
    shutil.rmtree(setup.state_dir)
    (setup.folder / "file-004.bin").write_bytes(b"edited while the index was gone")
    local_s3.reset_requests()
    result = setup.pusher().push()
    assert result.parent_top_hash == first.top_hash
    assert (result.added, result.modified, result.deleted) == (0, 1, 0)
    assert _object_puts(local_s3.requests) == [f"/{setup.registry[5:]}/team/data/file-004.bin"]


@pytest.mark.parametrize("name", [
    "with space.txt",
    "ünïcødé-名前.txt",
    "a/b/c/d/e/f/g/h/deep.txt",
    "odd#chars%20&+=,;@[].txt",
    "question?.txt",
])
def test_odd_names_round_trip(setup: Setup, tmp_path, name: str) -> None:
    """Spaces, unicode, URL-special characters and deep paths restore to the same name and bytes."""
    from quiltsync.engine.restore import restore

    path = setup.folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(name.encode() * 100)
    result = setup.pusher().push()
    restore(setup.registry_api(), setup.package, result.top_hash, tmp_path / "out")
    assert (tmp_path / "out" / name).read_bytes() == name.encode() * 100


def test_ignored_files_are_never_pushed(setup: Setup) -> None:
    """Built-in ignores (swap files, .git/) and the folder's own patterns keep files out."""
    from conftest import write_config

    write_config(setup.config_path, setup.folder, setup.package, setup.registry, setup.endpoint,
                 setup.state_dir, 'ignore = ["*.log", "scratch/"]\n')
    for rel in ["keep.txt", ".notes.txt.swp", ".git/HEAD", "run.log", "scratch/tmp.bin", "sub/keep2.txt"]:
        (setup.folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (setup.folder / rel).write_text(rel)
    result = setup.pusher().push()
    assert set(manifest_files(setup, result.top_hash)) == {"keep.txt", "sub/keep2.txt"}


def test_an_emptied_folder_is_refused_not_pushed_as_empty(setup: Setup) -> None:
    """A folder that suddenly has no files is not pushed as a deletion of everything."""
    from quiltsync.errors import PushRefused

    _fill(setup.folder, n=3)
    pusher = setup.pusher()
    first = pusher.push()
    for f in setup.folder.iterdir():
        f.unlink()
    with pytest.raises(PushRefused, match="empty"):
        pusher.push()
    assert setup.registry_api().latest(setup.package) == first.top_hash


def test_a_same_size_rewrite_right_after_a_push_is_not_missed(setup: Setup) -> None:
    """A rewrite with the same size within the mtime's racy window is found by hash, not trusted by stat."""
    (setup.folder / "log.txt").write_text("first")
    pusher = setup.pusher()
    pusher.push()
    (setup.folder / "log.txt").write_text("second")
    result = pusher.push()
    (setup.folder / "log.txt").write_text("third!")
    again = pusher.push()
    assert again.pushed and again.parent_top_hash == result.top_hash
    assert manifest_files(setup, again.top_hash)["log.txt"] == b"third!"


def test_a_crash_between_push_and_index_commit_converges_without_a_duplicate_revision(setup: Setup, local_s3) -> None:
    """If the index misses the last push (process killed before its commit), the next pass adopts it."""
    import sqlite3

    _fill(setup.folder, n=5)
    setup.pusher().push()
    saved = setup.root / "index-before.sqlite3"
    src = sqlite3.connect(setup.state_dir / "index.sqlite3")
    dst = sqlite3.connect(saved)
    src.backup(dst)
    src.close()
    dst.close()
    (setup.folder / "file-002.bin").write_bytes(b"pushed, but the index never heard of it" * 40)
    second = setup.pusher().push()
    for suffix in ("", "-wal", "-shm"):
        (setup.state_dir / f"index.sqlite3{suffix}").unlink(missing_ok=True)
    os.replace(saved, setup.state_dir / "index.sqlite3")
    local_s3.reset_requests()
    third = setup.pusher().push()
    assert not third.pushed and third.top_hash == second.top_hash
    assert _object_puts(local_s3.requests) == []
    assert [t for _, t in setup.registry_api().versions(setup.package)][-1] == second.top_hash


def test_a_file_rewritten_during_its_upload_is_never_published_torn(setup: Setup, local_s3) -> None:
    """If a file changes while it uploads, nothing is published; the next pass pushes a still copy."""
    (setup.folder / "model.bin").write_bytes(b"a" * 5000)
    pusher = setup.pusher()
    first = pusher.push()
    (setup.folder / "model.bin").write_bytes(b"b" * 9000)
    old = time.time() - 100  # not recently written: uploaded straight from the folder
    os.utime(setup.folder / "model.bin", (old, old))
    rewrites = {"n": 0}

    def rewrite_during_upload(req):
        if req.method == "PUT" and req.path.endswith("/team/data/model.bin") and rewrites["n"] == 0:
            rewrites["n"] += 1
            with open(setup.folder / "model.bin", "r+b") as f:  # rewritten in place mid-push
                f.write(b"c" * 9000)
        return None

    local_s3.set_fault(rewrite_during_upload)
    try:
        aborted = pusher.push()
    finally:
        local_s3.set_fault(None)
    assert rewrites["n"] == 1 and not aborted.pushed
    assert setup.registry_api().latest(setup.package) == first.top_hash
    assert aborted.changed_during_push == ["model.bin"]
    again = pusher.push()
    assert again.pushed
    assert manifest_files(setup, again.top_hash) == {"model.bin": b"c" * 9000}


def test_a_file_still_being_written_is_pushed_from_a_still_copy(setup: Setup, local_s3) -> None:
    """A recently written file is copied first: what is published is one state of it, whole."""
    (setup.folder / "log.txt").write_bytes(b"1" * 4000)
    pusher = setup.pusher()

    def append_during_upload(req):
        if req.method == "PUT" and req.path.endswith("/team/data/log.txt"):
            with open(setup.folder / "log.txt", "ab") as f:
                f.write(b"2" * 100)
        return None

    local_s3.set_fault(append_during_upload)
    try:
        result = pusher.push()
    finally:
        local_s3.set_fault(None)
    assert result.pushed and result.changed_during_push == ["log.txt"]
    assert manifest_files(setup, result.top_hash) == {"log.txt": b"1" * 4000}
    again = pusher.push()
    assert manifest_files(setup, again.top_hash)["log.txt"] == (setup.folder / "log.txt").read_bytes()


# -- cost that follows the change (issue 13) ---------------------------------------------
def test_a_renamed_directory_uploads_no_data_and_restores_byte_for_byte(setup: Setup, local_s3, tmp_path) -> None:
    """Renaming a directory of 200 files: every entry points at the object versions
    already in the bucket (0 data uploads), and the revision restores the same bytes."""
    from quiltsync.engine.restore import restore

    (setup.folder / "run1").mkdir()
    files = {f"run1/f{i:03d}.dat": os.urandom(300 + i) for i in range(200)}
    for lk, data in files.items():
        (setup.folder / lk).write_bytes(data)
    pusher = setup.pusher()
    first = pusher.push()
    (setup.folder / "run1").rename(setup.folder / "run-2025")
    local_s3.reset_requests()
    second = pusher.push()
    assert _object_puts(local_s3.requests) == []
    assert (second.added, second.deleted, second.reused, second.bytes_uploaded) == (200, 200, 200, 0)
    old = setup.registry_api().revision(setup.package, first.top_hash).entries
    new = setup.registry_api().revision(setup.package, second.top_hash).entries
    assert {new[f"run-2025/{lk[5:]}"].physical_key for lk in files} == {old[lk].physical_key for lk in files}
    report = restore(setup.registry_api(), setup.package, second.top_hash, tmp_path / "out")
    assert report.verified == 200
    assert {lk: (tmp_path / "out" / "run-2025" / lk[5:]).read_bytes() for lk in files} == files


def test_a_copied_file_reuses_its_version_but_a_same_size_other_file_is_uploaded(setup: Setup, local_s3) -> None:
    """A copy is matched by size and hash, never by size alone."""
    big = os.urandom(9 * 1024 * 1024)
    (setup.folder / "model.bin").write_bytes(big)
    pusher = setup.pusher()
    pusher.push()
    (setup.folder / "model-copy.bin").write_bytes(big)
    (setup.folder / "other.bin").write_bytes(os.urandom(len(big)))
    local_s3.reset_requests()
    result = pusher.push()
    puts = {r.path.split("?")[0] for r in local_s3.requests if r.method in ("PUT", "POST") and not r.is_quilt_metadata}
    assert puts == {f"/{setup.registry[5:]}/team/data/other.bin"}
    assert (result.added, result.reused) == (2, 1)
    got = manifest_files(setup, result.top_hash)
    assert got["model-copy.bin"] == big == got["model.bin"]


def test_plain_quilt3_browses_verifies_and_installs_what_quiltsync_wrote(setup: Setup, tmp_path) -> None:
    """The manifest is quilt3's own: its bytes are what quilt3 dumps for the revision
    it browses, quilt3's verify accepts the folder, and install restores old bytes."""
    import io

    import quilt3

    _fill(setup.folder, n=30)
    (setup.folder / "ünï côdé" / "a b").mkdir(parents=True)
    (setup.folder / "ünï côdé" / "a b" / "x+y=z.csv").write_text("1,2\n")
    pusher = setup.pusher()
    first = pusher.push()
    old = (setup.folder / "file-003.bin").read_bytes()
    (setup.folder / "file-003.bin").write_bytes(b"new bytes")
    (setup.folder / "file-004.bin").unlink()
    second = pusher.push()
    assert second.manifest_bytes > 0
    pkg = quilt3.Package.browse(setup.package, setup.registry, top_hash=second.top_hash)
    assert pkg.top_hash == second.top_hash
    dumped = io.BytesIO()
    pkg.dump(dumped)
    stored = setup.registry_api().manifest_bytes(second.top_hash)
    assert dumped.getvalue() == stored and len(stored) == second.manifest_bytes
    assert pkg.verify(str(setup.folder), extra_files_ok=False)
    quilt3.Package.install(setup.package, setup.registry, top_hash=first.top_hash, dest=str(tmp_path / "old"))
    assert (tmp_path / "old" / "file-003.bin").read_bytes() == old
    assert (tmp_path / "old" / "ünï côdé" / "a b" / "x+y=z.csv").read_text() == "1,2\n"


def test_new_files_of_the_same_sizes_do_not_excuse_a_mass_deletion(setup: Setup) -> None:
    """Only bytes that come back count as moved: other content of the same size is a
    deletion plus new files, and the guard holds it."""
    from quiltsync.errors import DeletionsHeld

    _fill(setup.folder, n=20)
    pusher = setup.pusher()
    pusher.push()
    for i in range(20):
        (setup.folder / f"file-{i:03d}.bin").unlink()
        (setup.folder / f"other-{i:03d}.bin").write_bytes(os.urandom(2048))
    with pytest.raises(DeletionsHeld, match="delete 20 of 20"):
        pusher.push()

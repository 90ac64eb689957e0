"""The everyday questions, on the local S3: a file as it was, what changed, and when.

Three revisions: params.csv modified, notes.txt added, old.txt deleted. Pushes
are made through the CLI as a user would; revision times come from S3's pointer
names (unix seconds), so the tests pick times between them from `history`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from conftest import Setup, json_events, write_config
from daemonproc import DaemonProcess


def push(setup: Setup) -> str:
    out = setup.cli("push", check=True).stdout.split()
    assert out, "push made no revision"
    return out[1]


def history(setup: Setup, *args: str) -> list[dict]:
    return json.loads(setup.cli("history", setup.package, "--json", *args, check=True).stdout)["revisions"]


@pytest.fixture
def three(setup: Setup) -> tuple[Setup, list[str]]:
    """Three revisions a second apart: v1 (params, old), v2 (params changed, notes
    added), v3 (old deleted, data/ added)."""
    f = setup.folder
    (f / "params.csv").write_text("alpha,1\n")
    (f / "old.txt").write_text("to be deleted")
    tops = [push(setup)]
    (f / "params.csv").write_text("alpha,2\n")
    (f / "notes.txt").write_text("added in v2")
    tops.append(push(setup))
    (f / "old.txt").unlink()
    (f / "data").mkdir()
    (f / "data" / "run.bin").write_bytes(os.urandom(64))
    tops.append(push(setup))
    return setup, tops


def test_history_counts_what_each_revision_changed_and_filters_by_path(three) -> None:
    setup, tops = three
    revs = history(setup)
    assert [r["top_hash"] for r in revs] == tops
    assert [(r["added"], r["modified"], r["deleted"]) for r in revs] == [(2, 0, 0), (1, 1, 0), (1, 0, 1)]
    touched = history(setup, "--path", "params.csv")
    assert [r["top_hash"] for r in touched] == tops[:2]
    assert [r["changes"] for r in touched] == [[{"key": "params.csv", "kind": "A"}],
                                               [{"key": "params.csv", "kind": "M"}]]
    assert [r["top_hash"] for r in history(setup, "--path", "data")] == tops[2:]
    assert [r["top_hash"] for r in history(setup, "--limit", "2")] == tops[1:]
    plain = setup.cli("history", setup.package, "--path", "old.txt", check=True).stdout.splitlines()
    assert plain[0].startswith(revs[0]["time"]) and "+2 ~0 -0" in plain[0] and plain[1].strip() == "A old.txt"
    assert plain[-1].strip() == "D old.txt" and len(plain) == 4


def test_restore_at_a_time_with_path_restores_just_that_file_with_its_old_bytes(three, tmp_path) -> None:
    setup, tops = three
    revs = history(setup)
    # A moment after v1 and before v2 picks v1; a plain UTC time string, no zone.
    at = revs[0]["time"].rstrip("Z")
    proc = setup.cli("restore", setup.package, "--at", at, "--path", "params.csv", "--dest", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "params.csv").read_text() == "alpha,1\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["params.csv"]
    first = proc.stdout.splitlines()[0]
    assert tops[0] in first and "latest at" in first and "2 newer revision(s)" in first
    assert "1 of 1 files verified" in proc.stdout
    # A folder path restores everything under it.
    proc = setup.cli("restore", setup.package, "--top-hash", tops[2][:10], "--path", "data/",
                     "--dest", str(tmp_path / "only-data"), check=True)
    assert [p.name for p in (tmp_path / "only-data" / "data").iterdir()] == ["run.bin"]
    # Before the first revision: a clear error.
    proc = setup.cli("restore", setup.package, "--at", "2001-01-01", "--dest", str(tmp_path / "none"))
    assert proc.returncode == 1 and "no revision yet" in proc.stderr and "Traceback" not in proc.stderr
    proc = setup.cli("restore", setup.package, "--top-hash", tops[0], "--path", "nope.txt",
                     "--dest", str(tmp_path / "nope"))
    assert proc.returncode == 1 and "'nope.txt'" in proc.stderr and not (tmp_path / "nope").exists()


def test_diff_between_revisions_prints_exactly_the_changed_keys(three) -> None:
    setup, tops = three
    proc = setup.cli("diff", setup.package, tops[0][:8], tops[2][:8], check=True)
    assert proc.stdout.splitlines() == ["A data/run.bin", "A notes.txt", "D old.txt", "M params.csv"]
    as_json = json.loads(setup.cli("diff", setup.package, tops[1], tops[2], "--json", check=True).stdout)
    assert as_json["from"] == tops[1] and as_json["to"] == tops[2]
    assert as_json["changes"] == [{"key": "data/run.bin", "kind": "A"}, {"key": "old.txt", "kind": "D"}]


def test_diff_against_the_folder_shows_an_unpushed_edit(three) -> None:
    setup, tops = three
    assert setup.cli("diff", setup.package, tops[2], check=True).stdout == ""
    (setup.folder / "notes.txt").write_text("edited, not pushed")
    (setup.folder / "params.csv").touch()  # a touch is not a change
    (setup.folder / "new.txt").write_text("new")
    proc = setup.cli("diff", setup.package, tops[2], check=True)
    assert proc.stdout.splitlines() == ["A new.txt", "M notes.txt"]  # sorted by key


def test_reading_history_again_costs_one_list_and_no_manifest(three, local_s3) -> None:
    setup, _tops = three
    history(setup)
    local_s3.reset_requests()
    history(setup)
    gets = [r for r in local_s3.requests if r.method == "GET" and "list-type" not in r.query]
    lists = [r for r in local_s3.requests if "list-type" in r.query]
    assert len(lists) == 1 and [r.path.rsplit("/", 1)[-1] for r in gets] == ["latest"]


def test_a_diff_across_hash_types_shows_no_false_changes(setup: Setup, local_s3) -> None:
    """The same bytes in a revision written by another tool with legacy SHA256 hashes
    and other object versions (a one-part file and a two-part one) against
    quiltsync's sha2-256-chunked revision: no change either way, nor against the folder."""
    import quilt3

    from quiltsync.local.hashing import legacy_sha256

    (setup.folder / "small.txt").write_text("same bytes")
    (setup.folder / "big.bin").write_bytes(os.urandom(9 * 1024 * 1024))
    ours = push(setup)
    bucket = setup.registry[len("s3://"):]
    legacy = quilt3.Package()
    for lk in ("small.txt", "big.bin"):
        vid = local_s3.client().put_object(Bucket=bucket, Key=f"copies/{lk}",
                                           Body=(setup.folder / lk).read_bytes())["VersionId"]
        legacy.set(lk, f"s3://{bucket}/copies/{lk}?versionId={vid}")
        legacy[lk].hash = legacy_sha256(setup.folder / lk).as_manifest()
        legacy[lk].size = (setup.folder / lk).stat().st_size
    time.sleep(1.0)
    theirs = legacy.push(setup.package, setup.registry, message="legacy hashes", force=True,
                         selector_fn=lambda _lk, _e: False).top_hash
    types = {e.hash.type for e in setup.registry_api().revision(setup.package, theirs).entries.values()}
    assert types == {"SHA256"}
    assert setup.cli("diff", setup.package, ours, theirs, check=True).stdout == ""
    assert setup.cli("diff", setup.package, theirs, ours, check=True).stdout == ""
    assert setup.cli("diff", setup.package, theirs, check=True).stdout == ""  # against the folder
    (setup.folder / "big.bin").write_bytes(os.urandom(9 * 1024 * 1024))
    assert setup.cli("diff", setup.package, theirs, check=True).stdout == "M big.bin\n"


def test_revert_brings_old_bytes_back_and_the_daemon_pushes_them(three, tmp_path) -> None:
    setup, tops = three
    write_config(setup.config_path, setup.folder, setup.package, setup.registry, setup.endpoint,
                 setup.state_dir, "settle_seconds = 0.3\nmax_delay_seconds = 5\n")
    d = DaemonProcess(setup.config_path)
    try:
        d.wait_for(lambda e: e.get("event") == "rescan.completed")
        proc = setup.cli("revert", setup.package, "--top-hash", tops[0][:8], "--path", "params.csv",
                         "--path", "old.txt")
        assert proc.returncode == 0, proc.stderr
        assert (setup.folder / "params.csv").read_text() == "alpha,1\n"
        assert (setup.folder / "old.txt").read_text() == "to be deleted"
        assert not [p for p in setup.folder.iterdir() if p.name.startswith(".quiltsync-")]
        done = d.wait_for(lambda e: e.get("event") == "push.completed")
        assert done["parent_top_hash"] == tops[2] and done["modified"] == 1 and done["added"] == 1
    finally:
        d.kill()
    events = [e for e in json_events(proc.stderr) if e.get("event") == "revert.completed"]
    assert events and events[0]["files"] == 2


def test_revert_refuses_to_overwrite_an_unpushed_change(three) -> None:
    setup, tops = three
    (setup.folder / "params.csv").write_text("alpha,3 not pushed\n")
    proc = setup.cli("revert", setup.package, "--top-hash", tops[0], "--path", "params.csv")
    assert proc.returncode == 1 and "not in the latest revision" in proc.stderr and "--force" in proc.stderr
    assert (setup.folder / "params.csv").read_text() == "alpha,3 not pushed\n"
    proc = setup.cli("revert", setup.package, "--top-hash", tops[0], "--path", "params.csv", "--force", check=True)
    assert (setup.folder / "params.csv").read_text() == "alpha,1\n"


def test_a_package_not_in_the_config_works_with_registry(three, tmp_path) -> None:
    setup, tops = three
    other = tmp_path / "other.toml"
    write_config(other, tmp_path, "some/thing", setup.registry, setup.endpoint, tmp_path / "st")
    base = ("--config", str(other))
    from conftest import run_cli

    proc = run_cli(*base, "history", setup.package)
    assert proc.returncode == 78 and "some/thing" in proc.stderr
    revs = json.loads(run_cli(*base, "history", setup.package, "--registry", setup.registry, "--json",
                              check=True).stdout)["revisions"]
    assert [r["top_hash"] for r in revs] == tops
    assert run_cli(*base, "diff", setup.package, tops[0], tops[1], "--registry", setup.registry,
                   check=True).stdout.splitlines() == ["A notes.txt", "M params.csv"]
    run_cli(*base, "restore", setup.package, "--top-hash", tops[1], "--registry", setup.registry,
            "--dest", str(tmp_path / "r"), check=True)
    assert (tmp_path / "r" / "params.csv").read_text() == "alpha,2\n"
    proc = run_cli(*base, "diff", setup.package, tops[0], "--registry", setup.registry)
    assert proc.returncode == 2 and "give TO" in proc.stderr
    proc = run_cli(*base, "history", setup.package, "--registry", "s3://Bad_Bucket")
    assert proc.returncode == 2 and "--registry" in proc.stderr


def test_a_numeric_top_hash_that_matches_nothing_is_not_read_as_a_date(three, tmp_path) -> None:
    setup, _tops = three
    proc = setup.cli("restore", setup.package, "--top-hash", "91230415", "--dest", str(tmp_path / "x"))
    assert proc.returncode == 1 and "no revision" in proc.stderr and not (tmp_path / "x").exists()


def test_revert_never_writes_through_a_symlinked_folder(three, tmp_path) -> None:
    setup, tops = three
    outside = tmp_path / "outside"
    outside.mkdir()
    (setup.folder / "data" / "run.bin").unlink()
    (setup.folder / "data").rmdir()
    (setup.folder / "data").symlink_to(outside)
    proc = setup.cli("revert", setup.package, "--top-hash", tops[2], "--path", "data/run.bin")
    assert proc.returncode == 1 and "symbolic link" in proc.stderr and "nothing was written" in proc.stderr
    assert list(outside.iterdir()) == []


def test_comparing_a_hostile_manifest_never_writes_outside_a_temp_dir(setup: Setup, local_s3, tmp_path) -> None:
    """Two revisions (written by someone else) whose entry is keyed by an absolute path and
    hashed in types that cannot be compared (CRC64NVME vs SHA256): diff and history read
    the bytes to decide, under a fixed name, and write nothing where the key points."""
    import hashlib

    from quiltsync.core.manifest import top_hash_of
    from quiltsync.core.types import Entry, HashValue

    bucket = setup.registry[len("s3://"):]
    c = local_s3.client()
    body = b"same bytes either way"
    vid = c.put_object(Bucket=bucket, Key="elsewhere/blob", Body=body)["VersionId"]
    other = c.put_object(Bucket=bucket, Key="elsewhere/blob2", Body=body)["VersionId"]
    key = str(tmp_path / "escape.txt")  # an absolute key: joined to a local dir, it is that path
    tops = []
    for stamp, (htype, value, v) in enumerate([("SHA256", hashlib.sha256(body).hexdigest(), vid),
                                               ("CRC64NVME", "AAAAAAAAAAA=", other)]):
        e = Entry(HashValue(htype, value), len(body), f"s3://{bucket}/elsewhere/{'blob' if v == vid else 'blob2'}"
                  f"?versionId={v}")
        meta = {"version": "v0", "message": f"rev {stamp}"}
        top = top_hash_of(meta, {key: e})
        lines = [json.dumps(meta), json.dumps({"logical_key": key, "physical_keys": [e.physical_key],
                                               "size": e.size, "hash": e.hash.as_manifest(), "meta": {}})]
        c.put_object(Bucket=bucket, Key=f".quilt/packages/{top}", Body="\n".join(lines).encode())
        c.put_object(Bucket=bucket, Key=f".quilt/named_packages/evil/pkg/{1_700_000_000 + stamp}", Body=top.encode())
        tops.append(top)
    proc = subprocess_in(tmp_path, setup, "diff", "evil/pkg", tops[0], tops[1], "--registry", setup.registry)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # the same bytes, read from both object versions
    assert not (tmp_path / "escape.txt").exists()


def subprocess_in(cwd: Path, setup: Setup, *args: str):  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "quiltsync", "--config", str(setup.config_path), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)

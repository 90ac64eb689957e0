"""Health: versioning, pinned manifests, the local Quilt cache, and clear errors.

Cache states are made for real by quilt3 (browse, install-like restores) against
the local S3, or written in quilt3's exact layout.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest

from conftest import Setup, json_events, write_config
from daemonproc import DaemonProcess

_n = itertools.count(1)


def _bucket(local_s3, versioning) -> str:
    name = f"qs-health-{os.getpid()}-{next(_n)}"
    local_s3.create_bucket(name, versioning=versioning)
    return name


def _point_at(setup: Setup, bucket: str, extra: str = "") -> None:
    setup.registry = f"s3://{bucket}"
    write_config(setup.config_path, setup.folder, setup.package, setup.registry, setup.endpoint,
                 setup.state_dir, extra)


@pytest.mark.parametrize("versioning,word", [(False, "never enabled"), ("Suspended", "Suspended")])
def test_check_fails_for_a_bucket_without_versioning_and_names_it(setup: Setup, local_s3, versioning, word) -> None:
    """`check` exits 1, names the bucket, says why and how to enable versioning."""
    bucket = _bucket(local_s3, versioning)
    _point_at(setup, bucket)
    proc = setup.cli("check")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("fail") and "versioning" in line)
    assert bucket in line and word in line and "put-bucket-versioning" in line
    assert "Traceback" not in proc.stderr


def test_check_is_healthy_on_a_versioned_bucket(setup: Setup) -> None:
    """A versioned, reachable registry with a pinned latest revision passes every check."""
    (setup.folder / "a.txt").write_text("a")
    setup.cli("push", check=True)
    proc = setup.cli("check")
    assert proc.returncode == 0, proc.stdout
    assert "healthy" in proc.stdout.splitlines()[-1]
    assert any(line.startswith("ok") and "manifest_pinned" in line for line in proc.stdout.splitlines())


@pytest.mark.parametrize("versioning", [False, "Suspended"])
def test_pushes_to_an_unversioned_bucket_are_refused_with_the_reason(setup: Setup, local_s3, versioning) -> None:
    """No revision is made; push.refused says the bucket and what to do."""
    bucket = _bucket(local_s3, versioning)
    _point_at(setup, bucket)
    (setup.folder / "a.txt").write_text("a")
    proc = setup.cli("push")
    assert proc.returncode == 1
    refused = [e for e in json_events(proc.stderr) if e.get("event") == "push.refused"]
    assert refused and bucket in refused[0]["reason"] and "allow_unversioned" in refused[0]["reason"]
    assert setup.registry_api().latest(setup.package) is None


def test_the_daemon_refuses_to_push_to_an_unversioned_bucket(setup: Setup, local_s3) -> None:
    """The daemon logs push.refused and health.failed for versioning, and pushes nothing."""
    bucket = _bucket(local_s3, False)
    _point_at(setup, bucket, "settle_seconds = 0.3\n")
    d = DaemonProcess(setup.config_path)
    try:
        (setup.folder / "a.txt").write_text("a")
        refused = d.wait_for(lambda e: e.get("event") == "push.refused", timeout=30)
        assert bucket in refused["reason"]
        failed = d.wait_for(lambda e: e.get("event") == "health.failed" and e.get("check") == "versioning")
        assert bucket in failed["detail"]
        assert setup.registry_api().latest(setup.package) is None
    finally:
        d.kill()


def test_allow_unversioned_pushes_with_a_loud_warning(setup: Setup, local_s3) -> None:
    """With allow_unversioned = true the push happens and warns each time."""
    bucket = _bucket(local_s3, False)
    _point_at(setup, bucket, "allow_unversioned = true\n")
    (setup.folder / "a.txt").write_text("a")
    proc = setup.cli("push", check=True)
    events = json_events(proc.stderr)
    assert any(e.get("event") == "push.unversioned" and e["level"] == "warning" for e in events)
    assert any(e.get("event") == "health.failed" and e.get("check") == "manifest_pinned" for e in events)
    assert setup.registry_api().latest(setup.package) == proc.stdout.split()[1]


def test_a_revision_pushed_before_versioning_is_reported_unpinned_and_not_restored(setup: Setup, local_s3) -> None:
    """check flags the unpinned latest revision; restore refuses it, and --force says what it got."""
    bucket = _bucket(local_s3, False)
    _point_at(setup, bucket, "allow_unversioned = true\n")
    (setup.folder / "a.txt").write_text("before versioning")
    top = setup.cli("push", check=True).stdout.split()[1]
    local_s3.client().put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    check = setup.cli("check")
    assert check.returncode == 1
    assert any(line.startswith("fail") and "manifest_pinned" in line and "no versionId" in line
               for line in check.stdout.splitlines())
    proc = setup.cli("restore", setup.package, "--top-hash", top, "--dest", str(setup.root / "out"))
    assert proc.returncode == 1 and "not pinned" in proc.stderr and "--force" in proc.stderr
    assert not (setup.root / "out").exists()
    forced = setup.cli("restore", setup.package, "--top-hash", top, "--dest", str(setup.root / "out"), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (setup.root / "out" / "a.txt").read_text() == "before versioning"


def test_a_restore_right_after_another_comes_from_the_local_cache(setup: Setup) -> None:
    """The second restore of a revision copies every file from quilt3's object-path cache."""
    for i in range(3):
        (setup.folder / f"f{i}.txt").write_text(f"file {i}" * 100)
    top = setup.cli("push", check=True).stdout.split()[1]
    first = setup.cli("restore", setup.package, "--top-hash", top, "--dest", str(setup.root / "r1"), check=True)
    assert "0 from the local cache, 3 from S3" in first.stdout
    second = setup.cli("restore", setup.package, "--top-hash", top, "--dest", str(setup.root / "r2"), check=True)
    assert "3 from the local cache, 0 from S3" in second.stdout
    assert all(line.strip().startswith("cache") for line in second.stdout.splitlines()[1:4])  # after "which revision"
    assert (setup.root / "r2" / "f1.txt").read_text() == "file 1" * 100


def _cache_root() -> Path:
    from quiltsync.remote.registry import quilt_paths

    return quilt_paths()[0]


def test_doctor_removes_exactly_the_stale_and_corrupt_cache_entries(setup: Setup, local_s3) -> None:
    """Truncated and unpinned cached manifests and a stale object-path entry go; good entries stay."""
    import quilt3

    from quiltsync.remote.quiltcache import manifest_cache_name

    # a good cached manifest and good object-path entries, made by quilt3 for real
    (setup.folder / "a.txt").write_text("a" * 2000)
    (setup.folder / "b.txt").write_text("b" * 2000)
    good_top = setup.cli("push", check=True).stdout.split()[1]
    quilt3.Package.browse(setup.package, setup.registry, top_hash=good_top)
    setup.cli("restore", setup.package, "--top-hash", good_top, "--dest", str(setup.root / "r"), check=True)
    good_manifest = _cache_root() / "manifest" / manifest_cache_name(setup.registry[5:], good_top)
    assert good_manifest.exists()
    # an unpinned cached manifest: browse of a revision pushed to an unversioned bucket
    unv = _bucket(local_s3, False)
    pkg = quilt3.Package()
    pkg.set("x.txt", str(setup.folder / "a.txt"))
    unpinned_top = pkg.push("team/unv", f"s3://{unv}", message="unversioned").top_hash
    quilt3.Package.browse("team/unv", f"s3://{unv}", top_hash=unpinned_top)
    unpinned_manifest = _cache_root() / "manifest" / manifest_cache_name(unv, unpinned_top)
    # a truncated cached manifest: a second revision's manifest cut short under its own name
    (setup.folder / "c.txt").write_text("c" * 2000)
    second_top = setup.cli("push", check=True).stdout.split()[1]
    quilt3.Package.browse(setup.package, setup.registry, top_hash=second_top)
    truncated = _cache_root() / "manifest" / manifest_cache_name(setup.registry[5:], second_top)
    lines = truncated.read_bytes().splitlines(keepends=True)
    truncated.write_bytes(b"".join(lines[:-1]))
    # a leftover temp file, and a stale object-path entry (its restored file changed)
    leftover = truncated.with_suffix(".tmp")
    leftover.write_bytes(b"{")
    stale_target = setup.root / "r" / "a.txt"
    stale_target.write_text("edited after the restore")
    objects = [p for d in _cache_root().iterdir() if len(d.name) == 2 for p in d.iterdir()]
    stale = [p for p in objects if json.loads(p.read_text())[0] == str(stale_target)]
    fine = [p for p in objects if json.loads(p.read_text())[0] == str(setup.root / "r" / "b.txt")]
    assert len(stale) == 1 and len(fine) == 1

    report = setup.cli("doctor")
    assert report.returncode == 1
    for path, kind in [(truncated, "manifest_mismatch"), (unpinned_manifest, "manifest_unpinned"),
                       (stale[0], "object_stale"), (leftover, "temp_file")]:
        assert any(kind in line and str(path) in line for line in report.stdout.splitlines()), (kind, report.stdout)
    fixed = setup.cli("doctor", "--fix")
    assert fixed.returncode == 0, fixed.stdout
    assert not truncated.exists() and not unpinned_manifest.exists() and not stale[0].exists()
    assert not leftover.exists()
    assert good_manifest.exists() and fine[0].exists()
    assert setup.cli("doctor").returncode == 0


def test_access_denied_is_reported_as_such_without_a_traceback(setup: Setup, local_s3) -> None:
    """The server answering 403 to the bucket: check says access denied, exit 1."""
    bucket = setup.registry[5:]
    local_s3.set_fault(lambda req: (403, "AccessDenied") if req.path.rstrip("/") == f"/{bucket}" else None)
    try:
        proc = setup.cli("check")
    finally:
        local_s3.set_fault(None)
    assert proc.returncode == 1
    line = next(line for line in proc.stdout.splitlines() if "registry" in line)
    assert line.startswith("fail") and "access denied" in line and bucket in line
    assert "Traceback" not in proc.stderr


def test_an_unreachable_endpoint_is_reported_as_such_without_a_traceback(setup: Setup) -> None:
    """Nothing listening at the endpoint: check says it cannot reach it, exit 1."""
    write_config(setup.config_path, setup.folder, setup.package, setup.registry, "http://127.0.0.1:9",
                 setup.state_dir)
    proc = setup.cli("check")
    assert proc.returncode == 1
    line = next(line for line in proc.stdout.splitlines() if "registry" in line)
    assert "unreachable" in line and "Traceback" not in proc.stderr


def test_a_missing_bucket_is_reported_as_such(setup: Setup) -> None:
    """A registry bucket that does not exist: check says so."""
    write_config(setup.config_path, setup.folder, setup.package, "s3://no-such-bucket-for-check",
                 setup.endpoint, setup.state_dir)
    proc = setup.cli("check")
    assert proc.returncode == 1
    assert any("no_such_bucket" in line for line in proc.stdout.splitlines())


def test_a_quilt3_credentials_file_overriding_the_environment_is_reported(setup: Setup, tmp_path) -> None:
    """quilt3's credentials.json silently wins over AWS_* variables: check warns about it."""
    data = tmp_path / "xdg-data"
    (data / "Quilt").mkdir(parents=True)
    (data / "Quilt" / "credentials.json").write_text("{}")
    proc = setup.cli("check", env={"XDG_DATA_HOME": str(data)})
    line = next(line for line in proc.stdout.splitlines() if line.split()[1:2] == ["credentials"])
    assert line.startswith("warn") and "overrides" in line


def test_the_daemon_records_health_for_status_and_its_status_line(setup: Setup, local_s3) -> None:
    """Checks run at start: health.ok logged, STATUS says so, `status` shows the daemon's result."""
    from daemonproc import NotifySocket

    sock = NotifySocket()
    d = DaemonProcess(setup.config_path, notify=sock)
    try:
        d.wait_for(lambda e: e.get("event") == "health.ok" and e.get("check") == "versioning", timeout=30)
        d.wait_for(lambda e: e.get("event") == "health.ok" and e.get("check") == "stuck", timeout=30)
        import time
        deadline = time.monotonic() + 30
        while True:  # the daemon records health right after logging it: wait for the record
            status = json.loads(setup.cli("status", "--json", check=True).stdout)["folders"][0]
            if status["health"].startswith("ok (checked") or time.monotonic() > deadline:
                break
        assert status["health"].startswith("ok (checked")
        assert any("health ok" in m for m in sock.snapshot() if "STATUS=" in m)
    finally:
        d.kill()
        sock.close()


def _manifest_reads(requests) -> list[str]:
    return [f"{r.method} {r.path}" for r in requests if "/.quilt/packages/" in r.path]


def test_health_reads_no_manifest_of_a_revision_quiltsync_pushed(setup: Setup, local_s3) -> None:
    """The latest revision is the one the index records: the checks answer from the
    index (no manifest GET); an older revision is read once, then only HEADed; a
    revision someone else pushed is read; a version deleted from the older
    revision is still found."""
    import quilt3

    from quiltsync.local.index import Index
    from quiltsync.service.health import run_all

    for i in range(30):  # within one sample (32): every run checks them all
        (setup.folder / f"f{i:02d}.txt").write_text(f"file {i}")
    pusher = setup.pusher()
    first = pusher.push()
    (setup.folder / "f00.txt").write_text("changed")
    second = pusher.push()
    index = Index(setup.state_dir / "index.sqlite3")
    local_s3.reset_requests()
    results = {r.check: r for r in run_all(setup.config(), index=index)}
    assert results["manifest_pinned"].status == "ok", results["manifest_pinned"]
    assert second.top_hash[:12] in results["manifest_pinned"].detail
    reads = _manifest_reads(local_s3.requests)
    assert reads == [f"HEAD /{setup.registry[5:]}/.quilt/packages/{first.top_hash}",
                     f"GET /{setup.registry[5:]}/.quilt/packages/{first.top_hash}"], reads
    local_s3.reset_requests()
    assert all(r.status == "ok" for r in run_all(setup.config(), index=index) if r.check == "manifest_pinned")
    assert _manifest_reads(local_s3.requests) == [f"HEAD /{setup.registry[5:]}/.quilt/packages/{first.top_hash}"]

    # the older revision's versions are sampled from its cached manifest: a deleted one is found
    old = setup.registry_api().revision(setup.package, first.top_hash).entries
    bucket = setup.registry[len("s3://"):]
    c = local_s3.client()
    for lk, e in old.items():
        if lk != "f00.txt":
            continue
        c.delete_object(Bucket=bucket, Key=f"{setup.package}/{lk}", VersionId=e.physical_key.split("versionId=")[1])
    gone = next(r for r in run_all(setup.config(), index=index) if r.check == "manifest_pinned")
    assert gone.status == "fail" and "'f00.txt'" in gone.detail and first.top_hash[:12] in gone.detail, gone

    # someone else moves latest: its manifest is read (the index does not know it)
    pkg = quilt3.Package.browse(setup.package, setup.registry)
    pkg.set("extra.txt", str(setup.folder / "f01.txt"))
    theirs = pkg.push(setup.package, setup.registry, message="by hand", force=True).top_hash
    local_s3.reset_requests()
    run_all(setup.config(), index=index)
    assert f"GET /{setup.registry[5:]}/.quilt/packages/{theirs}" in _manifest_reads(local_s3.requests)


def test_doctor_never_takes_a_quilt3_that_cannot_import_for_corrupt_manifests(setup: Setup) -> None:
    """quilt3 reads the cached manifests (it is the authority on what it loads); if it
    cannot be imported (here a QUILT_* variable it rejects), doctor says so in one
    line and removes nothing, instead of calling every manifest corrupt."""
    import quilt3

    from quiltsync.remote.quiltcache import manifest_cache_name

    (setup.folder / "a.txt").write_text("a" * 100)
    top = setup.cli("push", check=True).stdout.split()[1]
    quilt3.Package.browse(setup.package, setup.registry, top_hash=top)
    cached = _cache_root() / "manifest" / manifest_cache_name(setup.registry[5:], top)
    assert cached.exists()
    broken = setup.cli("doctor", "--fix", env={"QUILT_MANIFEST_MAX_RECORD_SIZE": "abc"})
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
    assert "cannot import quilt3" in broken.stderr and "QUILT_MANIFEST_MAX_RECORD_SIZE" in broken.stderr
    assert cached.exists()
    assert setup.cli("doctor").returncode == 0


def test_the_cache_check_parses_a_cached_manifest_once_until_it_changes(tmp_path: Path) -> None:
    """The daemon's health runs look at quilt3's cache every few minutes: a manifest
    already read (quilt3's parser takes seconds for a big one) is not parsed again,
    and quilt3 is not needed for it, until the file changes; a manifest cut short
    after its first reading is then reported as such."""
    import quilt3
    from quilt3.packages import PackageEntry
    from quilt3.util import PhysicalKey

    from quiltsync.remote import quiltcache
    from quiltsync.remote.registry import manifest_parser

    pkg = quilt3.Package().set("a.txt", PackageEntry(
        PhysicalKey.from_url("s3://lab-data/team/a.txt?versionId=v1"), 100, {"type": "SHA256", "value": "ab" * 32}, {}))
    root = tmp_path / "v0"
    (root / "manifest").mkdir(parents=True)
    cached = root / "manifest" / quiltcache.manifest_cache_name("lab-data", pkg.top_hash)
    with cached.open("w") as f:
        pkg.dump(f)
    factories = []

    def parser() -> quiltcache.ParseManifest:
        factories.append(1)
        return manifest_parser()

    for _ in range(3):
        report = quiltcache.inspect(root, {"lab-data"}, parser)
        assert report.ok and report.manifests == 1, report.problems
    assert len(factories) == 1
    cached.write_bytes(b"".join(cached.read_bytes().splitlines(keepends=True)[:-1]))
    report = quiltcache.inspect(root, {"lab-data"}, parser)
    assert [p.kind for p in report.problems] == ["manifest_mismatch"] and len(factories) == 2

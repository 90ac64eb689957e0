"""quiltsync against a real Ceph RGW 16 (Debian 12): versioning, but no S3 flexible
checksums, where quilt3 8.0's own push raises KeyError: 'ChecksumSHA256' (FACTS.md).

One session-wide cluster (conftest.py); each test has its own versioned bucket. The
CLI runs as a process, as a user runs it.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest
from quiltsync_test_fixtures import json_events, run_cli, write_config

MIB = 1024 * 1024


def _bucket(rgw, env) -> str:
    import boto3

    name = f"qs-ceph-{secrets.token_hex(4)}"
    c = boto3.client("s3", endpoint_url=rgw.endpoint_url, region_name="us-east-1",
                     aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    c.create_bucket(Bucket=name)
    c.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


@pytest.fixture
def on_ceph(tmp_path: Path, rgw, ceph_env):
    bucket = _bucket(rgw, ceph_env)
    folder = tmp_path / "data"
    folder.mkdir()
    config = tmp_path / "config.toml"
    write_config(config, folder, "lab/run", f"s3://{bucket}", rgw.endpoint_url, tmp_path / "state")

    def cli(*args: str, check: bool = True):
        return run_cli("--config", str(config), *args, check=check, env=ceph_env)
    return folder, bucket, cli


def _pushed(proc) -> str:
    return _pushed_as(proc, "lab/run")


def test_quilt3s_own_push_fails_on_ceph(rgw, ceph_env, tmp_path: Path) -> None:
    """The reason for quiltsync's own upload path, on the real server."""
    from quiltsync.remote import settings

    bucket = _bucket(rgw, ceph_env)
    settings.activate(settings.S3Settings(rgw.endpoint_url, "us-east-1"))
    settings.import_quilt3()
    import quilt3

    (tmp_path / "a.csv").write_text("1,2\n")
    with pytest.raises(KeyError, match="ChecksumSHA256"):
        quilt3.Package().set("a.csv", str(tmp_path / "a.csv")).push("lab/quilt3", f"s3://{bucket}", force=True)


def test_first_and_incremental_push_with_a_100_mib_file_restore_old_bytes(on_ceph, rgw, tmp_path: Path) -> None:
    """First push, an incremental push with a 100 MiB file (multipart) and an edit;
    history lists both; quiltsync's restore and plain quilt3's install of the first
    revision give its old bytes; restore of the second verifies the 100 MiB file."""
    folder, bucket, cli = on_ceph
    (folder / "params.csv").write_text("lr,0.1\n")
    (folder / "raw").mkdir()
    (folder / "raw" / "frame-0001.bin").write_bytes(os.urandom(5000))
    first = _pushed(cli("push"))
    big = os.urandom(100 * MIB + 17)
    (folder / "model.bin").write_bytes(big)
    (folder / "params.csv").write_text("lr,0.2\n")
    second_run = cli("push")
    second = _pushed(second_run)
    done = [e for e in json_events(second_run.stderr) if e["event"] == "push.completed"]
    assert done and (done[0]["added"], done[0]["modified"]) == (1, 1) and done[0]["bytes_uploaded"] > 100 * MIB

    history = json.loads(cli("history", "lab/run", "--json").stdout)
    assert [r["top_hash"] for r in history["revisions"]] == [first, second]  # oldest first
    assert all(r["pinned"] for r in history["revisions"])

    old = tmp_path / "old"
    restored = cli("restore", "lab/run", "--top-hash", first, "--dest", str(old))
    assert "verified" in restored.stdout
    assert (old / "params.csv").read_text() == "lr,0.1\n" and not (old / "model.bin").exists()
    new = tmp_path / "new"
    cli("restore", "lab/run", "--top-hash", second, "--dest", str(new))
    assert (new / "model.bin").read_bytes() == big

    from quiltsync.remote import settings

    settings.activate(settings.S3Settings(rgw.endpoint_url, "us-east-1"))
    settings.import_quilt3()
    import quilt3

    quilt3.Package.install("lab/run", f"s3://{bucket}", top_hash=first, dest=str(tmp_path / "quilt3"))
    assert (tmp_path / "quilt3" / "params.csv").read_text() == "lr,0.1\n"
    pkg = quilt3.Package.browse("lab/run", f"s3://{bucket}", top_hash=second)
    assert pkg.verify(str(new), extra_files_ok=False)


def test_check_says_content_md5_mode_and_doctor_is_clean(on_ceph) -> None:
    folder, _bucket_name, cli = on_ceph
    (folder / "a.csv").write_text("1\n")
    cli("push")
    check = cli("check")
    rows = {line.split()[1]: line for line in check.stdout.splitlines() if len(line.split()) > 1}
    assert rows["uploads"].startswith("ok") and "no S3 flexible checksums" in rows["uploads"], check.stdout
    assert rows["versioning"].startswith("ok") and "healthy" in check.stdout
    doctor = cli("doctor")
    assert doctor.returncode == 0 and "no stale or corrupt entries" in doctor.stdout


@pytest.fixture
def wire(rgw, ceph_env, tmp_path: Path):
    """A bucket behind a proxy that flips a byte of a file's body on its way to
    Ceph, after quiltsync computed its checksums; the config points at the proxy."""
    from faultproxy import FaultProxy

    bucket = _bucket(rgw, ceph_env)
    proxy = FaultProxy(int(rgw.endpoint_url.rsplit(":", 1)[1])).start()
    folder = tmp_path / "data"
    folder.mkdir()
    config = tmp_path / "config.toml"
    write_config(config, folder, "lab/wire", f"s3://{bucket}", proxy.endpoint, tmp_path / "state")
    try:
        yield proxy, bucket, folder, config
    finally:
        proxy.stop()


def _damage_one_upload(proxy, folder: Path, size: int) -> bytes:
    pattern = secrets.token_bytes(16)
    data = pattern * (size // len(pattern))
    (folder / "frames.bin").write_bytes(data)
    proxy.set(corrupt=pattern, corrupt_times=1)
    return data


def _only_the_good_bytes_were_stored(rgw, ceph_env, bucket: str, data: bytes) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=rgw.endpoint_url, region_name="us-east-1",
                      aws_access_key_id=ceph_env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=ceph_env["AWS_SECRET_ACCESS_KEY"])
    versions = s3.list_object_versions(Bucket=bucket, Prefix="lab/wire/frames.bin").get("Versions", [])
    assert len(versions) == 1  # the damaged upload was refused, not stored
    stored = s3.get_object(Bucket=bucket, Key="lab/wire/frames.bin", VersionId=versions[0]["VersionId"])
    assert stored["Body"].read() == data
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")


@pytest.mark.parametrize("size", [1 * MIB, 20 * MIB], ids=["put", "multipart"])
def test_bytes_damaged_on_the_wire_are_refused_and_never_published(wire, rgw, ceph_env, tmp_path: Path,
                                                                   size: int) -> None:
    """Plain http: SigV4 signs the payload's SHA-256, Ceph refuses the damaged PUT or
    part; `quiltsync push` retries and publishes the right bytes, which restore."""
    proxy, bucket, folder, config = wire
    data = _damage_one_upload(proxy, folder, size)
    run = run_cli("--config", str(config), "push", env=ceph_env)
    assert run.returncode == 0, run.stderr
    assert proxy.corrupt_times == 0  # one byte was damaged on its way
    failed = [e for e in json_events(run.stderr) if e["event"] == "push.failed"]
    assert len(failed) == 1 and failed[0]["retry_in_s"] is not None, run.stderr
    assert "XAmzContentSHA256Mismatch" in failed[0]["error"], failed
    _only_the_good_bytes_were_stored(rgw, ceph_env, bucket, data)
    out = tmp_path / "out"
    restored = run_cli("--config", str(config), "restore", "lab/wire", "--top-hash", _pushed_as(run, "lab/wire"),
                       "--dest", str(out), env=ceph_env)
    assert restored.returncode == 0 and (out / "frames.bin").read_bytes() == data, restored.stderr


@pytest.mark.parametrize("size", [1 * MIB, 20 * MIB], ids=["put", "multipart"])
def test_without_a_signed_payload_content_md5_is_what_refuses_damaged_bytes(
        wire, rgw, ceph_env, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """As over https, where botocore sends UNSIGNED-PAYLOAD: Content-MD5 is the only
    check Ceph 16 has of the bytes (no flexible checksums); it answers BadDigest, the
    push retries, and only the right bytes are stored."""
    import botocore.config
    from structlog.testing import capture_logs

    from quiltsync.config import load_config
    from quiltsync.engine.pusher import FolderPusher, push_with_retries
    from quiltsync.local.index import Index
    from quiltsync.remote import settings

    proxy, bucket, folder, config = wire
    make = settings.client_config
    monkeypatch.setattr(settings, "client_config", lambda **overrides: make(**overrides).merge(
        botocore.config.Config(s3={"payload_signing_enabled": False})))
    cfg = load_config(config)
    settings.activate(settings.S3Settings.from_config(cfg.s3))
    data = _damage_one_upload(proxy, folder, size)
    index = Index(cfg.daemon.state_dir / "index.sqlite3")
    try:
        with capture_logs() as logs:
            result = push_with_retries(FolderPusher(cfg.folder[0], index), sleep=lambda _s: None)
    finally:
        index.close()
    assert result.pushed and proxy.corrupt_times == 0
    failed = [e for e in logs if e["event"] == "push.failed"]
    assert len(failed) == 1 and "BadDigest" in failed[0]["error"], failed
    _only_the_good_bytes_were_stored(rgw, ceph_env, bucket, data)


def _pushed_as(proc, package: str) -> str:
    lines = [line for line in proc.stdout.splitlines() if line.startswith(f"{package} ")]
    assert len(lines) == 1, proc.stdout + proc.stderr
    return lines[0].split()[1]

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
    lines = [line for line in proc.stdout.splitlines() if line.startswith("lab/run ")]
    assert len(lines) == 1, proc.stdout + proc.stderr
    return lines[0].split()[1]


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

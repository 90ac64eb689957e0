"""The commands as a user runs them: separate processes, real local S3, real files."""

from __future__ import annotations

import json

from conftest import Setup, json_events, write_config

PUSH_FIELDS = {"package", "registry", "top_hash", "parent_top_hash", "added", "modified", "deleted",
               "files", "bytes_uploaded", "duration_ms"}


def test_push_prints_each_new_top_hash_and_nothing_else(setup: Setup) -> None:
    """stdout carries `PACKAGE TOP_HASH` lines only: no quilt3 prints, no progress bars."""
    (setup.folder / "a.txt").write_text("a" * 3000)
    proc = setup.cli("push", check=True)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    package, top_hash = lines[0].split()
    assert package == setup.package and len(top_hash) == 64
    assert setup.registry_api().latest(setup.package) == top_hash
    assert "Successfully pushed" not in proc.stderr and "Copying objects" not in proc.stderr


def test_push_completed_is_one_json_line_with_every_contract_field(setup: Setup) -> None:
    """Operators' jq recipes rely on push.completed and its fields (PRODUCT.md)."""
    (setup.folder / "a.txt").write_text("hello")
    proc = setup.cli("push", check=True)
    events = json_events(proc.stderr)
    done = [e for e in events if e.get("event") == "push.completed"]
    assert len(done) == 1
    assert PUSH_FIELDS <= set(done[0])
    assert done[0]["added"] == 1 and done[0]["bytes_uploaded"] == 5
    assert done[0]["timestamp"].endswith("Z") and done[0]["level"] == "info"
    # every stderr line is JSON: nothing from quilt3 or botocore in another shape
    assert all(line.startswith("{") for line in proc.stderr.splitlines() if line.strip())


def test_a_second_cli_push_with_nothing_changed_is_skipped(setup: Setup) -> None:
    """Nothing changed: no new top_hash printed, push.skipped logged, exit 0."""
    (setup.folder / "a.txt").write_text("hello")
    setup.cli("push", check=True)
    proc = setup.cli("push", check=True)
    assert proc.stdout == ""
    assert any(e.get("event") == "push.skipped" for e in json_events(proc.stderr))


def test_status_reports_last_push_and_pending_changes_without_network(setup: Setup) -> None:
    """status shows the last top_hash and how many files changed since, with S3 unreachable."""
    (setup.folder / "a.txt").write_text("hello")
    top = setup.cli("push", check=True).stdout.split()[1]
    (setup.folder / "b.txt").write_text("new")
    proc = setup.cli("status", "--json", check=True,
                     env={"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    folder = json.loads(proc.stdout)["folders"][0]
    assert folder["last_top_hash"] == top and folder["pending"] == 1 and folder["files"] == 2


def test_history_lists_every_revision_with_message_files_and_pinning(setup: Setup) -> None:
    """history --json: time, top_hash, message, files, pinned, oldest first."""
    (setup.folder / "a.txt").write_text("1")
    first = setup.cli("push", check=True).stdout.split()[1]
    (setup.folder / "b.txt").write_text("2")
    second = setup.cli("push", check=True).stdout.split()[1]
    revs = json.loads(setup.cli("history", setup.package, "--json", check=True).stdout)["revisions"]
    assert [r["top_hash"] for r in revs] == [first, second]
    assert [r["files"] for r in revs] == [1, 2]
    assert all(r["pinned"] for r in revs) and revs[-1]["latest"]
    assert "1 added" in revs[1]["message"]


def test_restore_by_short_hash_writes_verified_old_bytes(setup: Setup) -> None:
    """restore accepts a unique prefix and reports every file verified."""
    (setup.folder / "a.txt").write_text("old bytes")
    first = setup.cli("push", check=True).stdout.split()[1]
    (setup.folder / "a.txt").write_text("new bytes!")
    setup.cli("push", check=True)
    dest = setup.root / "restored"
    proc = setup.cli("restore", setup.package, "--top-hash", first[:10], "--dest", str(dest), check=True)
    assert (dest / "a.txt").read_text() == "old bytes"
    assert "1 of 1 files verified" in proc.stdout


def test_restore_refuses_a_non_empty_destination(setup: Setup) -> None:
    """Restoring over existing files would mix revisions: refused with a one-line error."""
    (setup.folder / "a.txt").write_text("x")
    top = setup.cli("push", check=True).stdout.split()[1]
    proc = setup.cli("restore", setup.package, "--top-hash", top, "--dest", str(setup.folder))
    assert proc.returncode == 1 and "not an empty directory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_missing_bucket_is_reported_once_as_permanent(setup: Setup) -> None:
    """No such bucket: exit 1, the reason in one line, no retries, no traceback."""
    write_config(setup.config_path, setup.folder, setup.package, "s3://no-such-bucket-here",
                 setup.endpoint, setup.state_dir)
    (setup.folder / "a.txt").write_text("x")
    proc = setup.cli("push")
    assert proc.returncode == 1
    assert "NoSuchBucket" in proc.stderr and "Traceback" not in proc.stderr
    failed = [e for e in json_events(proc.stderr) if e.get("event") == "push.failed"]
    assert len(failed) == 1 and failed[0]["retry_in_s"] is None


def test_server_errors_are_retried_until_the_push_succeeds(setup: Setup, local_s3) -> None:
    """503 SlowDown on the first uploads is retried (botocore standard mode); the push lands."""
    bucket = setup.registry[5:]
    seen = {"n": 0}

    def fault(req):
        if req.method == "PUT" and req.path.startswith(f"/{bucket}/team/") and seen["n"] < 2:
            seen["n"] += 1
            return 503, "SlowDown"
        return None

    (setup.folder / "a.txt").write_text("x" * 2000)
    local_s3.set_fault(fault)
    try:
        proc = setup.cli("push")
    finally:
        local_s3.set_fault(None)
    assert proc.returncode == 0, proc.stderr
    assert seen["n"] == 2
    top = proc.stdout.split()[1]
    assert setup.registry_api().latest(setup.package) == top


def test_credentials_never_appear_in_logs_or_errors(setup: Setup) -> None:
    """The secret key from the environment is not in any output, even when a push fails."""
    canary = "CANARYsecretDoNotLog0123456789abcdefghij"
    write_config(setup.config_path, setup.folder, setup.package, "s3://no-such-bucket-here",
                 setup.endpoint, setup.state_dir)
    (setup.folder / "a.txt").write_text("x")
    proc = setup.cli("push", env={"AWS_SECRET_ACCESS_KEY": canary})
    assert canary not in proc.stdout + proc.stderr


def test_lines_carry_their_syslog_priority_when_stderr_is_the_journal(setup: Setup) -> None:
    """With JOURNAL_STREAM naming stderr, each JSON line starts with <N> so journalctl -p filters."""
    import os
    import subprocess
    import sys

    (setup.folder / "a.txt").write_text("x")
    r, w = os.pipe()
    st = os.fstat(w)
    env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    write_config(setup.config_path, setup.folder, setup.package, "s3://no-such-bucket-journal",
                 setup.endpoint, setup.state_dir)
    proc = subprocess.Popen([sys.executable, "-m", "quiltsync", "--config", str(setup.config_path), "push"],
                            stderr=w, stdout=subprocess.DEVNULL, env=env)
    os.close(w)
    with os.fdopen(r) as f:
        lines = [line for line in f.read().splitlines() if line.startswith("<")]
    proc.wait(timeout=60)
    assert lines, "expected prefixed log lines"
    prios = {line[: line.index(">") + 1] for line in lines}
    assert "<3>" in prios  # push.failed is an error
    assert all(json.loads(line[line.index(">") + 1:])["event"] for line in lines)

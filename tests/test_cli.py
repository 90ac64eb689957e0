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
    assert set(done[0]) >= PUSH_FIELDS
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


def test_status_shows_when_pacing_holds_changes_back_and_forgets_it_once_past(setup: Setup) -> None:
    """The daemon records a paced folder in the stuck check's row: status shows when
    the next revision comes and why; a row whose time has passed is not shown."""
    import time as _time

    from quiltsync.local.index import Index

    (setup.folder / "a.txt").write_text("hello")
    setup.cli("push", check=True)
    index = Index(setup.state_dir / "index.sqlite3")

    def record(at: float) -> None:
        when = _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime(at))
        index.write_health([("stuck", setup.package, "ok", f"paced: changes go in the next revision at {when} "
                             "(in 600 s): each revision writes a 34.7 MB manifest, and "
                             "max_manifest_bytes_per_day = 1000000000")], _time.time())

    record(_time.time() + 600)
    plain = setup.cli("status", check=True).stdout
    line = next(x for x in plain.splitlines() if x.strip().startswith("pacing:"))
    assert "34.7 MB manifest" in line and "max_manifest_bytes_per_day" in line
    assert json.loads(setup.cli("status", "--json", check=True).stdout)["folders"][0]["paced"].startswith("paced")
    record(_time.time() - 5)
    assert "pacing:" not in setup.cli("status", check=True).stdout
    assert json.loads(setup.cli("status", "--json", check=True).stdout)["folders"][0]["paced"] is None
    index.close()


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


def _offline_config(root, n_folders: int, log_format: str = "json", extra: str = ""):
    """A config of ``n_folders`` existing folders (commands that never reach S3)."""
    import textwrap

    text = textwrap.dedent(f"""\
        [daemon]
        state_dir = {json.dumps(str(root / "state"))}
        log_format = "{log_format}"
        """) + extra
    for i in range(n_folders):
        (root / f"d{i:02d}").mkdir()
        text += (f"[[folder]]\npath = {json.dumps(str(root / f'd{i:02d}'))}\n"
                 f'package = "team/d{i:02d}"\nregistry = "s3://qs-offline-bucket"\n')
    path = root / "config.toml"
    path.write_text(text)
    return path


def test_status_into_a_reader_that_leaves_after_one_line_ends_quietly(tmp_path) -> None:
    """`quiltsync status | head -1`: the reader leaving early is no error: exit 0, no traceback."""
    import fcntl
    import os
    import subprocess
    import sys

    from conftest import run_cli

    config = _offline_config(tmp_path, 30)
    full = run_cli("--config", str(config), "status", check=True).stdout
    r, w = os.pipe()
    # The smallest pipe (one page): the output cannot all be written before the reader leaves.
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    assert len(full.encode()) > 4096 + len(full.splitlines()[0]) + 1
    proc = subprocess.Popen([sys.executable, "-m", "quiltsync", "--config", str(config), "status"],
                            stdout=w, stderr=subprocess.PIPE, text=True)
    os.close(w)
    with os.fdopen(r, "rb", buffering=0) as reader:  # like `head -1`: one line, then close
        first = b""
        while not first.endswith(b"\n"):
            byte = reader.read(1)
            if not byte:
                break
            first += byte
    _out, stderr = proc.communicate(timeout=120)
    assert first.decode() == full.splitlines(keepends=True)[0]
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr and "Exception ignored" not in stderr


def _error_lines(stderr: str) -> list[dict]:
    """Every non-empty stderr line as JSON (fails if one is not)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "expected an error on stderr"
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"a stderr line is not JSON: {line!r}") from None
    return out


def _assert_command_failed(event: dict, exit_code: int, says: str) -> None:
    import datetime as dt

    assert event["event"] == "command.failed" and event["level"] == "error"
    assert event["exit_code"] == exit_code and says in event["error"]
    stamp = dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    assert event["timestamp"].endswith("Z") and stamp.utcoffset() == dt.timedelta(0)


def test_a_config_error_is_a_json_line_when_stderr_is_not_a_terminal(tmp_path) -> None:
    """A config that does not load (exit 78): log_format auto applies, stderr is a pipe, so
    the error is one JSON object that jq reads, naming the bad key."""
    from conftest import run_cli

    config = _offline_config(tmp_path, 1, extra="no_such_key = 1\n")
    proc = run_cli("--config", str(config), "status")
    assert proc.returncode == 78
    events = _error_lines(proc.stderr)
    _assert_command_failed(events[-1], 78, "no_such_key")


def test_an_unknown_package_is_a_json_line_in_json_mode_and_plain_in_console_mode(tmp_path) -> None:
    """history/push of a package the config does not have: every stderr line is JSON with
    log_format = "json"; with "console" the one-line `quiltsync: error:` stays."""
    from conftest import run_cli

    config = _offline_config(tmp_path, 2)
    for args in (["history", "team/unknown"], ["push", "--folder", "team/unknown"]):
        proc = run_cli("--config", str(config), *args)
        assert proc.returncode == 78
        events = _error_lines(proc.stderr)
        _assert_command_failed(events[-1], 78, "team/unknown")
    config.write_text(config.read_text().replace('log_format = "json"', 'log_format = "console"'))
    proc = run_cli("--config", str(config), "history", "team/unknown")
    assert proc.returncode == 78
    assert proc.stderr.splitlines()[-1].startswith("quiltsync: error: no folder is configured for package")

"""Quilt buckets with workflows: real configs and schemas in the bucket, plain quilt3 as the judge.

The bucket's ``.quilt/workflows/config.yml`` requires a workflow (the default),
names ``experiment`` the default (a required message and a metadata schema),
``raw`` (no rules), ``lab`` (a package-name pattern) and ``small`` (an entries
schema). Pushes go through the CLI as a user runs them, or through the daemon.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
from structlog.testing import capture_logs

from conftest import FAST, Setup, json_events, write_config
from daemonproc import DaemonProcess

META_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["project"],
    "properties": {"project": {"type": "string", "pattern": "^[a-z]+$"}},
}
SMALL_FILES = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "array",
    "items": {"type": "object", "properties": {"size": {"type": "integer", "maximum": 100}}},
}
CONFIG = """\
version: "1"
default_workflow: experiment
workflows:
  experiment:
    name: Experiment
    is_message_required: true
    metadata_schema: meta
  raw:
    name: Raw
  lab:
    name: Lab packages only
    handle_pattern: ^lab/
  small:
    name: Small files only
    entries_schema: small
schemas:
  meta:
    url: s3://{bucket}/.quilt/workflows/meta.json
  small:
    url: s3://{bucket}/.quilt/workflows/small.json
"""
RELAXED = """\
version: "1"
default_workflow: experiment
workflows:
  experiment:
    name: Experiment, metadata optional
"""


def _bucket_of(setup: Setup) -> str:
    return setup.registry[len("s3://"):]


def put_workflows(local_s3, setup: Setup, config: str = CONFIG) -> str:
    """Upload the schemas and the config; returns the config's versionId."""
    c, bucket = local_s3.client(), _bucket_of(setup)
    c.put_object(Bucket=bucket, Key=".quilt/workflows/meta.json", Body=json.dumps(META_SCHEMA).encode())
    c.put_object(Bucket=bucket, Key=".quilt/workflows/small.json", Body=json.dumps(SMALL_FILES).encode())
    return c.put_object(Bucket=bucket, Key=".quilt/workflows/config.yml",
                        Body=config.format(bucket=bucket).encode())["VersionId"]


def configure(setup: Setup, extra: str, package: str | None = None) -> None:
    if package:
        setup.package = package
    write_config(setup.config_path, setup.folder, setup.package, setup.registry, setup.endpoint,
                 setup.state_dir, extra)


def stored(local_s3, setup: Setup) -> tuple[int, int]:
    """(object versions under the package's prefix, manifests in the bucket)."""
    c, bucket = local_s3.client(), _bucket_of(setup)
    data = c.list_object_versions(Bucket=bucket, Prefix=f"{setup.package}/").get("Versions", [])
    manifests = c.list_objects_v2(Bucket=bucket, Prefix=".quilt/packages/").get("KeyCount", 0)
    return len(data), manifests


def manifest_header(local_s3, setup: Setup, top_hash: str) -> dict:
    body = local_s3.client().get_object(Bucket=_bucket_of(setup), Key=f".quilt/packages/{top_hash}")["Body"]
    return json.loads(body.read().decode().splitlines()[0])


def refused_push(setup: Setup, local_s3) -> str:
    """`push` as a user runs it: exit 1, one push.refused, nothing stored; its reason."""
    push = setup.cli("push")
    assert push.returncode == 1 and "Traceback" not in push.stderr, push.stderr
    [refused] = [e for e in json_events(push.stderr) if e.get("event") == "push.refused"]
    assert stored(local_s3, setup) == (0, 0)  # not one object uploaded, no manifest
    return refused["reason"]


def check_line(stdout: str, status: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith(status) and " workflow " in line)


def test_a_folder_without_the_required_metadata_is_refused_by_check_and_by_push_before_any_upload(
        setup: Setup, local_s3) -> None:
    put_workflows(local_s3, setup)
    (setup.folder / "run1.csv").write_text("t,v\n0,1\n")
    (setup.folder / "notes.txt").write_text("calibrated")

    check = setup.cli("check")
    assert check.returncode == 1, check.stdout
    line = check_line(check.stdout, "fail")
    assert "'experiment'" in line and "'project' is a required property" in line and "[folder.metadata]" in line
    assert check.stdout.splitlines()[-1].startswith("UNHEALTHY")

    local_s3.reset_requests()
    push = setup.cli("push")
    assert push.returncode == 1 and "Traceback" not in push.stderr
    refused = [e for e in json_events(push.stderr) if e.get("event") == "push.refused"]
    assert len(refused) == 1 and "'experiment'" in refused[0]["reason"] and "project" in refused[0]["reason"]
    error = [e for e in json_events(push.stderr) if e.get("level") == "error" and e.get("event") != "push.refused"]
    assert error and "project" in json.dumps(error[-1])
    assert stored(local_s3, setup) == (0, 0)  # not one object uploaded, no manifest
    assert not [r for r in local_s3.requests if r.method in ("PUT", "POST")]
    assert setup.registry_api().latest(setup.package) is None


def test_workflow_metadata_and_message_are_written_as_quilt3_writes_them(setup: Setup, local_s3, tmp_path) -> None:
    """The header holds the user_meta, the rendered message and the same workflow
    stamp quilt3 writes when the same package is pushed by hand; plain quilt3
    browses and installs the revision."""
    import quilt3

    config_version = put_workflows(local_s3, setup)
    configure(setup, 'workflow = "experiment"\n'
                     'message = "{package}: {changes} changes, {files} files on {date} ({added} new)"\n'
                     '[folder.metadata]\nproject = "alpha"\nowners = ["ana", "ben"]\n')
    (setup.folder / "run1.csv").write_text("t,v\n0,1\n")
    (setup.folder / "sub").mkdir()
    (setup.folder / "sub" / "b.bin").write_bytes(os.urandom(300))
    push = setup.cli("push", check=True)
    top = push.stdout.split()[1]

    header = manifest_header(local_s3, setup, top)
    assert header["user_meta"] == {"project": "alpha", "owners": ["ana", "ben"]}
    assert header["message"].startswith("team/data: 2 changes, 2 files on 20") and header["message"].endswith("(2 new)")
    bucket = _bucket_of(setup)
    assert header["workflow"]["id"] == "experiment"
    assert header["workflow"]["config"] == f"s3://{bucket}/.quilt/workflows/config.yml?versionId={config_version}"
    assert set(header["workflow"]["schemas"]) == {"meta"}

    # The same package pushed by hand with plain quilt3 gets the same stamp and top_hash.
    by_hand = quilt3.Package()
    by_hand.set_dir("", str(setup.folder))
    by_hand.set_meta({"project": "alpha", "owners": ["ana", "ben"]})
    theirs = by_hand.push("team/byhand", setup.registry, message=header["message"], workflow="experiment")
    assert manifest_header(local_s3, setup, theirs.top_hash)["workflow"] == header["workflow"]
    assert theirs.top_hash == top

    browsed = quilt3.Package.browse(setup.package, setup.registry, top_hash=top)
    assert browsed.meta == {"project": "alpha", "owners": ["ana", "ben"]}
    assert browsed.top_hash == top
    quilt3.Package.install(setup.package, setup.registry, top_hash=top, dest=str(tmp_path / "installed"))
    assert (tmp_path / "installed" / "sub" / "b.bin").read_bytes() == (setup.folder / "sub" / "b.bin").read_bytes()

    history = json.loads(setup.cli("history", setup.package, "--json", check=True).stdout)
    [rev] = history["revisions"]
    assert rev["workflow"]["id"] == "experiment" and rev["metadata"]["project"] == "alpha"
    assert rev["message"] == header["message"]

    check = setup.cli("check")
    assert check.returncode == 0, check.stdout
    assert "workflow 'experiment' (set by `workflow`)" in check_line(check.stdout, "ok")


def test_no_workflow_on_a_bucket_that_requires_one_is_refused_clearly(setup: Setup, local_s3) -> None:
    put_workflows(local_s3, setup)
    configure(setup, 'workflow = ""\n')
    (setup.folder / "a.txt").write_text("a")
    reason = refused_push(setup, local_s3)
    assert "requires a workflow" in reason and 'workflow = ""' in reason
    assert "experiment, lab, raw, small" in reason
    assert "requires a workflow" in check_line(setup.cli("check").stdout, "fail")


def test_a_second_workflow_of_the_bucket_is_honoured(setup: Setup, local_s3) -> None:
    """`raw` has no metadata schema: the folder pushes without metadata, stamped `raw`."""
    put_workflows(local_s3, setup)
    configure(setup, 'workflow = "raw"\n')
    (setup.folder / "a.txt").write_text("a")
    top = setup.cli("push", check=True).stdout.split()[1]
    header = manifest_header(local_s3, setup, top)
    assert header["workflow"]["id"] == "raw" and "schemas" not in header["workflow"]
    assert "user_meta" not in header


def test_a_package_name_the_workflow_rejects_is_reported_by_check_and_push(setup: Setup, local_s3) -> None:
    put_workflows(local_s3, setup)
    configure(setup, 'workflow = "lab"\n')
    (setup.folder / "a.txt").write_text("a")
    line = check_line(setup.cli("check").stdout, "fail")
    assert "'team/data' does not match its handle_pattern '^lab/'" in line
    assert "handle_pattern" in refused_push(setup, local_s3)
    # A package name that matches goes through.
    configure(setup, 'workflow = "lab"\n', package="lab/data")
    assert setup.cli("push", check=True).stdout.startswith("lab/data ")


def test_an_entries_schema_names_the_file_that_breaks_it(setup: Setup, local_s3) -> None:
    put_workflows(local_s3, setup)
    configure(setup, 'workflow = "small"\n')
    (setup.folder / "ok.txt").write_text("small")
    (setup.folder / "big.bin").write_bytes(b"x" * 500)
    reason = refused_push(setup, local_s3)
    assert "entries fails schema 'small'" in reason and "'big.bin'" in reason
    assert "500 is greater than the maximum of 100" in reason


def test_a_broken_rule_in_the_bucket_config_is_a_refusal_not_a_crash(setup: Setup, local_s3) -> None:
    """A handle_pattern that is not a regular expression (quilt3's config schema lets it
    through): a clear refusal that names the workflow, and `check` says the same."""
    put_workflows(local_s3, setup, 'version: "1"\ndefault_workflow: bad\nworkflows:\n  bad:\n'
                                   '    name: Bad\n    handle_pattern: "team/(unclosed"\n')
    (setup.folder / "a.txt").write_text("a")
    reason = refused_push(setup, local_s3)
    assert "workflow 'bad'" in reason and "cannot be used" in reason and "fix it in the bucket" in reason
    check = setup.cli("check")
    assert check.returncode == 1 and "cannot be used" in check_line(check.stdout, "fail")
    assert "Traceback" not in check.stderr


def test_a_bucket_without_workflows_config_checks_ok_and_refuses_a_named_workflow(setup: Setup, local_s3) -> None:
    (setup.folder / "a.txt").write_text("a")
    check = setup.cli("check")
    assert check.returncode == 0, check.stdout
    assert "no workflows config" in check_line(check.stdout, "ok")
    configure(setup, 'workflow = "experiment"\n')
    push = setup.cli("push")
    assert push.returncode == 1 and "has no workflows config" in push.stderr


def test_a_refusal_is_logged_once_however_often_it_is_retried(setup: Setup, local_s3) -> None:
    put_workflows(local_s3, setup)
    (setup.folder / "a.txt").write_text("a")
    from quiltsync.errors import WorkflowRefused

    pusher = setup.pusher()
    with capture_logs() as logs:
        for _ in range(3):
            with pytest.raises(WorkflowRefused):
                pusher.push()
    assert [e["event"] for e in logs].count("push.refused") == 1


def test_a_metadata_change_alone_makes_a_revision(setup: Setup, local_s3) -> None:
    """Editing [folder.metadata] publishes it, with the same entries, as the next revision."""
    configure(setup, '[folder.metadata]\nproject = "alpha"\n')
    (setup.folder / "a.txt").write_text("a")
    first = setup.cli("push", check=True).stdout.split()[1]
    assert setup.cli("push", check=True).stdout == ""  # nothing changed: no revision
    configure(setup, '[folder.metadata]\nproject = "beta"\n')
    second = setup.cli("push", check=True).stdout.split()[1]
    assert second != first
    old, new = (setup.registry_api().revision(setup.package, t) for t in (first, second))
    assert new.meta["user_meta"] == {"project": "beta"} and new.entries == old.entries
    assert "0 added, 0 modified, 0 deleted" in new.meta["message"]


def test_the_daemon_shows_the_refusal_and_pushes_once_the_bucket_config_is_fixed(setup: Setup, local_s3) -> None:
    """Refused once (push.refused, status names the workflow), then a fixed config in
    the bucket is picked up at the next health check: the change is pushed."""
    put_workflows(local_s3, setup)
    configure(setup, FAST)
    setup.config_path.write_text(setup.config_path.read_text().replace(
        "[daemon]\n", "[daemon]\nhealth_interval_seconds = 1\n"))
    d = DaemonProcess(setup.config_path)
    try:
        (setup.folder / "a.txt").write_text("waiting for a workflow")
        refused = d.wait_for(lambda e: e.get("event") == "push.refused")
        assert "'project' is a required property" in refused["reason"]
        d.wait_for(lambda e: e.get("event") == "health.failed" and e.get("check") == "workflow")
        status = json.loads(setup.cli("status", "--json", check=True).stdout)["folders"][0]
        assert "workflow" in status["health"] and "project" in status["health"]

        fixed = put_workflows(local_s3, setup, RELAXED)
        done = d.wait_for(lambda e: e.get("event") == "push.completed", timeout=60)
        header = manifest_header(local_s3, setup, done["top_hash"])
        assert header["workflow"]["config"].endswith(f"versionId={fixed}")
        assert len(d.of("push.refused")) == 1
        assert setup.cli("status", "--json", check=True).stdout.count("pushes are refused") == 0
        d.signal(signal.SIGTERM)
        assert d.stop() == 0
    finally:
        d.kill()


def test_a_message_template_with_an_unknown_placeholder_is_a_config_error(setup: Setup) -> None:
    configure(setup, 'message = "synced by {user} on {host}"\n')
    proc = setup.cli("check")
    assert proc.returncode == 78 and "Traceback" not in proc.stderr
    assert "folder[0].message" in proc.stderr and "{user}" in proc.stderr

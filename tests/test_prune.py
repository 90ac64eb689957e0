"""Retention and garbage collection on the local S3, with real deletions.

Five revisions of a folder whose data.csv changes each time (const.txt never
does); another package, pushed with plain quilt3, points at the second
revision's data.csv. keep_last = 2 must leave the last two revisions, both
restorable byte for byte, and of data.csv's five object versions the two kept
ones plus the one the other package references.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Setup, json_events, manifest_files, write_config

KEEP_LAST_2 = "[folder.retention]\nkeep_last = 2\ngrace_hours = 0\n"


def versions(local_s3, setup: Setup, key: str) -> list[str]:
    bucket = setup.registry[len("s3://"):]
    resp = local_s3.client().list_object_versions(Bucket=bucket, Prefix=key)
    return sorted(v["VersionId"] for v in resp.get("Versions", []) if v["Key"] == key)


def history_tops(setup: Setup) -> list[str]:
    out = setup.cli("history", setup.package, "--json", check=True).stdout
    return [r["top_hash"] for r in json.loads(out)["revisions"]]


@pytest.fixture
def five(setup: Setup) -> tuple[Setup, list[str], dict[str, bytes]]:
    (setup.folder / "const.txt").write_text("never changes")
    tops, contents = [], {}
    for i in range(5):
        body = f"run,{i}\n".encode() + os.urandom(32)
        (setup.folder / "data.csv").write_bytes(body)
        tops.append(setup.cli("push", check=True).stdout.split()[1])
        contents[tops[-1]] = body
        time.sleep(1.0)
    return setup, tops, contents


def share_with_another_package(setup: Setup, top: str) -> str:
    """Plain quilt3 pushes other/copy pointing at ``top``'s data.csv object version."""
    import quilt3

    rev = setup.registry_api().revision(setup.package, top)
    pkg = quilt3.Package()
    pkg.set("shared.csv", rev.entries["data.csv"].physical_key)
    pkg["shared.csv"].hash = rev.entries["data.csv"].hash.as_manifest()
    pkg["shared.csv"].size = rev.entries["data.csv"].size
    return pkg.push("other/copy", setup.registry, message="shares a version",
                    selector_fn=lambda _lk, _e: False).top_hash


def test_keep_last_2_leaves_two_restorable_revisions_and_the_shared_version(five, local_s3, tmp_path) -> None:
    setup, tops, contents = five
    share_with_another_package(setup, tops[1])
    key = f"{setup.package}/data.csv"
    before = versions(local_s3, setup, key)
    assert len(before) == 5
    kept_versions = {t: setup.registry_api().revision(setup.package, t).entries["data.csv"].physical_key
                     for t in tops}
    write_config(setup.config_path, setup.folder, setup.package, setup.registry, setup.endpoint,
                 setup.state_dir, KEEP_LAST_2)

    dry = setup.cli("prune", "--dry-run", check=True)
    assert "keep 2, prune 3" in dry.stdout and "would delete 3" in dry.stdout and "would delete 2," in dry.stdout
    assert versions(local_s3, setup, key) == before and history_tops(setup) == tops  # nothing changed

    proc = setup.cli("prune", check=True)
    assert "keep 2, prune 3" in proc.stdout
    [done] = [e for e in json_events(proc.stderr) if e.get("event") == "prune.completed"]
    assert (done["kept"], done["pruned"], done["versions_deleted"]) == (2, 3, 2) and done["bytes_freed"] > 0
    assert history_tops(setup) == tops[3:]
    for t in tops[3:]:
        assert manifest_files(setup, t)["data.csv"] == contents[t]
        proc = setup.cli("restore", setup.package, "--top-hash", t, "--dest", str(tmp_path / t), check=True)
        assert (tmp_path / t / "data.csv").read_bytes() == contents[t]
        assert (tmp_path / t / "const.txt").read_text() == "never changes"
    left = versions(local_s3, setup, key)
    expected = {kept_versions[t].split("versionId=")[1] for t in (tops[1], tops[3], tops[4])}
    assert set(left) == expected and len(left) == 3
    assert len(versions(local_s3, setup, f"{setup.package}/const.txt")) == 1
    bucket = setup.registry[len("s3://"):]
    manifests = local_s3.client().list_object_versions(Bucket=bucket, Prefix=".quilt/packages/").get("Versions", [])
    assert {m["Key"].rsplit("/", 1)[1] for m in manifests} >= set(tops[3:])
    assert not {m["Key"].rsplit("/", 1)[1] for m in manifests} & set(tops[:3])
    again = setup.cli("prune", check=True)  # nothing more to do
    assert "keep 2, prune 0" in again.stdout and "deleted 0," in again.stdout


def test_an_object_of_a_push_in_flight_survives_within_the_grace_period(five, local_s3) -> None:
    """An object version no manifest references yet (a push uploads first, writes its
    manifest last) is kept while younger than grace_hours."""
    setup, tops, _ = five
    bucket = setup.registry[len("s3://"):]
    in_flight = local_s3.client().put_object(Bucket=bucket, Key=f"{setup.package}/new.bin", Body=b"uploading")
    write_config(setup.config_path, setup.folder, setup.package, setup.registry, setup.endpoint,
                 setup.state_dir, "[folder.retention]\nkeep_last = 2\n")  # grace_hours: 24 by default
    proc = setup.cli("prune", check=True)
    # new.bin and the three pruned data.csv versions are all minutes old: none is collected
    assert "deleted 0, 0 bytes" in proc.stdout and "4 younger than grace_hours = 24" in proc.stdout
    assert versions(local_s3, setup, f"{setup.package}/new.bin") == [in_flight["VersionId"]]
    assert history_tops(setup) == tops[3:]
    write_config(setup.config_path, setup.folder, setup.package, setup.registry, setup.endpoint,
                 setup.state_dir, KEEP_LAST_2)  # grace_hours = 0: now they go
    proc = setup.cli("prune", check=True)
    assert "deleted 4," in proc.stdout and versions(local_s3, setup, f"{setup.package}/new.bin") == []


def test_a_folder_without_retention_is_never_pruned(five) -> None:
    setup, tops, _ = five
    proc = setup.cli("prune", check=True)
    assert "no [folder.retention]" in proc.stdout and history_tops(setup) == tops


# -- crash safety ------------------------------------------------------------------------------
DRIVER = """
import sys, time
from pathlib import Path
from quiltsync.config import load_config
from quiltsync.engine.catalog import Catalog
from quiltsync.engine.prune import prune
from quiltsync.local.revcache import RevisionCache
from quiltsync.remote import settings
from quiltsync.remote.registry import Registry
cfg = load_config(Path(sys.argv[1]))
settings.activate(settings.S3Settings.from_config(cfg.s3))
folder = cfg.folder[0]
def step(name):  # announce each step and spread them out: a random kill lands inside one
    print("step", name, flush=True)
    time.sleep(float(sys.argv[2]))
catalog = Catalog(Registry(folder.registry), folder.package, RevisionCache(Path(sys.argv[3])))
prune(folder, catalog, cfg.daemon.state_dir, step=step)
print("done", flush=True)
"""


def add_revisions(setup: Setup, n: int, start: int) -> None:
    for i in range(n):
        (setup.folder / "data.csv").write_bytes(f"run,{start + i}\n".encode() + os.urandom(16))
        (setup.folder / f"f{start + i}.txt").write_text(str(start + i))
        setup.cli("push", check=True)
        time.sleep(1.0)


def restorable(setup: Setup, local_s3) -> list[str]:
    """Every revision in history: its manifest and every object version it names exist."""
    from urllib.parse import unquote, urlparse

    c = local_s3.client()
    broken = []
    for top in history_tops(setup):
        try:
            rev = setup.registry_api().revision(setup.package, top)
        except Exception as e:
            broken.append(f"{top[:12]}: manifest: {e}")
            continue
        for lk, e in rev.entries.items():
            u = urlparse(e.physical_key)
            try:
                c.head_object(Bucket=u.netloc, Key=unquote(u.path.lstrip("/")),
                              VersionId=e.physical_key.split("versionId=")[1])
            except Exception:
                broken.append(f"{top[:12]}: {lk}")
    return broken


@pytest.mark.timeout(600)
def test_sigkill_at_random_points_never_leaves_a_kept_revision_unrestorable(setup: Setup, local_s3) -> None:
    write_config(setup.config_path, setup.folder, setup.package, setup.registry, setup.endpoint,
                 setup.state_dir, "[folder.retention]\nkeep_last = 2\ngrace_hours = 0\n")
    rng = random.Random(int(os.environ.get("QUILTSYNC_CRASH_SEED", "7")))
    trials = int(os.environ.get("QUILTSYNC_PRUNE_TRIALS", "20"))
    cache = setup.root / "revcache.sqlite3"
    add_revisions(setup, 2, 0)
    killed = interrupted = 0
    for trial in range(trials):
        add_revisions(setup, 1, 10 * (trial + 1))
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(setup.config_path), "0.3", str(cache)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        if trial % 4 == 3:  # while it starts and plans
            time.sleep(rng.uniform(0.3, 1.5))
        else:  # among the deletions: from the first step on, at a random moment
            for line in proc.stdout:  # (log lines of the prune come first, sometimes)
                if line.startswith("step pointers"):
                    break
            else:
                raise AssertionError("the prune did not reach its deletions")
            time.sleep(rng.uniform(0.0, 0.85))  # the three steps sleep 0.9 s: it is still running
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.communicate(timeout=60)
        interrupted += bool(list((setup.state_dir / "prune").glob("*.json")))  # killed mid-deletions
        assert restorable(setup, local_s3) == [], f"trial {trial}: a kept revision broke"
        assert len(history_tops(setup)) >= 2
    setup.cli("prune", check=True)  # a rerun finishes whatever was interrupted
    assert restorable(setup, local_s3) == [] and len(history_tops(setup)) == 2
    journal = Path(setup.state_dir) / "prune"
    assert not list(journal.glob("*.json"))
    assert killed >= trials * 3 // 4, f"only {killed} of {trials} runs were killed mid-prune"
    assert interrupted >= trials // 2, f"only {interrupted} of {trials} kills landed among the deletions"


# -- health: lifecycle rules and object versions deleted behind quiltsync's back -----------------
def test_a_lifecycle_rule_that_expires_noncurrent_versions_fails_check(setup: Setup, local_s3) -> None:
    (setup.folder / "a.txt").write_text("a")
    setup.cli("push", check=True)
    bucket = setup.registry[len("s3://"):]
    local_s3.client().put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "archive", "Status": "Enabled", "Filter": {"Prefix": "team/"},
         "Transitions": [{"Days": 30, "StorageClass": "GLACIER"}]},
        {"ID": "expire-old-versions", "Status": "Enabled", "Filter": {"Prefix": ""},
         "NoncurrentVersionExpiration": {"NoncurrentDays": 30}}]})
    proc = setup.cli("check")
    assert proc.returncode == 1, proc.stdout
    line = next(x for x in proc.stdout.splitlines() if " lifecycle " in x)
    assert line.startswith("fail") and "'expire-old-versions'" in line and "noncurrent" in line
    assert "Transitions" in line
    local_s3.client().put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "archive", "Status": "Enabled", "Filter": {"Prefix": "team/"},
         "Transitions": [{"Days": 30, "StorageClass": "GLACIER"}]}]})
    proc = setup.cli("check")
    assert proc.returncode == 0 and next(x for x in proc.stdout.splitlines() if " lifecycle " in x).startswith("ok")


def test_an_object_version_deleted_behind_our_back_is_found_by_the_sampled_check(setup: Setup, local_s3) -> None:
    for i in range(5):
        (setup.folder / f"f{i}.txt").write_text(f"file {i}")
    top = setup.cli("push", check=True).stdout.split()[1]
    assert setup.cli("check").returncode == 0
    pk = setup.registry_api().revision(setup.package, top).entries["f3.txt"].physical_key
    bucket = setup.registry[len("s3://"):]
    local_s3.client().delete_object(Bucket=bucket, Key=f"{setup.package}/f3.txt", VersionId=pk.split("versionId=")[1])
    proc = setup.cli("check")
    assert proc.returncode == 1
    line = next(x for x in proc.stdout.splitlines() if " manifest_pinned " in x)
    assert line.startswith("fail") and "'f3.txt'" in line and "is gone" in line and top[:12] in line


def test_the_daemon_prunes_on_its_interval_and_logs_it(five) -> None:
    from daemonproc import DaemonProcess

    setup, tops, _ = five
    write_config(setup.config_path, setup.folder, setup.package, setup.registry, setup.endpoint,
                 setup.state_dir, KEEP_LAST_2)
    setup.config_path.write_text(setup.config_path.read_text().replace(
        "[daemon]\n", "[daemon]\nprune_interval_hours = 0.001\n"))
    d = DaemonProcess(setup.config_path)
    try:
        done = d.wait_for(lambda e: e.get("event") == "prune.completed", timeout=60)
        assert (done["package"], done["kept"], done["pruned"]) == (setup.package, 2, 3)
        assert history_tops(setup) == tops[3:]
        d.signal(signal.SIGTERM)
        assert d.stop() == 0
    finally:
        d.kill()
    assert (setup.state_dir / "prune" / "team%2Fdata.last").exists()


def test_a_manifest_rewritten_by_the_same_content_keeps_the_first_pushs_objects(setup: Setup, local_s3) -> None:
    """Two packages pushed with the same files and message get the same top_hash: the
    second push rewrites the manifest with its own physical keys. Whoever read the
    first version (the first package's index, another machine) still points at the
    first package's objects, so prune must keep them."""
    import quilt3

    (setup.folder / "x.csv").write_text("identical")
    first = quilt3.Package().set("x.csv", str(setup.folder / "x.csv"))
    top_a = first.push("team/a", setup.registry, message="same").top_hash
    top_b = quilt3.Package().set("x.csv", str(setup.folder / "x.csv")).push("team/b", setup.registry,
                                                                            message="same").top_hash
    assert top_a == top_b
    key_a = versions(local_s3, setup, "team/a/x.csv")
    assert len(key_a) == 1
    write_config(setup.config_path, setup.folder, "team/a", setup.registry, setup.endpoint, setup.state_dir,
                 "[folder.retention]\nkeep_last = 1\ngrace_hours = 0\n")
    setup.cli("prune", check=True)
    assert versions(local_s3, setup, "team/a/x.csv") == key_a

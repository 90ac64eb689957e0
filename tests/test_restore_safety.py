"""A manifest crafted with `..` or absolute logical keys cannot make restore write outside DEST."""

from __future__ import annotations

import json

import pytest

from conftest import Setup


def _publish(setup: Setup, local_s3, package: str, keys: list[str]) -> str:
    """Write a hand-made manifest (and its objects) to the registry, as a hostile writer would."""
    import base64
    import hashlib

    from quiltsync.core.manifest import top_hash_of
    from quiltsync.core.types import Entry, HashValue

    bucket = setup.registry[5:]
    c = local_s3.client()
    entries, lines = {}, []
    for i, lk in enumerate(keys):
        body = f"payload {i}".encode()
        vid = c.put_object(Bucket=bucket, Key=f"evil/{i}", Body=body)["VersionId"]
        digest = base64.b64encode(hashlib.sha256(hashlib.sha256(body).digest()).digest()).decode()
        pk = f"s3://{bucket}/evil/{i}?versionId={vid}"
        entries[lk] = Entry(HashValue("sha2-256-chunked", digest), len(body), pk)
        lines.append({"logical_key": lk, "physical_keys": [pk], "size": len(body),
                      "hash": {"type": "sha2-256-chunked", "value": digest}, "meta": {}})
    meta = {"version": "v0", "message": "crafted"}
    top = top_hash_of(meta, entries)
    manifest = "\n".join(json.dumps(x) for x in [meta, *lines]) + "\n"
    c.put_object(Bucket=bucket, Key=f".quilt/packages/{top}", Body=manifest.encode())
    c.put_object(Bucket=bucket, Key=f".quilt/named_packages/{package}/1700000000", Body=top.encode())
    c.put_object(Bucket=bucket, Key=f".quilt/named_packages/{package}/latest", Body=top.encode())
    return top


@pytest.mark.parametrize("key", ["../escaped.txt", "a/../../escaped.txt", "/tmp/quiltsync-escaped-abs.txt"])
def test_a_crafted_manifest_cannot_write_outside_dest(setup: Setup, local_s3, key: str) -> None:
    """restore refuses the revision: nothing is written, inside DEST or outside it."""
    from pathlib import Path

    top = _publish(setup, local_s3, setup.package, ["fine.txt", key])
    dest = setup.root / "restore-here" / "dest"
    dest.parent.mkdir()
    proc = setup.cli("restore", setup.package, "--top-hash", top, "--dest", str(dest))
    assert proc.returncode == 1, proc.stdout
    assert "refusing to restore" in proc.stderr or "not valid" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not dest.exists()
    assert not (setup.root / "restore-here" / "escaped.txt").exists()
    assert not (setup.root / "escaped.txt").exists()
    assert not Path("/tmp/quiltsync-escaped-abs.txt").exists()
    assert list((setup.root / "restore-here").iterdir()) == []

"""Checks shared by the reliability tests: convergence and revision integrity."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from urllib.parse import parse_qs, unquote, urlparse

import boto3

from conftest import Setup, manifest_files

PART = 8 * 1024 * 1024


def folder_files(root) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


def converged(setup: Setup, timeout: float) -> str:
    """Wait until the latest revision holds exactly the folder's bytes; its top_hash."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        top = setup.registry_api().latest(setup.package)
        if top is not None:
            last = manifest_files(setup, top)
            if last == folder_files(setup.folder):
                return top
        time.sleep(0.5)
    raise AssertionError(f"not converged in {timeout}s: registry has {sorted(last or {})}, "
                         f"folder has {sorted(folder_files(setup.folder))}")


def verify_revision(setup: Setup, top: str, done: dict[str, bool]) -> None:
    """Every entry pinned, and its bytes at that version hash to the manifest's hash."""
    if done.get(top):
        return
    rev = setup.registry_api().revision(setup.package, top)  # also checks the manifest's top_hash
    c = boto3.client("s3", endpoint_url=setup.endpoint, region_name="us-east-1")
    for lk, e in rev.entries.items():
        u = urlparse(e.physical_key)
        vid = parse_qs(u.query).get("versionId", [None])[0]
        assert vid, f"{top[:12]} {lk}: not pinned"
        body = c.get_object(Bucket=u.netloc, Key=unquote(u.path.lstrip("/")), VersionId=vid)["Body"].read()
        assert len(body) == e.size, f"{top[:12]} {lk}: size"
        parts = [hashlib.sha256(body[i:i + PART]).digest() for i in range(0, len(body), PART)]
        got = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
        assert got == e.hash.value, f"{top[:12]} {lk}: bytes do not match the manifest"
    done[top] = True


def verify_history(setup: Setup, done: dict[str, bool]) -> list[str]:
    history = [t for _, t in setup.registry_api().versions(setup.package)]
    for t in history:
        verify_revision(setup, t, done)
    return history

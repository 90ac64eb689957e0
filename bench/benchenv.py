"""Shared set-up of the benchmarks: a private temp dir for quilt3's cache and data,
dummy credentials for the local S3, and quilt3's import-time environment."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TMP = Path(tempfile.mkdtemp(prefix="quiltsync-bench-"))
atexit.register(shutil.rmtree, TMP, ignore_errors=True)  # the benchmarks leave no temp dir behind
os.environ.update(XDG_CACHE_HOME=str(TMP / "cache"), XDG_DATA_HOME=str(TMP / "data"),
                  AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
    os.environ.pop(var, None)
sys.path.insert(0, str(ROOT / "daemon"))

from collections.abc import Iterator  # noqa: E402

from quiltsync.remote import settings as s3settings  # noqa: E402
from quiltsync.remote.s3local import LocalS3  # noqa: E402

s3settings.prepare_environment()  # before quilt3 is imported: no metrics, no progress bars


def baseline_tree(rev: str) -> Path:
    """The daemon of commit ``rev`` (``git archive``), for a benchmark's "before" side."""
    import subprocess

    base = TMP / "baseline"
    base.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "daemon"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    return base


@contextlib.contextmanager
def local_s3() -> Iterator[LocalS3]:
    """The embedded local S3, with quiltsync's S3 settings pointed at it and quiet logs."""
    from quiltsync import logs

    logs.configure("warning", "console")
    with LocalS3() as s3:
        s3settings.activate(s3settings.S3Settings(s3.endpoint_url, "us-east-1"))
        s3settings.import_quilt3()
        yield s3

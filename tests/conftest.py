"""Fixtures: a real local S3 (moto's server with the response fix) and configs.

quilt3 reads its cache and data directories at import time, so the XDG
variables point into a session temp dir before anything imports it: tests never
touch the user's Quilt cache or credentials. The dir is removed when the session ends.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="quiltsync-tests-"))
os.environ["XDG_CACHE_HOME"] = str(_SESSION_DIR / "cache")
os.environ["XDG_DATA_HOME"] = str(_SESSION_DIR / "data")
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_var, None)
# A safety net: anything not pointed at the local S3 goes to a closed loopback
# port, never to AWS (configs under test set AWS_ENDPOINT_URL_S3, which wins).
os.environ["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"
os.environ["AWS_MAX_ATTEMPTS"] = "3"

from quiltsync.remote import settings as _settings  # noqa: E402
from quiltsync.remote.s3local import LocalS3  # noqa: E402

# quiltsync imports quilt3 only where it uses it; tests that use quilt3 directly get
# it as quiltsync would (its import-time environment set, the client hook installed).
_settings.import_quilt3()

_bucket_numbers = itertools.count(1)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The session dir (quilt3's cache and data dirs of every test) goes with the session:
    `make test` leaves no quiltsync-tests-* behind in the temp dir."""
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def local_s3() -> Iterator[LocalS3]:
    """One moto S3 server on 127.0.0.1 (free port) for the whole session."""
    with LocalS3() as s3:
        os.environ["AWS_ENDPOINT_URL_S3"] = s3.endpoint_url
        yield s3
        os.environ.pop("AWS_ENDPOINT_URL_S3", None)


@pytest.fixture(autouse=True)
def _s3_settings() -> Iterator[None]:
    """Each test starts and ends with the process's S3 settings and client caches reset."""
    from quiltsync.remote import settings, transfer

    settings.reset()
    transfer.reset()
    yield
    settings.reset()
    transfer.reset()


@pytest.fixture
def bucket(local_s3: LocalS3) -> str:
    """A fresh versioned bucket for one test."""
    name = f"qs-test-{os.getpid()}-{next(_bucket_numbers)}"
    local_s3.create_bucket(name, versioning=True)
    local_s3.set_fault(None)
    return name


@dataclass
class Setup:
    """A watched folder, its config file and state dir, against the local S3."""

    root: Path
    folder: Path
    config_path: Path
    state_dir: Path
    package: str
    registry: str
    endpoint: str

    def config(self):  # -> quiltsync.config.Config
        from quiltsync.config import load_config

        return load_config(self.config_path)

    def pusher(self):  # a fresh FolderPusher, as a new process would build it
        from quiltsync.engine.pusher import FolderPusher
        from quiltsync.local.index import Index

        cfg = self.config()
        return FolderPusher(cfg.folder[0], Index(cfg.daemon.state_dir / "index.sqlite3"))

    def registry_api(self):
        from quiltsync.remote.registry import Registry

        return Registry(self.registry)

    def cli(self, *args: str, check: bool = False, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return run_cli("--config", str(self.config_path), *args, check=check, env=env)


def write_config(path: Path, folder: Path, package: str, registry: str, endpoint: str,
                 state_dir: Path, extra: str = "") -> None:
    path.write_text(textwrap.dedent(f"""\
        [daemon]
        state_dir = {json.dumps(str(state_dir))}
        log_format = "json"
        [s3]
        endpoint_url = "{endpoint}"
        [[folder]]
        path = {json.dumps(str(folder))}
        package = "{package}"
        registry = "{registry}"
        """) + extra)


@pytest.fixture
def setup(tmp_path: Path, bucket: str, local_s3: LocalS3) -> Setup:
    folder = tmp_path / "data"
    folder.mkdir()
    s = Setup(tmp_path, folder, tmp_path / "config.toml", tmp_path / "state", "team/data",
              f"s3://{bucket}", local_s3.endpoint_url)
    write_config(s.config_path, folder, s.package, s.registry, s.endpoint, s.state_dir)
    from quiltsync.remote import settings as s3settings

    s3settings.activate(s3settings.S3Settings(local_s3.endpoint_url, "us-east-1"))
    return s


def run_cli(*args: str, check: bool = False, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    """quiltsync as a separate process, as a user or a script runs it."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "quiltsync", *args], capture_output=True,
                          text=True, env=full_env, timeout=240)
    if check and proc.returncode != 0:
        raise AssertionError(f"quiltsync {args} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def json_events(stderr: str) -> list[dict]:
    """The JSON log lines of a run (anything else on stderr is ignored)."""
    out = []
    for line in stderr.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def manifest_files(setup: Setup, top_hash: str) -> dict[str, bytes]:
    """Each file of a revision as S3 returns it for the pinned version."""
    from urllib.parse import parse_qs, unquote, urlparse

    rev = setup.registry_api().revision(setup.package, top_hash)
    c = _client(setup.endpoint)
    out = {}
    for lk, e in rev.entries.items():
        u = urlparse(e.physical_key)
        vid = parse_qs(u.query).get("versionId", [None])[0]
        kw = {"VersionId": vid} if vid else {}
        out[lk] = c.get_object(Bucket=u.netloc, Key=unquote(u.path.lstrip("/")), **kw)["Body"].read()
    return out


def _client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


# -- the daemon as a process, on a folder with short settle times ------------------------------
FAST = "settle_seconds = 0.5\nmax_delay_seconds = 5\n"


@pytest.fixture
def fast(setup: Setup) -> Setup:
    """The setup with settle_seconds = 0.5 and max_delay_seconds = 5."""
    write_config(setup.config_path, setup.folder, setup.package, setup.registry, setup.endpoint,
                 setup.state_dir, FAST)
    return setup


@pytest.fixture
def daemon(fast: Setup) -> Iterator[object]:
    """`quiltsync run` on the fast setup, past its start-up reconcile (a daemonproc.DaemonProcess)."""
    from daemonproc import DaemonProcess

    d = DaemonProcess(fast.config_path)
    d.wait_for(lambda e: e.get("event") == "rescan.completed", timeout=60)
    yield d
    d.kill()

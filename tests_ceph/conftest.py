"""A real Ceph RGW for the tests of this directory (tests/s3ceph.py), and the suite's
helpers (tests/conftest.py). Root only, with Debian's ceph-mon, ceph-osd and radosgw:
`make test-s3-ceph`, which .ci/run runs as root."""

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import s3ceph
import suitefixtures

fixtures = suitefixtures.load()

_s3_settings = fixtures._s3_settings
# Importing it made its session temp dir: the hook that removes it is this session's too.
pytest_sessionfinish = fixtures.pytest_sessionfinish


@pytest.fixture(scope="session")
def rgw() -> Iterator[s3ceph.CephRGW]:
    """One Ceph cluster (mon, OSD, radosgw) for the session; fails, saying why, where
    Ceph cannot run: this directory is run only where it must."""
    why = s3ceph.available()
    if why is not None:
        pytest.fail(f"Ceph RGW is not available: {why} (install ceph-mon ceph-osd radosgw ceph-common; run as root)")
    with s3ceph.ceph_rgw() as cluster:
        yield cluster


@pytest.fixture
def ceph_env(rgw: s3ceph.CephRGW, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The gateway's credentials, for this process and the CLI processes it starts."""
    env = {"AWS_ACCESS_KEY_ID": rgw.access_key, "AWS_SECRET_ACCESS_KEY": rgw.secret_key}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return {**os.environ, **env}

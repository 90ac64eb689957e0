"""Reuse the test suite's real local S3 fixtures (tests/conftest.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import suitefixtures

fixtures = suitefixtures.load()
local_s3 = fixtures.local_s3
bucket = fixtures.bucket
# Importing it made its session temp dir: the hook that removes it is this session's too.
pytest_sessionfinish = fixtures.pytest_sessionfinish

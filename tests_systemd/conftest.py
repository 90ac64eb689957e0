"""Reuse the test suite's real local S3 fixtures (tests/conftest.py)."""

import importlib.util
import sys
from pathlib import Path

_path = Path(__file__).resolve().parent.parent / "tests" / "conftest.py"
_spec = importlib.util.spec_from_file_location("quiltsync_test_fixtures", _path)
assert _spec is not None and _spec.loader is not None
fixtures = importlib.util.module_from_spec(_spec)
sys.modules["quiltsync_test_fixtures"] = fixtures
_spec.loader.exec_module(fixtures)

local_s3 = fixtures.local_s3
bucket = fixtures.bucket
# Importing it made its session temp dir: the hook that removes it is this session's too.
pytest_sessionfinish = fixtures.pytest_sessionfinish

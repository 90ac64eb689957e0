"""The suite's fixtures and helpers (tests/conftest.py) for the suites run apart
(tests_ceph/, tests_systemd/): loaded once, as the module ``quiltsync_test_fixtures``
(each directory's own conftest.py is a module named ``conftest`` too)."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

NAME = "quiltsync_test_fixtures"


def load() -> ModuleType:
    if NAME in sys.modules:
        return sys.modules[NAME]
    spec = importlib.util.spec_from_file_location(NAME, Path(__file__).resolve().parent / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    spec.loader.exec_module(module)
    return module

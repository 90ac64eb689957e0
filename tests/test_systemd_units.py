"""The shipped systemd units: `systemd-analyze verify` is silent and exposure is at most 1.5."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
QUILTSYNC = str(Path(sys.executable).parent / "quiltsync")

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze is not installed (.ci/run installs it)")

CASES = [
    ("quiltsync.service", "quiltsync.service", False, "/opt/quiltsync/bin/quiltsync"),
    ("quiltsync@.service", "quiltsync@team.service", False, "/opt/quiltsync/bin/quiltsync"),
    ("user/quiltsync.service", "quiltsync.service", True, "%h/.local/bin/quiltsync"),
]


def _install(tmp_path: Path, src: str, name: str, exec_path: str) -> Path:
    text = (UNITS / src).read_text()
    assert exec_path in text
    unit = tmp_path / name
    unit.write_text(text.replace(exec_path, QUILTSYNC))
    return unit


def _run(args: list[str], user: bool, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if user:
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        args = [args[0], args[1], "--user", *args[2:]]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("src,name,user,exec_path", CASES)
def test_unit_verifies_without_any_output(tmp_path: Path, src, name, user, exec_path) -> None:
    """verify exits 0 even on unknown keys, so any output at all counts as a failure."""
    unit = _install(tmp_path, src, name, exec_path)
    proc = _run(["systemd-analyze", "verify", str(unit)], user, tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stderr


@pytest.mark.parametrize("src,name,user,exec_path", CASES)
def test_unit_exposure_is_at_most_1_5(tmp_path: Path, src, name, user, exec_path) -> None:
    """systemd-analyze security --offline=yes scores the hardened unit 1.5 or better."""
    unit = _install(tmp_path, src, name, exec_path)
    proc = _run(["systemd-analyze", "security", "--offline=yes", str(unit)], user, tmp_path)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= 1.5, proc.stdout


@pytest.mark.parametrize("src", ["quiltsync.service", "quiltsync@.service", "user/quiltsync.service"])
def test_every_hardening_line_is_explained(src: str) -> None:
    """Below the hardening marker, each group of settings carries a comment saying why."""
    lines = (UNITS / src).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# --- hardening"))
    body = [line for line in lines[start:] if not line.startswith("[")]
    settings = [line for line in body if "=" in line and not line.startswith("#")]
    comments = [line for line in body if line.startswith("#")]
    assert settings and len(comments) >= len(settings) // 4
    for required in ("Type=notify", "NotifyAccess=main", "WatchdogSec=", "ExecReload=", "KillMode=mixed",
                     "Restart=on-failure", "TimeoutStopSec=", "PYTHONFAULTHANDLER=1", "UMask="):
        assert required in "\n".join(lines), required

"""quiltsync.service under a real systemd (`make test-systemd`, root only).

systemd 252 boots as PID 1 of new pid/mount/cgroup/uts namespaces (FACTS.md);
the unit from systemd/ is installed with ExecStart pointing at this venv and the
local S3 (which runs in this process: the network namespace is shared), then
started, fed a file, reloaded, frozen until the watchdog kills and restarts it,
and stopped. A checkout (and its venv) in the temp dir works too: it is bound
back over the namespaces' own /tmp, and past the unit's PrivateTmp=yes.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
QUILTSYNC = str(Path(sys.executable).parent / "quiltsync")

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None
                                or not Path("/lib/systemd/systemd").exists(),
                                reason="needs root, unshare and systemd")

# The namespaces share the host's file systems: give the booted systemd its own
# /tmp, /var/tmp, /run and journal, or systemd-tmpfiles would clean the host's
# /tmp (seen: it did) and journald would write the host's journal.
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/run", "/var/log/journal", "/var/lib/systemd")
# The service's own PrivateTmp=yes hides these two once more (inside the booted systemd).
SERVICE_PRIVATE_DIRS = ("/tmp", "/var/tmp")


def _under(path: Path, dirs: tuple[str, ...]) -> bool:
    return any(path == Path(d) or Path(d) in path.parents for d in dirs)


def hidden_paths(dirs: tuple[str, ...] = PRIVATE_DIRS) -> list[Path]:
    """The checkout and the Python that runs it (venv, base interpreter) where the tmpfs
    mounts over ``dirs`` would hide them: a checkout in the temp dir is a normal place."""
    candidates = [ROOT, Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable)).parent]
    found: list[Path] = []
    for p in sorted({c.resolve() for c in candidates}, key=lambda c: len(c.parts)):
        if _under(p, dirs) and not any(k == p or k in p.parents for k in found):
            found.append(p)
    return found


def boot_script(keep: list[Path]) -> str:
    """A shell script that mounts the private dirs, then binds each ``keep`` path back into
    them: an fd opened before the tmpfs goes on still reaches the hidden directory, and
    ``mount --no-canonicalize`` binds that fd's directory (not the path, now on tmpfs)."""
    opens = "".join(f"exec {3 + i}<{shlex.quote(str(k))}\n" for i, k in enumerate(keep))
    binds = "".join(f"mkdir -p {shlex.quote(str(k))}\n"
                    f"mount --no-canonicalize --bind /proc/self/fd/{3 + i} {shlex.quote(str(k))}\n"
                    f"exec {3 + i}<&-\n" for i, k in enumerate(keep))
    return f"""#!/bin/bash
set -e
mount --make-rprivate /
mount -t proc proc /proc
{opens}for d in {" ".join(PRIVATE_DIRS)}; do
  mkdir -p "$d" && mount -t tmpfs -o mode=0755 tmpfs "$d"
done
chmod 1777 /tmp /var/tmp
{binds}mkdir -p /run/systemd/system
exec /lib/systemd/systemd --system --unit=multi-user.target
"""


class Systemd:
    def __init__(self, workdir: Path) -> None:
        boot = workdir / "boot.sh"
        boot.write_text(boot_script(hidden_paths()))
        boot.chmod(0o755)
        self.outer = subprocess.Popen(["unshare", "--pid", "--mount", "--cgroup", "--uts", "--fork", str(boot)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self._find_pid1()
        self.wait_until(lambda: self.ctl("is-system-running").stdout.strip() in ("running", "degraded"), 60)

    def _find_pid1(self) -> int:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            out = subprocess.run(["pgrep", "-P", str(self.outer.pid)], capture_output=True, text=True).stdout
            for pid in out.split():
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
            time.sleep(0.2)
        raise AssertionError("systemd did not start in the namespace")

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-p", "-u", *args],
                              capture_output=True, text=True, timeout=120)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args)

    def prop(self, unit: str, name: str) -> str:
        return self.ctl("show", "-p", name, "--value", unit).stdout.strip()

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "-u", unit, "-o", "cat", "--no-pager", "--all").stdout

    @staticmethod
    def wait_until(pred, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.3)
        raise AssertionError(f"condition not met within {timeout}s")

    def shutdown(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.outer.wait(timeout=30)


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[Systemd]:
    s = Systemd(tmp_path)
    yield s
    s.shutdown()


def test_the_unit_starts_pushes_reloads_survives_a_watchdog_kill_and_stops(systemd: Systemd, local_s3, bucket) -> None:
    """READY, a pushed revision, reload, watchdog kill + restart, clean stop: all for real."""
    from quiltsync.remote.registry import Registry

    base = Path("/srv") / f"quiltsync-systemd-test-{uuid.uuid4().hex[:8]}"  # not /tmp: PrivateTmp
    folder = base / "data"
    folder.mkdir(parents=True)
    base.chmod(0o755)
    config = base / "config.toml"
    config.write_text(textwrap.dedent(f"""\
        [s3]
        endpoint_url = "{local_s3.endpoint_url}"
        [[folder]]
        path = "{folder}"
        package = "team/systemd"
        registry = "s3://{bucket}"
        settle_seconds = 0.5
        """))
    config.chmod(0o644)
    unit = (ROOT / "systemd" / "quiltsync.service").read_text()
    unit = unit.replace("/opt/quiltsync/bin/quiltsync --config /etc/quiltsync/config.toml",
                        f"{QUILTSYNC} --config {config}")
    unit = unit.replace("User=quiltsync", "User=root").replace("Group=quiltsync", "Group=root")
    unit = unit.replace("WatchdogSec=60s", "WatchdogSec=4s").replace("RestartSec=10s", "RestartSec=1s")
    unit = unit.replace("[Service]\n", "[Service]\nEnvironment=AWS_ACCESS_KEY_ID=testing "
                        "AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1\n", 1)
    for path in hidden_paths(SERVICE_PRIVATE_DIRS):  # a checkout in the temp dir, past PrivateTmp=yes
        unit = unit.replace("[Service]\n", f"[Service]\nBindReadOnlyPaths={path}\n", 1)
    systemd.run("sh", "-c", f"cat > /run/systemd/system/quiltsync.service <<'EOF'\n{unit}\nEOF")
    try:
        systemd.ctl("daemon-reload")
        started = systemd.ctl("start", "quiltsync.service")  # Type=notify: returns after READY=1
        assert started.returncode == 0, started.stderr + systemd.journal("quiltsync.service")
        assert systemd.prop("quiltsync.service", "ActiveState") == "active"
        assert "folders" in systemd.prop("quiltsync.service", "StatusText")

        (folder / "hello.txt").write_text("pushed under systemd")
        reg = Registry(f"s3://{bucket}")
        systemd.wait_until(lambda: reg.latest("team/systemd") is not None, 60)
        rev = reg.revision("team/systemd", reg.latest("team/systemd"))
        assert set(rev.entries) == {"hello.txt"}
        # `latest` moves a moment before the daemon logs push.completed
        systemd.wait_until(lambda: '"event": "push.completed"' in systemd.journal("quiltsync.service"), 30)
        assert systemd.run("journalctl", "-u", "quiltsync.service", "-p", "info", "-o", "cat",
                           "--no-pager").stdout.count("push.completed") >= 1

        assert systemd.ctl("reload", "quiltsync.service").returncode == 0
        systemd.wait_until(lambda: "daemon.reloaded" in systemd.journal("quiltsync.service"), 30)

        first_pid = int(systemd.prop("quiltsync.service", "MainPID"))
        systemd.run("kill", "-STOP", str(first_pid))  # a hung main loop: no more WATCHDOG=1
        systemd.wait_until(lambda: systemd.prop("quiltsync.service", "MainPID") not in ("0", str(first_pid))
                           and systemd.prop("quiltsync.service", "ActiveState") == "active", 60)
        assert "watchdog" in systemd.journal("quiltsync.service").lower() or \
            int(systemd.prop("quiltsync.service", "NRestarts")) >= 1

        assert systemd.ctl("stop", "quiltsync.service").returncode == 0
        assert systemd.prop("quiltsync.service", "ActiveState") == "inactive"
        assert systemd.prop("quiltsync.service", "Result") == "success"
        assert '"event": "daemon.stopping"' in systemd.journal("quiltsync.service")
    finally:
        shutil.rmtree(base, ignore_errors=True)

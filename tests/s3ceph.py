"""A throwaway one-node Ceph cluster with the RADOS gateway (S3) on 127.0.0.1, for tests.

Why: moto is not a real S3 server. Ceph's radosgw is an independent S3 implementation
(versioning, ListObjectVersions, multipart) that runs locally without Docker, so tests
can check quiltsync against a server other than moto, e.g. one without flexible
checksums (FACTS.md: Ceph 16.2.15 sends no ``ChecksumSHA256``).

What it runs (Debian 12's ceph-mon, ceph-osd, radosgw, ceph-common 16.2.15, as root):
- one monitor ``mon.a`` on a v2-only address, no cephx (``auth * required = none``) and
  CRC-mode connections to it (with no cephx, radosgw's default "secure" mode fails the
  monitor handshake with ``get_initial_auth_request returned -13``);
- one OSD ``osd.0`` on ``memstore`` (data in RAM), with pools of size 1 by default so
  the pools radosgw creates for itself go active on the single OSD;
- ``radosgw`` (``client.rgw.a``) with the beast frontend, plus one S3 user made with
  ``radosgw-admin user create``.

Everything lives in one temporary directory (config, monitor store, OSD data, logs,
admin sockets, pid files, run dir); every command gets ``-c <that ceph.conf>``, so
nothing in /etc/ceph, /var/lib/ceph, /var/log/ceph or /var/run/ceph is read or
written. The monitor and gateway listen on free loopback ports picked at start; the
OSD picks free ports in Ceph's own range (6800-7300), on 127.0.0.1 only. Daemons run in
the foreground as child processes in their own sessions, so stopping them is a
SIGTERM (then SIGKILL) to each process group; the directory is removed afterwards.
There is no manager daemon: nothing here needs one.

    with ceph_rgw() as rgw:
        s3 = boto3.client("s3", endpoint_url=rgw.endpoint_url,
                          aws_access_key_id=rgw.access_key,
                          aws_secret_access_key=rgw.secret_key, region_name="us-east-1")
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CephRGW", "available", "ceph_rgw"]

BINARIES = ("monmaptool", "ceph-mon", "ceph-osd", "ceph", "radosgw", "radosgw-admin")
POLL_S = 0.2  # interval between two checks of a condition being waited for
STOP_TIMEOUT_S = 10.0  # per daemon, from SIGTERM to SIGKILL
LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class CephRGW:
    """A running gateway: its S3 endpoint, the S3 user's keys and the cluster's directory."""

    endpoint_url: str  # http://127.0.0.1:PORT
    access_key: str
    secret_key: str
    root: Path


def available() -> str | None:
    """None if a cluster can be started here; else a one-line reason to skip."""
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        return f"Ceph binaries not found: {', '.join(missing)} (apt-get install ceph-mon ceph-osd radosgw ceph-common)"
    if os.geteuid() != 0:
        return "a local Ceph cluster must run as root"
    return None


def _free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (all held open until all are picked)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _config(root: Path, fsid: str, mon_port: int, rgw_port: int) -> str:
    # `$cluster`, `$name` and `$id` are Ceph's own metavariables, expanded per daemon.
    return f"""\
[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{mon_port}]
mon initial members = a
auth cluster required = none
auth service required = none
auth client required = none
# Without cephx, radosgw's monitor handshake fails ("get_initial_auth_request returned
# -13") unless it asks for CRC mode (the monitor, OSD and CLI work either way).
ms mon client mode = crc
ms bind msgr1 = false
ms bind ipv6 = false
public addr = 127.0.0.1
cluster addr = 127.0.0.1
run dir = {root}/run
log file = {root}/log/$cluster-$name.log
mon cluster log file = {root}/log/$cluster.log
crash dir = {root}/crash
keyring = {root}/keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
# The monitor commits map changes every 0.1 s, not every 1 s: start-up takes ~2 s, not ~13 s
# (the OSD's boot and each pool radosgw creates wait for a new OSD map).
paxos propose interval = 0.1
paxos min wait = 0.01

[mon]
mon data = {root}/mon/$cluster-$id
admin socket = {root}/run/$cluster-$name.asok
pid file = {root}/run/$cluster-$name.pid

[osd]
osd data = {root}/osd/$cluster-$id
osd objectstore = memstore
memstore device bytes = {2 * 1024**3}
osd mon shutdown timeout = 1
admin socket = {root}/run/$cluster-$name.asok
pid file = {root}/run/$cluster-$name.pid

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {root}/rgw
# Its lifecycle thread sleeps 5 s at a time and holds up SIGTERM that long; no
# lifecycle rules are processed (expiration) here.
rgw enable lc threads = false
admin socket = {root}/run/$cluster-$name.asok
pid file = {root}/run/$cluster-$name.pid
"""


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"({path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


class _Cluster:
    """The daemons of one cluster, started one after the other, with a common deadline."""

    def __init__(self, root: Path, conf: Path, deadline: float) -> None:
        self.root = root
        self.conf = conf
        self.deadline = deadline
        self.daemons: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def log(self, name: str) -> Path:
        return self.root / "log" / f"ceph-{name}.log"

    def fail(self, what: str, *logs: Path, detail: str = "") -> RuntimeError:
        parts = [f"Ceph test cluster: {what} (in {self.root})"]
        if detail:
            parts.append(detail.rstrip())
        for log in logs:
            parts.append(f"--- tail of {log.name} ---\n{_tail(log)}")
        return RuntimeError("\n".join(parts))

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, argv: list[str], what: str, *logs: Path) -> str:
        """Run a command to completion within the deadline; its stdout, or RuntimeError."""
        timeout = max(self.remaining(), 1.0)
        try:
            done = subprocess.run(
                argv, cwd=self.root, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise self.fail(f"{what}: timed out after {timeout:.0f} s: {' '.join(argv)}", *logs) from exc
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise self.fail(f"{what}: exit code {done.returncode}: {' '.join(argv)}", *logs, detail=output)
        return done.stdout.decode(errors="replace")

    def ceph(self, *args: str) -> str | None:
        """A `ceph` CLI command's stdout, or None if it failed (the monitor may not be up yet)."""
        timeout = min(max(self.remaining(), 1.0), 10.0)
        argv = ["ceph", "-c", str(self.conf), "--connect-timeout", str(int(timeout)), *args]
        try:
            done = subprocess.run(
                argv, cwd=self.root, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout + 5, check=False
            )
        except subprocess.TimeoutExpired:
            return None
        return done.stdout.decode(errors="replace") if done.returncode == 0 else None

    def start(self, name: str, argv: list[str]) -> None:
        """Start a daemon in the foreground, in its own session; its stdout/stderr go to log/<name>.out."""
        out = self.root / "log" / f"{name}.out"
        with out.open("wb") as sink:
            proc = subprocess.Popen(
                argv,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.daemons.append((name, proc, out))

    def wait(self, what: str, condition: Callable[[], bool], *logs: Path) -> None:
        """Poll until condition() holds; RuntimeError if a daemon exits or the deadline passes."""
        while True:
            if condition():
                return
            for name, proc, out in self.daemons:
                if proc.poll() is not None:
                    raise self.fail(f"{what}: {name} exited with code {proc.returncode}", *logs, self.log(name), out)
            if self.remaining() <= 0:
                raise self.fail(f"{what}: timed out", *logs)
            time.sleep(POLL_S)

    def stop(self) -> None:
        """SIGTERM each daemon's process group, newest first (then SIGKILL after a timeout)."""
        for _name, proc, _out in reversed(self.daemons):
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            _signal_group(proc, signal.SIGKILL)  # anything it left behind in its group
        self.daemons.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


@contextlib.contextmanager
def ceph_rgw(timeout_s: float = 120) -> Iterator[CephRGW]:
    """Start a one-node Ceph cluster with radosgw and an S3 user; stop and remove it on exit.

    Raises RuntimeError (with the tail of the relevant log) if a step fails or the whole
    start-up takes longer than timeout_s.
    """
    reason = available()
    if reason is not None:
        raise RuntimeError(f"Ceph test cluster: {reason}")
    root = Path(tempfile.mkdtemp(prefix="quiltsync-ceph-"))
    conf = root / "ceph.conf"
    cluster = _Cluster(root, conf, time.monotonic() + timeout_s)
    try:
        for sub in ("run", "log", "crash", "rgw", "mon/ceph-a", "osd/ceph-0"):
            (root / sub).mkdir(parents=True)
        mon_port, rgw_port = _free_ports(2)
        fsid = str(uuid.uuid4())
        conf.write_text(_config(root, fsid, mon_port, rgw_port))
        c = str(conf)
        mon_log, osd_log, rgw_log = cluster.log("mon.a"), cluster.log("osd.0"), cluster.log("client.rgw.a")
        admin_log = cluster.log("client.admin")

        # The monitor.
        monmap = str(root / "monmap")
        cluster.run(
            ["monmaptool", "--create", "--addv", "a", f"[v2:127.0.0.1:{mon_port}]", "--fsid", fsid, monmap],
            "monmaptool",
        )
        cluster.run(["ceph-mon", "-c", c, "--mkfs", "-i", "a", "--monmap", monmap], "ceph-mon --mkfs", mon_log)
        cluster.start("mon.a", ["ceph-mon", "-c", c, "-f", "-i", "a"])

        def in_quorum() -> bool:
            out = cluster.ceph("quorum_status", "-f", "json")
            return out is not None and "a" in json.loads(out).get("quorum_names", [])

        cluster.wait("waiting for the monitor's quorum", in_quorum, mon_log, admin_log)

        # The OSD: registered with the monitor, formatted, started; up once it has booted.
        osd_uuid = str(uuid.uuid4())
        osd_id = cluster.run(["ceph", "-c", c, "osd", "new", osd_uuid], "ceph osd new", mon_log, admin_log).strip()
        if osd_id != "0":
            raise cluster.fail(f"ceph osd new gave OSD id {osd_id!r}, not 0", mon_log)
        cluster.run(["ceph-osd", "-c", c, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid], "ceph-osd --mkfs", osd_log)
        cluster.start("osd.0", ["ceph-osd", "-c", c, "-f", "-i", "0"])

        def osd_up() -> bool:
            out = cluster.ceph("osd", "stat", "-f", "json")
            if out is None:
                return False
            stat = json.loads(out)
            stat = stat.get("osdmap", stat)  # older releases nest it
            return int(stat.get("num_up_osds", 0)) >= 1 and int(stat.get("num_in_osds", 0)) >= 1

        cluster.wait("waiting for osd.0 to be up and in", osd_up, osd_log, mon_log)

        # The gateway: it creates its pools (size 1 by default), then opens its port.
        cluster.start("client.rgw.a", ["radosgw", "-c", c, "-f", "-n", "client.rgw.a"])
        cluster.wait("waiting for radosgw to listen", lambda: _port_open(rgw_port), rgw_log, osd_log)

        access_key = "QS" + secrets.token_hex(9).upper()
        secret_key = secrets.token_urlsafe(30)
        user = ["--uid", "quiltsync-test", "--display-name", "quiltsync tests"]
        keys = ["--access-key", access_key, "--secret-key", secret_key]
        cluster.run(
            ["radosgw-admin", "-c", c, "user", "create", *user, *keys], "radosgw-admin user create", admin_log, rgw_log
        )
        rgw = CephRGW(f"http://127.0.0.1:{rgw_port}", access_key, secret_key, root)
        last_error: list[str] = []

        def s3_answers() -> bool:
            try:
                _s3_client(rgw).list_buckets()
            except Exception as exc:
                last_error[:] = [f"last S3 error: {type(exc).__name__}: {exc}"]
                return False
            return True

        try:
            cluster.wait("waiting for radosgw to answer S3 with the new user's keys", s3_answers, rgw_log)
        except RuntimeError as exc:
            raise RuntimeError("\n".join([str(exc), *last_error])) from None
        yield rgw
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _s3_client(rgw: CephRGW) -> Any:  # boto3 clients are untyped here
    import boto3  # the project's dependency; imported late so available() works without it
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=rgw.endpoint_url,
        aws_access_key_id=rgw.access_key,
        aws_secret_access_key=rgw.secret_key,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            connect_timeout=2,
            read_timeout=5,
            retries={"max_attempts": 1, "mode": "standard"},
        ),
    )

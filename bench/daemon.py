"""Daemon benchmarks: latency, storm, idle. `quiltsync run` as a process, local S3 in this one.

    python bench/daemon.py latency [--writes 20]
    python bench/daemon.py storm   [--files 10000]
    python bench/daemon.py idle    [--dirs 10000 --per-dir 10 --idle-seconds 60]

latency: write one small file, time until push.completed is logged; p50/p95 of
         (latency - settle_seconds). Target p50 < 1 s.
storm:   N files created as fast as possible: pushes made, wall time to the
         converged revision, peak RSS. Target: every file in the final revision,
         at most 1 + burst seconds / max_delay pushes.
idle:    a tree of D dirs x F files watched: start-up time, RSS, CPU over the idle
         period, then a restart with nothing changed (files hashed, S3 requests,
         time) against a bare os.scandir walk of the tree. Targets: < 0.5% of a
         core idle, < 150 MB RSS, zero uploads and zero files hashed on the
         no-change restart, which takes at most twice the bare walk.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from benchenv import ROOT, TMP  # noqa: F401  (sets the environment first)
from quiltsync.remote.s3local import LocalS3

TICK = os.sysconf("SC_CLK_TCK")


class Daemon:
    def __init__(self, config: Path) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "quiltsync", "--config", str(config), "run"],
                                     stderr=subprocess.PIPE, text=True)
        self.events: queue.Queue[tuple[float, dict]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                self.events.put((time.monotonic(), json.loads(line)))
            except ValueError:
                pass

    def wait(self, name: str, timeout: float = 600, **fields: object) -> tuple[float, dict]:
        deadline = time.monotonic() + timeout
        while True:
            t, e = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            if e.get("event") == name and all(e.get(k) == v for k, v in fields.items()):
                return t, e

    def drain(self) -> list[dict]:
        out = []
        while True:
            try:
                out.append(self.events.get_nowait()[1])
            except queue.Empty:
                return out

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def rss_mb(self, key: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        return -1.0

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


def write_config(s3: LocalS3, folder: Path, settle: float, max_delay: float) -> Path:
    cfg = TMP / "config.toml"
    cfg.write_text(textwrap.dedent(f"""\
        [daemon]
        state_dir = "{TMP / 'state'}"
        log_format = "json"
        [s3]
        endpoint_url = "{s3.endpoint_url}"
        [[folder]]
        path = "{folder}"
        package = "bench/daemon"
        registry = "s3://bench"
        settle_seconds = {settle}
        max_delay_seconds = {max_delay}
        """))
    return cfg


def latency(s3: LocalS3, writes: int) -> bool:
    folder = TMP / "latency"
    folder.mkdir()
    settle = 0.5
    d = Daemon(write_config(s3, folder, settle, 10))
    d.wait("rescan.completed")
    lat = []
    for i in range(writes):
        time.sleep(1.2)  # one push per second per package: do not measure that wait
        t0 = time.monotonic()
        (folder / f"w{i:02d}.txt").write_text(f"write {i}")
        t1, _ = d.wait("push.completed", files=i + 1)
        lat.append(t1 - t0 - settle)
    d.stop()
    lat.sort()
    p50, p95 = statistics.median(lat), lat[int(0.95 * (len(lat) - 1))]
    print(f"latency over {writes} writes, minus settle {settle}s: p50 {p50 * 1000:.0f} ms, "
          f"p95 {p95 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms (target p50 < 1000 ms)")
    return p50 < 1.0


def storm(s3: LocalS3, files: int) -> bool:
    folder = TMP / "storm"
    folder.mkdir()
    max_delay = 10.0
    d = Daemon(write_config(s3, folder, 2.0, max_delay))
    d.wait("rescan.completed")
    d.drain()
    t0 = time.monotonic()
    for i in range(files):
        sub = folder / f"d{i // 100:03d}"
        if i % 100 == 0:
            sub.mkdir()
        (sub / f"f{i:05d}.bin").write_bytes(b"x" * 100)
    burst = time.monotonic() - t0
    t1, last = d.wait("push.completed", files=files, timeout=1800)
    pushes = 1 + sum(1 for e in d.drain() if e.get("event") == "push.completed")  # the waited one
    peak = d.rss_mb("VmHWM")
    d.stop()
    allowed = 1 + burst / max_delay
    print(f"storm of {files} files: burst {burst:.1f} s, converged {t1 - t0:.1f} s after the burst "
          f"began, {pushes} pushes (allowed {allowed:.1f}), peak RSS {peak:.0f} MB")
    return pushes <= allowed and last["files"] == files


def bare_walk(root: Path, stat: bool = False) -> float:
    t = time.perf_counter()
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif stat:
                    e.stat(follow_symlinks=False)
    return time.perf_counter() - t


def idle(s3: LocalS3, dirs: int, per_dir: int, idle_seconds: float) -> bool:
    folder = TMP / "idle"
    for i in range(dirs):
        d = folder / f"a{i // 100:03d}" / f"b{i:05d}"
        d.mkdir(parents=True)
        for j in range(per_dir):
            (d / f"f{j}.txt").write_text(f"{i}-{j}")
    n = dirs * per_dir
    cfg = write_config(s3, folder, 2.0, 30)
    print(f"idle tree: {dirs} dirs, {n} files; first start pushes them all (slow on moto)")
    d = Daemon(cfg)
    d.wait("push.completed", files=n, timeout=3600)
    d.stop()
    time.sleep(1)

    d = Daemon(cfg)
    t_watch, e_watch = d.wait("watch.started")
    s3.reset_requests()
    t_ready, e_skip = d.wait("push.skipped")
    restart = t_ready - d.started
    requests = len(s3.requests)
    uploads = sum(1 for r in s3.requests if r.method == "PUT")
    rss = d.rss_mb()
    time.sleep(2)
    cpu0, t0 = d.cpu_seconds(), time.monotonic()
    time.sleep(idle_seconds)
    cpu = (d.cpu_seconds() - cpu0) / (time.monotonic() - t0)
    rss_after = d.rss_mb()
    d.stop()
    walk = sorted(bare_walk(folder) for _ in range(3))[1]
    walk_stat = sorted(bare_walk(folder, stat=True) for _ in range(3))[1]
    reconcile = e_skip.get("duration_ms", 0) / 1000
    print(f"start-up to watch.started: {t_watch - d.started:.2f} s ({e_watch.get('directories')} watches)")
    print(f"no-change restart: {restart:.2f} s from process start to push.skipped; the reconcile pass "
          f"itself {reconcile:.2f} s; {e_skip.get('hashed')} files hashed, {requests} S3 requests, "
          f"{uploads} uploads")
    print(f"  vs a bare os.scandir walk {walk:.2f} s (ratio {reconcile / walk:.1f}x) and a walk that "
          f"also stats each file {walk_stat:.2f} s (ratio {reconcile / walk_stat:.1f}x)")
    print(f"idle: {cpu * 100:.2f}% of a core over {idle_seconds:.0f} s, RSS {rss:.0f} MB "
          f"(after idle {rss_after:.0f} MB)")
    checks = {
        "idle CPU < 0.5% of a core": cpu < 0.005,
        "RSS < 150 MB (after the restart's reconcile)": rss < 150,
        "RSS < 150 MB (idle)": rss_after < 150,
        "zero files hashed and zero uploads on the no-change restart": e_skip.get("hashed") == 0 and uploads == 0,
        "no-change reconcile <= 2x a bare os.scandir walk": reconcile <= 2 * walk,
    }
    for name, met in checks.items():
        print(f"  {'met    ' if met else 'NOT met'} {name}")
    return all(checks.values())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("which", choices=["latency", "storm", "idle", "all"])
    ap.add_argument("--writes", type=int, default=20)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--dirs", type=int, default=10_000)
    ap.add_argument("--per-dir", type=int, default=10)
    ap.add_argument("--idle-seconds", type=float, default=60)
    a = ap.parse_args()
    ok = True
    with LocalS3() as s3:
        s3.create_bucket("bench", versioning=True)
        if a.which in ("latency", "all"):
            ok &= latency(s3, a.writes)
        if a.which in ("storm", "all"):
            ok &= storm(s3, a.files)
        if a.which in ("idle", "all"):
            ok &= idle(s3, a.dirs, a.per_dir, a.idle_seconds)
    print("targets:", "met" if ok else "NOT all met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

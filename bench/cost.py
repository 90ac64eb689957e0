"""bench/cost: what a revision costs as the folder grows, before and after, in one run.

"before" is the tree at ``--baseline`` (default: the commit before issue 13's
work), extracted with ``git archive``; "after" is this tree. Both run the same
scripts against one embedded local S3, which counts every request and its bytes.

push     one changed file in a folder of N files (1,000 / 10,000 / 50,000 /
         200,000): push pass (``duration_ms``), client CPU, peak RSS over the
         rounds, S3 requests, bytes sent, manifest bytes. Each side is a process
         (bench/cost_worker.py) that starts from its index (a set-up run adopted
         the package), makes the start-up reconcile, then pushes ``--rounds``
         single-file edits the way the daemon does (the changed path known);
         medians of all rounds but the process's first, which is shown apart (it
         also encodes every entry once). Peak RSS is the process's, start-up included.
restart  a no-change restart of the daemon on 50,000 files with the health checks
         running at start: the reconcile pass, and process start to its end,
         against a walk that stats every file.
idle     both daemons watch 50,000 files with health_interval_seconds = 60 for
         ``--idle-seconds`` (600): S3 GET bytes (after start-up, which is shown
         apart).
rename   a directory of 200 files renamed, then a 100 MB file copied: data objects
         and bytes uploaded.
pacing   manifest bytes a day of a 100,000-file folder under continuous edits
         (a push every max_delay_seconds = 30), with the default budget, from the
         manifest size per file measured in ``push``.

The starting revision of each folder is written by the bench itself (all files
have the same 1.5 KiB content, uploaded once, so every entry points at one real
object version: a revision quilt3 can install), because pushing 200,000 objects
to moto first would take most of an hour; what is measured starts after it.

    python bench/cost.py [--sizes 1000,10000,50000,200000] [--rounds 3] [--idle-seconds 600]
                         [--only push,restart,idle,rename,pacing] [--baseline REV]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from benchenv import ROOT, TMP, baseline_tree, local_s3
from quiltsync.core.manifest import ManifestWriter
from quiltsync.core.pacing import DAY_S, Pacer
from quiltsync.core.types import Entry, HashValue
from quiltsync.local.hashing import chunked_sha256
from quiltsync.remote.s3local import LocalS3

BASELINE = "818b345"  # main before issue 13 (cost that follows the change)
SIDES = ("before", "after")
CONTENT = b"quiltsync bench " * 96  # 1,536 bytes, every file of a folder


def trees(baseline: str) -> dict[str, Path]:
    return {"before": baseline_tree(baseline), "after": ROOT}


def make_folder(folder: Path, n: int) -> list[str]:
    keys = []
    for i in range(n):
        lk = f"d{i // 500:03d}/f{i:06d}.bin"
        path = folder / lk
        if i % 500 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(CONTENT)
        keys.append(lk)
    return keys


def seed(s3: LocalS3, bucket: str, package: str, keys: list[str], revisions: int = 1) -> str:
    """The package's first revision(s): every entry at the one uploaded object version."""
    c = s3.client()
    vid = c.put_object(Bucket=bucket, Key=f"{package}/{keys[0]}", Body=CONTENT)["VersionId"]
    digest = chunked_sha256_bytes(CONTENT)
    pk = f"s3://{bucket}/{package}/{keys[0]}?versionId={vid}"
    entries = {lk: Entry(digest, len(CONTENT), pk) for lk in keys}
    top = ""
    for r in range(revisions):
        built = ManifestWriter().build({"version": "v0", "message": f"bench seed {r}"}, entries)
        top = built.top_hash
        c.put_object(Bucket=bucket, Key=f".quilt/packages/{top}", Body=built.data)
        c.put_object(Bucket=bucket, Key=f".quilt/named_packages/{package}/{int(time.time()) - 10 + r}", Body=top.encode())
        c.put_object(Bucket=bucket, Key=f".quilt/named_packages/{package}/latest", Body=top.encode())
    return top


def chunked_sha256_bytes(data: bytes) -> HashValue:
    tmp = TMP / "hash-me"
    tmp.write_bytes(data)
    return chunked_sha256(tmp)


class Worker:
    def __init__(self, tree: Path, s3: LocalS3, folder: Path, package: str, bucket: str, state: Path,
                 adopt_only: bool = False) -> None:
        env = dict(os.environ, QS_TREE=str(tree), **({"QS_ADOPT_ONLY": "1"} if adopt_only else {}))
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "cost_worker.py"), str(folder), package, f"s3://{bucket}",
             s3.endpoint_url, str(state)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.ready = self.read()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker ended (exit {self.proc.wait()})")
        return dict(json.loads(line))

    def ask(self, cmd: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.read()

    def end(self) -> float:
        peak = float(self.ask("end")["peak_rss_mb"])
        self.proc.wait(timeout=60)
        return peak


def push_costs(s3: LocalS3, tree: dict[str, Path], sizes: list[int], rounds: int) -> dict[int, dict[str, dict]]:
    out: dict[int, dict[str, dict]] = {}
    for n in sizes:
        folder = TMP / f"n{n}"
        t = time.monotonic()
        keys = make_folder(folder, n)
        package = f"bench/n{n}"
        seed(s3, "bench", package, keys)
        print(f"\n{n} files: folder and seed revision in {time.monotonic() - t:.1f} s", flush=True)
        out[n] = {}
        for side in SIDES:
            Worker(tree[side], s3, folder, package, "bench", TMP / f"state-{side}-{n}", adopt_only=True).proc.wait()
            w = Worker(tree[side], s3, folder, package, "bench", TMP / f"state-{side}-{n}")
            rows = []
            for k in range(rounds):
                time.sleep(1.1)  # revisions are named by the second: pushes this close would wait for the next
                s3.reset_requests()
                r = w.ask(f"round {k}")
                reqs = s3.requests
                assert r["pushed"], r
                rows.append({**r, "requests": len(reqs), "sent": sum(q.sent for q in reqs),
                             "manifest": sum(q.sent for q in reqs if q.method == "PUT" and "/.quilt/packages/" in q.path),
                             "data_puts": sum(1 for q in reqs if q.method in ("PUT", "POST") and not q.is_quilt_metadata)})
            peak = w.end()
            later = rows[1:] or rows  # the first push of a process also encodes every entry once
            med = {k: statistics.median(r[k] for r in later) for k in ("duration_ms", "cpu_s", "requests", "sent",
                                                                        "manifest", "data_puts")}
            out[n][side] = {**med, "peak_rss_mb": peak, "adopt_s": w.ready["ready"], "first": rows[0]}
            print(f"  {side:<6} push {med['duration_ms']:7.0f} ms  cpu {med['cpu_s']:6.2f} s  peak RSS "
                  f"{peak:6.0f} MB  {med['requests']:.0f} requests, {med['sent'] / 1e6:6.2f} MB sent "
                  f"(manifest {med['manifest'] / 1e6:.2f} MB), {med['data_puts']:.0f} data PUT; the process's "
                  f"first push {rows[0]['duration_ms']} ms, cpu {rows[0]['cpu_s']:.2f} s", flush=True)
    return out


def report_push(res: dict[int, dict[str, dict]]) -> dict[str, bool]:
    print("\none changed file, medians; after/before ratios")
    print(f"{'files':>8} | {'push pass ms':>17} | {'CPU s':>15} | {'peak RSS MB':>15} | {'requests':>9} | "
          f"{'MB sent':>13}")
    for n, r in res.items():
        b, a = r["before"], r["after"]
        print(f"{n:>8} | {b['duration_ms']:6.0f} {a['duration_ms']:5.0f} {a['duration_ms'] / b['duration_ms']:4.2f}x"
              f" | {b['cpu_s']:5.2f} {a['cpu_s']:4.2f} {a['cpu_s'] / b['cpu_s']:4.2f}x"
              f" | {b['peak_rss_mb']:5.0f} {a['peak_rss_mb']:4.0f} {a['peak_rss_mb'] / b['peak_rss_mb']:4.2f}x"
              f" | {b['requests']:3.0f} {a['requests']:3.0f}  | {b['sent'] / 1e6:5.2f} {a['sent'] / 1e6:5.2f}")
    checks: dict[str, bool] = {}
    if 50_000 in res:
        a = res[50_000]["after"]
        checks["50,000 files: push pass <= 1.0 s"] = a["duration_ms"] <= 1000
        checks["50,000 files: peak RSS <= 150 MB"] = a["peak_rss_mb"] <= 150
    if 10_000 in res and 50_000 in res:
        per = {s: (res[50_000][s]["cpu_s"] - res[10_000][s]["cpu_s"]) / 4 for s in SIDES}
        print(f"CPU per extra 10,000 files (10k -> 50k): before {per['before'] * 1000:.0f} ms, "
              f"after {per['after'] * 1000:.0f} ms ({per['after'] / per['before']:.3f}x)")
        checks["CPU per extra 10,000 files <= a tenth of before's"] = per["after"] <= per["before"] / 10
    return checks


# -- the daemon: restart and idle ----------------------------------------------------------
def write_config(path: Path, s3: LocalS3, folder: Path, package: str, bucket: str, state: Path) -> Path:
    path.write_text(textwrap.dedent(f"""\
        [daemon]
        state_dir = "{state}"
        log_format = "json"
        health_interval_seconds = 60
        rescan_interval_seconds = 86400
        [s3]
        endpoint_url = "{s3.endpoint_url}"
        [[folder]]
        path = "{folder}"
        package = "{package}"
        registry = "s3://{bucket}"
        """))
    return path


def start_daemon(tree: Path, config: Path) -> Any:
    from daemon import Daemon  # bench/daemon.py: the process, its JSON events, CPU and RSS

    env = dict(os.environ, PYTHONPATH=str(tree / "daemon"))
    old = os.environ.copy()
    os.environ.update(env)
    try:
        return Daemon(config)
    finally:
        os.environ.clear()
        os.environ.update(old)


def wait_all(d: Any, events: list[tuple[str, dict[str, Any]]], timeout: float) -> dict[str, tuple[float, dict]]:
    """Wait until each (event, fields) was logged, in any order: (time, event) of each."""
    seen: dict[str, tuple[float, dict]] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(events):
        t, e = d.events.get(timeout=max(0.1, deadline - time.monotonic()))
        for name, fields in events:
            if name not in seen and e.get("event") == name and all(e.get(k) == v for k, v in fields.items()):
                seen[name] = (t, e)
    return seen


STARTED = [("push.skipped", {}), ("health.ok", {"check": "manifest_pinned"})]


def restart(s3: LocalS3, tree: dict[str, Path], n: int) -> dict[str, bool]:
    from daemon import bare_walk

    folder = TMP / f"restart{n}"
    keys = make_folder(folder, n)
    out = {}
    for side in SIDES:
        package = f"bench/restart-{side}"
        seed(s3, "bench", package, keys, revisions=2)
        cfg = write_config(TMP / f"restart-{side}.toml", s3, folder, package, "bench", TMP / f"rstate-{side}")
        d = start_daemon(tree[side], cfg)
        wait_all(d, STARTED, 1800)  # the first start adopts the package (hashes every file)
        d.stop()
        runs = []
        for _ in range(3):  # the no-change restart, three times (the median is shown); health runs at once
            d = start_daemon(tree[side], cfg)
            t_skip, e_skip = wait_all(d, STARTED, 600)["push.skipped"]
            runs.append((e_skip["duration_ms"] / 1000, t_skip - d.started))
            d.stop()
        out[side] = sorted(runs)[1]
        print(f"  {side}: reconcile passes {', '.join(f'{r[0]:.2f}' for r in runs)} s", flush=True)
    walk = sorted(bare_walk(folder, stat=True) for _ in range(3))[1]
    print(f"\nno-change restart of {n} files, health running (median of 3); a walk that stats every file: "
          f"{walk:.2f} s")
    for side in SIDES:
        p, total = out[side]
        print(f"  {side:<6} reconcile pass {p:5.2f} s ({p / walk:4.1f}x the walk); process start to its end "
              f"{total:5.2f} s")
    return {"no-change reconcile with health running <= 4x a stat walk": out["after"][0] <= 4 * walk}


def idle(s3: LocalS3, tree: dict[str, Path], n: int, seconds: float) -> dict[str, bool]:
    folder = TMP / f"idle{n}"
    keys = make_folder(folder, n)
    daemons = {}
    for side in SIDES:
        bucket = f"bench-idle-{side}"
        s3.create_bucket(bucket, versioning=True)
        seed(s3, bucket, "bench/idle", keys, revisions=2)  # an older revision for the sampled check
        cfg = write_config(TMP / f"idle-{side}.toml", s3, folder, "bench/idle", bucket, TMP / f"istate-{side}")
        daemons[side] = start_daemon(tree[side], cfg)
    s3.reset_requests()
    for d in daemons.values():
        wait_all(d, STARTED, 1800)
    startup = {side: _gets(s3.requests, f"bench-idle-{side}") for side in SIDES}
    s3.reset_requests()
    print(f"\nidle: two daemons watch {n} files, health every 60 s, for {seconds:.0f} s ...", flush=True)
    time.sleep(seconds)
    window = {side: _gets(s3.requests, f"bench-idle-{side}") for side in SIDES}
    for d in daemons.values():
        d.stop()
    for side in SIDES:
        print(f"  {side:<6} GET bytes over {seconds / 60:.0f} idle minutes: {window[side][0] / 1e6:8.3f} MB "
              f"({window[side][1]} GETs); at start-up {startup[side][0] / 1e6:.1f} MB")
    ratio = window["after"][0] / max(1, window["before"][0])
    print(f"  ratio after/before {ratio:.4f}")
    return {"idle GET bytes under 1 MB per 10 minutes": window["after"][0] * 600 / seconds < 1e6}


def _gets(requests: list, bucket: str) -> tuple[int, int]:
    mine = [r for r in requests if r.method == "GET" and r.path.startswith(f"/{bucket}")]
    return sum(r.received for r in mine), len(mine)


def rename(s3: LocalS3, tree: dict[str, Path]) -> dict[str, bool]:
    print("\na directory of 200 files renamed, then a 100 MB file copied")
    ok = {}
    for side in SIDES:
        folder = TMP / f"rename-{side}"
        (folder / "run1").mkdir(parents=True)
        for i in range(200):
            (folder / "run1" / f"f{i:03d}.dat").write_bytes(os.urandom(1000 + i))
        (folder / "model.bin").write_bytes(os.urandom(100 * 1024 * 1024))
        w = Worker(tree[side], s3, folder, f"bench/rename-{side}", "bench", TMP / f"nstate-{side}")
        w.end()
        (folder / "run1").rename(folder / "run2")
        got = {}
        for what, act in (("rename", None), ("copy", "model-copy.bin")):
            if act:
                (folder / act).write_bytes((folder / "model.bin").read_bytes())
            s3.reset_requests()
            w = Worker(tree[side], s3, folder, f"bench/rename-{side}", "bench", TMP / f"nstate-{side}")
            w.end()
            data = [r for r in s3.requests if r.method in ("PUT", "POST") and not r.is_quilt_metadata]
            got[what] = (len({r.path for r in data}), sum(r.sent for r in data))
        print(f"  {side:<6} rename: {got['rename'][0]} data objects, {got['rename'][1] / 1e6:.1f} MB uploaded; "
              f"copy: {got['copy'][0]} data objects, {got['copy'][1] / 1e6:.1f} MB uploaded")
        ok[side] = got
    return {"directory rename of 200 files uploads 0 data objects": ok["after"]["rename"][0] == 0,
            "copy of a 100 MB file uploads 0 data objects": ok["after"]["copy"][0] == 0}


def pacing(per_file: float) -> dict[str, bool]:
    cost = int(per_file * 100_000)
    out = {}
    for name, budget in (("before (no pacing)", 0), ("after (default budget)", 1_000_000_000)):
        pacer, now, count = Pacer(budget), 0.0, 0
        while True:
            now = max(now, pacer.ready_at(now))
            if now >= DAY_S:
                break
            pacer.spend(now, cost)
            count += 1
            now += 30.0
        out[name] = count * cost
        print(f"  {name:<24} {count:5d} revisions a day, {count * cost / 1e9:7.2f} GB of manifests")
    return {"100,000 files, continuous edits: about 1 GB of manifests a day": out["after (default budget)"] <= 1.05e9}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,50000,200000")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--idle-seconds", type=float, default=600)
    ap.add_argument("--only", default="push,restart,idle,rename,pacing")
    ap.add_argument("--baseline", default=BASELINE)
    args = ap.parse_args()
    only = set(args.only.split(","))
    tree = trees(args.baseline)
    checks: dict[str, bool] = {}
    print(f"before: {args.baseline} (git archive); after: {ROOT}")
    with local_s3() as s3:
        s3.create_bucket("bench", versioning=True)
        per_file = 347.0  # manifest bytes per file (quilt3's, 17-character keys), unless measured below
        if "push" in only:
            sizes = [int(x) for x in args.sizes.split(",")]
            res = push_costs(s3, tree, sizes, args.rounds)
            checks.update(report_push(res))
            big = max(sizes)
            per_file = res[big]["after"]["manifest"] / big
        if "restart" in only:
            checks.update(restart(s3, tree, 50_000))
        if "idle" in only:
            checks.update(idle(s3, tree, 50_000, args.idle_seconds))
        if "rename" in only:
            checks.update(rename(s3, tree))
    if "pacing" in only:
        print(f"\npacing: a 100,000-file folder ({per_file:.0f} manifest bytes a file), a push every 30 s")
        checks.update(pacing(per_file))
    print()
    for name, met in checks.items():
        print(f"  {'met    ' if met else 'NOT met'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

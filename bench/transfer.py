"""bench/transfer: quiltsync's upload path (issue 14), side by side in one run.

Every upload runs in its own process (bench/transfer_worker.py) against one local S3
in this process, so its time, CPU and reads are its own.

big    a 1 GiB file: a first `quiltsync push` of a folder holding it, "before" (the
       tree at ``--baseline``: quilt3's uploads) and "after" (this tree), against
       boto3's ``upload_file`` of the same file; median seconds of ``--rounds``
       (alternating, each round on a fresh local S3), the ratio to upload_file, and reads of the file (bytes read
       by the process / file size) over plain http and with https-like signing
       (no payload hash, what botocore does over https).
many   a first push of ``--files`` (100,000) small files: files/s before (quilt3,
       10 transfer threads) and after, with upload_concurrency 4 and 32.
cap    a 100 MiB upload with max_upload_bytes_per_second = 10 MiB/s: the achieved
       rate against the cap (target: within 10%).

    python bench/transfer.py [--only big,many,cap] [--rounds 3] [--files 100000] [--baseline REV]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchenv import ROOT, TMP, baseline_tree, local_s3
from quiltsync.remote.s3local import LocalS3

BASELINE = "b0a32f5"  # main before issue 14 (uploads by quilt3)
GIB = 1024**3
MIB = 1024**2


def trees(baseline: str) -> dict[str, Path]:
    return {"before": baseline_tree(baseline), "after": ROOT}


def run(tree: Path, mode: str, s3: LocalS3, bucket: str, path: Path, **opts: Any) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "transfer_worker.py"), mode, s3.endpoint_url,
                           bucket, str(path), json.dumps(opts)], capture_output=True, text=True,
                          env=dict(os.environ, QS_TREE=str(tree)), timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} on {tree} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def clear(s3: LocalS3, bucket: str) -> None:
    """Drop every object version (moto keeps them in memory)."""
    c = s3.client()
    for page in c.get_paginator("list_object_versions").paginate(Bucket=bucket):
        batch = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                 for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        for i in range(0, len(batch), 1000):
            c.delete_objects(Bucket=bucket, Delete={"Objects": batch[i:i + 1000], "Quiet": True})


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 64 * MIB)
            f.write(os.urandom(n))
            left -= n


def big(tree: dict[str, Path], rounds: int) -> dict[str, bool]:
    """Each round on a fresh local S3 (moto keeps what it stored in this process's
    memory; a long-lived server slowed down from round to round)."""
    bucket = "bench-big"
    folder = TMP / "big"
    folder.mkdir()
    write_random(folder / "one.gib", GIB)
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {"http": {}, "https-like": {}}
    n = 0
    for signing, reps in (("http", rounds), ("https-like", max(1, rounds // 2))):
        for r in range(reps):
            order = ["boto3", "before", "after"] if r % 2 == 0 else ["after", "before", "boto3"]
            with LocalS3() as s3:
                s3.create_bucket(bucket)
                for side in order:
                    n += 1
                    opts: dict[str, Any] = {"https_like": signing == "https-like"}
                    if side == "boto3":
                        got = run(tree["after"], "boto3", s3, bucket, folder / "one.gib", **opts)
                    else:
                        got = run(tree[side], "push", s3, bucket, folder, package=f"bench/big{n}",
                                  state=str(TMP / f"state-big{n}"), **opts)
                    rows[signing].setdefault(side, []).append(got)
                    clear(s3, bucket)
    print("\nbig: a first push of one 1 GiB file vs boto3 upload_file, same server (medians)")
    print(f"{'signing':<11} {'side':<15} {'seconds':>8} {'x upload_file':>14} {'CPU s':>7} {'reads':>6}")
    ok = {}
    for signing, sides in rows.items():
        ref = statistics.median(g["seconds"] for g in sides["boto3"])
        for side in ("boto3", "before", "after"):
            secs = statistics.median(g["seconds"] for g in sides[side])
            cpu = statistics.median(g["cpu_s"] for g in sides[side])
            reads = statistics.median(g["read_bytes"] for g in sides[side]) / GIB
            label = "upload_file" if side == "boto3" else f"quiltsync {side}"
            print(f"{signing:<11} {label:<15} {secs:>8.2f} {secs / ref:>13.2f}x {cpu:>7.1f} {reads:>6.2f}")
            if side == "after":
                if signing == "http":
                    ok["big: push <= 1.1x upload_file"] = secs / ref <= 1.1
                    ok["big: reads <= 2 on plain http"] = reads <= 2.05
                else:
                    ok["big: reads = 1 with https-like signing"] = reads <= 1.05
    return ok


def many(s3: LocalS3, tree: dict[str, Path], files: int) -> dict[str, bool]:
    bucket = "bench-many"
    s3.create_bucket(bucket)
    folder = TMP / "many"
    for i in range(files):
        p = folder / f"d{i // 1000:03d}" / f"f{i:06d}.csv"
        if i % 1000 == 0:
            p.parent.mkdir(parents=True)
        p.write_bytes(f"{i},".encode() * 100)  # about 700 bytes, all different
    print(f"\nmany: a first push of {files:,} small files (files/s over the whole push pass)")
    print(f"{'side':<28} {'seconds':>8} {'files/s':>8} {'CPU s':>7}")
    out: dict[str, float] = {}
    for label, side, conc in (("before (quilt3, 10 threads)", "before", 10), ("after, concurrency 4", "after", 4),
                              ("after, concurrency 32", "after", 32)):
        got = run(tree[side], "push", s3, bucket, folder, package=f"bench/many{conc}{side}",
                  state=str(TMP / f"state-many-{side}-{conc}"), concurrency=conc)
        assert got["files"] == files, got
        out[label] = files / got["seconds"]
        print(f"{label:<28} {got['seconds']:>8.1f} {out[label]:>8.0f} {got['cpu_s']:>7.1f}")
        clear(s3, bucket)
    return {"many: after (32) at least as fast as before": out["after, concurrency 32"]
            >= out["before (quilt3, 10 threads)"] * 0.95}


def cap(s3: LocalS3, tree: dict[str, Path]) -> dict[str, bool]:
    bucket = "bench-cap"
    s3.create_bucket(bucket)
    path = TMP / "cap.bin"
    write_random(path, 100 * MIB)
    limit = 10 * MIB
    got = run(tree["after"], "capped", s3, bucket, path, cap=limit, concurrency=10)
    rate = 100 * MIB / got["seconds"]
    print(f"\ncap: 100 MiB with max_upload_bytes_per_second = {limit:,} (10 MiB/s)")
    print(f"achieved {rate / MIB:.2f} MiB/s in {got['seconds']:.2f} s: {rate / limit:.3f}x the cap")
    clear(s3, bucket)
    return {"cap: rate within 10% of the cap": abs(rate / limit - 1) <= 0.10}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="big,many,cap")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--baseline", default=BASELINE)
    args = ap.parse_args()
    only = set(args.only.split(","))
    tree = trees(args.baseline)
    ok: dict[str, bool] = {}
    with local_s3() as s3:
        if "big" in only:
            ok.update(big(tree, args.rounds))
        if "many" in only:
            ok.update(many(s3, tree, args.files))
        if "cap" in only:
            ok.update(cap(s3, tree))
    print("\ntargets:")
    for k, v in ok.items():
        print(f"  {'met ' if v else 'MISS'} {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

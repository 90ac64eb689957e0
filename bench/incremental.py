"""bench/incremental: one changed file in a 10,000-file folder, quiltsync vs the naive loop.

Both run against the same embedded local S3 in one process run:
- quiltsync: a fresh FolderPusher and index handle each round (as a new
  `quiltsync push` process would), scan + plan + incremental push;
- naive: `Package().set_dir(".", folder).push(name, registry, force=True)`, the
  loop people write by hand (without force it raises a conflict from the 2nd push).

Prints S3 requests and wall time of each, and their ratios. Targets (issue 2):
quiltsync <= 15 requests whatever the folder size, >= 50x fewer requests and
>= 10x less wall time than the naive loop.

``--workflows``: the bucket holds a Quilt workflows config whose default
workflow requires package metadata (a JSON Schema); both sides push with it
(quiltsync with ``[folder.metadata]``, the naive loop with ``set_meta``).

    python bench/incremental.py [--files 10000] [--rounds 3] [--workflows]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from benchenv import (
    ROOT,  # noqa: F401  (sets the environment first)
    local_s3,
)
from benchenv import TMP as _TMP
from quiltsync.remote import settings as s3settings
from quiltsync.remote.s3local import LocalS3


def make_folder(path: Path, n: int) -> None:
    for i in range(n):
        d = path / f"d{i // 500:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.bin").write_bytes(os.urandom(1536))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workflows", action="store_true")
    args = ap.parse_args()
    with local_s3() as s3:
        s3.create_bucket("bench", versioning=True)
        if args.workflows:
            put_workflows(s3)
        return run(s3, args.files, args.rounds, {"project": "bench"} if args.workflows else None)


def put_workflows(s3: LocalS3) -> None:
    import json

    schema = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "required": ["project"]}
    c = s3.client()
    c.put_object(Bucket="bench", Key=".quilt/workflows/meta.json", Body=json.dumps(schema).encode())
    c.put_object(Bucket="bench", Key=".quilt/workflows/config.yml", Body=(
        b'version: "1"\ndefault_workflow: experiment\nworkflows:\n  experiment:\n    name: Experiment\n'
        b'    metadata_schema: meta\nschemas:\n  meta:\n    url: s3://bench/.quilt/workflows/meta.json\n'))
    print("bucket: a workflows config whose default workflow requires metadata")


def run(s3: LocalS3, n: int, rounds: int, metadata: dict | None = None) -> int:
    import quilt3

    from quiltsync.config import FolderConfig
    from quiltsync.engine.pusher import FolderPusher
    from quiltsync.local.index import Index

    s3settings.import_quilt3()
    folder = _TMP / "folder"
    make_folder(folder, n)
    print(f"folder: {n} files of 1.5 KiB in {len(list(folder.iterdir()))} dirs; local S3 {s3.endpoint_url}")
    cfg = FolderConfig(path=folder, package="bench/quiltsync", registry="s3://bench", metadata=metadata)

    def naive_push() -> None:
        pkg = quilt3.Package().set_dir(".", str(folder))
        if metadata is not None:
            pkg.set_meta(metadata)
        pkg.push("bench/naive", "s3://bench", force=True)

    state = _TMP / "state" / "index.sqlite3"
    t = time.perf_counter()
    FolderPusher(cfg, Index(state)).push()
    print(f"initial quiltsync push: {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    naive_push()
    print(f"initial naive push:     {time.perf_counter() - t:.1f} s")

    ours: list[tuple[int, float]] = []
    naive: list[tuple[int, float]] = []
    for r in range(rounds):
        i = n // 2 + r
        victim = folder / f"d{i // 500:03d}" / f"f{i:05d}.bin"
        victim.write_bytes(os.urandom(2048))
        time.sleep(1.0)  # one push per second per package (quilt3 pointer names)
        s3.reset_requests()
        t = time.perf_counter()
        result = FolderPusher(cfg, Index(state)).push()
        ours.append((len(s3.requests), time.perf_counter() - t))
        assert result.modified == 1 and result.files == n, result
        s3.reset_requests()
        t = time.perf_counter()
        naive_push()
        naive.append((len(s3.requests), time.perf_counter() - t))
        print(f"round {r + 1}: quiltsync {ours[-1][0]} requests {ours[-1][1]:.2f} s | "
              f"naive {naive[-1][0]} requests {naive[-1][1]:.2f} s")

    oq, ot = statistics.median(x[0] for x in ours), statistics.median(x[1] for x in ours)
    nq, nt = statistics.median(x[0] for x in naive), statistics.median(x[1] for x in naive)
    print()
    print(f"{'':12}{'requests':>10}{'wall s':>10}")
    print(f"{'quiltsync':12}{oq:>10.0f}{ot:>10.2f}")
    print(f"{'naive loop':12}{nq:>10.0f}{nt:>10.2f}")
    print(f"{'ratio':12}{nq / oq:>9.0f}x{nt / ot:>9.1f}x")
    ok = max(x[0] for x in ours) <= 15 and nq / oq >= 50 and nt / ot >= 10
    print(f"targets (<= 15 requests, >= 50x fewer requests, >= 10x less time): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

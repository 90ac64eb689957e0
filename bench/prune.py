"""bench/prune: what retention saves, and what a prune costs.

A 10,000-file package gets 200 revisions, one file changed in each (written in
quilt3's layout straight into the local S3, as bench/history.py does: 200 real
pushes would take 200 s of one-push-per-second). Side by side in one run:

- bucket bytes and object versions under ``.quilt/`` and under the package's
  prefix without pruning (all 200 revisions kept), and after ``keep_last = 20``
  + prune (grace period 0);
- the prune's S3 requests and wall time, cold (empty revision cache) and again
  with nothing left to do (warm).

    python bench/prune.py [--files 10000] [--revisions 200] [--keep 20]
"""

from __future__ import annotations

import argparse
import time

from benchenv import TMP, local_s3
from history import make_history


def usage(s3, bucket: str, prefix: str) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(bytes, object versions) under ``prefix``, every version counted."""
    total = count = 0
    for page in s3.client().get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for v in page.get("Versions", []):
            total += v["Size"]
            count += 1
    return total, count


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--revisions", type=int, default=200)
    ap.add_argument("--keep", type=int, default=20)
    args = ap.parse_args()
    from quiltsync.config import FolderConfig, RetentionConfig
    from quiltsync.engine.catalog import Catalog
    from quiltsync.engine.prune import prune
    from quiltsync.local.revcache import RevisionCache
    from quiltsync.remote.registry import Registry

    with local_s3() as s3:
        bucket, package = "prunebench", "bench/data"
        s3.create_bucket(bucket, versioning=True)
        t = time.perf_counter()
        make_history(s3, bucket, package, args.files, args.revisions)
        print(f"{args.revisions} revisions of {args.files} files written in {time.perf_counter() - t:.0f} s")
        before = usage(s3, bucket, ".quilt/"), usage(s3, bucket, f"{package}/")
        folder = FolderConfig(path=TMP, package=package, registry=f"s3://{bucket}",
                              retention=RetentionConfig(keep_last=args.keep, grace_hours=0))
        runs = []
        for label in ("cold", "warm"):
            s3.reset_requests()
            t = time.perf_counter()
            plan, freed = prune(folder, Catalog(Registry(folder.registry), package,
                                                RevisionCache(TMP / "revcache.sqlite3")), TMP / "state")
            runs.append((label, len(s3.requests), time.perf_counter() - t, len(plan.verdict.pruned),
                         len(plan.versions), freed))
        after = usage(s3, bucket, ".quilt/"), usage(s3, bucket, f"{package}/")

    print()
    print(f"{'':34}{'.quilt/ MB':>12}{'versions':>10}{'package MB':>12}{'versions':>10}")
    for label, ((qb, qn), (pb, pn)) in ((f"all {args.revisions} revisions kept", before),
                                        (f"keep_last = {args.keep} + prune", after)):
        print(f"{label:34}{qb / 1e6:>12.1f}{qn:>10}{pb / 1e6:>12.2f}{pn:>10}")
    print(f"{'ratio':34}{before[0][0] / max(after[0][0], 1):>11.1f}x{'':10}"
          f"{before[1][0] / max(after[1][0], 1):>11.2f}x")
    print()
    for label, requests, wall, pruned, versions, freed in runs:
        print(f"prune ({label}): {requests} requests, {wall:.1f} s; {pruned} revisions pruned, "
              f"{versions} object versions deleted, {freed / 1e6:.1f} MB freed")
    expected_quilt = before[0][0] * (args.keep + 1) / (args.revisions + 1)
    ok = after[0][0] <= expected_quilt * 1.5 and runs[1][3] == 0
    print(f"target (.quilt/ shrinks to about keep/revisions; a second prune has nothing to do): "
          f"{'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""bench/history: reading revisions, with 5 and with 500 of them, side by side in one run.

A package of F files (default 1,000) gets N revisions (one file changed in each),
written straight into the local S3 in quilt3's layout (manifest, timestamp
pointer a minute apart, latest), so 500 revisions take seconds to make, not the
500 s of one push per second. Then, for each N:

- first-round history: what `history` did before (one LIST, one GET per pointer,
  one GET and a quilt3 ``Package.load`` per manifest);
- ``quiltsync history``, cold (empty revision cache) and warm (second call);
- picking a revision by time: before, the first-round history (a jq filter
  over `history --json`), then a restore; now ``restore --at`` through the
  catalog, cold and warm (restore itself excluded: it is the same in both).

Prints S3 requests and wall time of each, and the ratios against the
first-round history.

    python bench/history.py [--files 1000] [--revisions 5,500]
"""

from __future__ import annotations

import argparse
import io
import json
import time

from benchenv import TMP, local_s3  # sets the environment first
from quiltsync.remote.s3local import LocalS3


def make_history(s3: LocalS3, bucket: str, package: str, files: int, revisions: int) -> list[tuple[int, str]]:
    """Write ``revisions`` revisions of a ``files``-file package; returns (stamp, top_hash)."""
    from quiltsync.core.manifest import top_hash_of
    from quiltsync.core.types import Entry, HashValue

    c = s3.client()
    entries: dict[str, Entry] = {}
    for i in range(files):
        key = f"{package}/d{i // 100:02d}/f{i:05d}.bin"
        vid = c.put_object(Bucket=bucket, Key=key, Body=f"file {i} v0".encode())["VersionId"]
        entries[f"d{i // 100:02d}/f{i:05d}.bin"] = Entry(HashValue("sha2-256-chunked", f"h{i}-0"), 10,
                                                          f"s3://{bucket}/{key}?versionId={vid}")
    out = []
    start = int(time.time()) - 60 * revisions
    for r in range(revisions):
        i = r % files
        lk = f"d{i // 100:02d}/f{i:05d}.bin"
        vid = c.put_object(Bucket=bucket, Key=f"{package}/{lk}", Body=f"file {i} v{r + 1}".encode())["VersionId"]
        entries[lk] = Entry(HashValue("sha2-256-chunked", f"h{i}-{r + 1}"), 10 + len(str(r + 1)),
                            f"s3://{bucket}/{package}/{lk}?versionId={vid}")
        meta = {"version": "v0", "message": f"revision {r}"}
        top = top_hash_of(meta, entries)
        lines = [json.dumps(meta)] + [json.dumps({"logical_key": k, "physical_keys": [e.physical_key], "size": e.size,
                                                  "hash": e.hash.as_manifest(), "meta": {}})
                                      for k, e in sorted(entries.items(), key=lambda kv: kv[0].split("/"))]
        c.put_object(Bucket=bucket, Key=f".quilt/packages/{top}", Body="\n".join(lines).encode())
        stamp = start + 60 * r
        c.put_object(Bucket=bucket, Key=f".quilt/named_packages/{package}/{stamp}", Body=top.encode())
        out.append((stamp, top))
    c.put_object(Bucket=bucket, Key=f".quilt/named_packages/{package}/latest", Body=out[-1][1].encode())
    return out


def first_round_history(reg, package: str) -> int:  # type: ignore[no-untyped-def]
    """What `history` did before: a GET per pointer, a GET and a quilt3 load per manifest."""
    import quilt3

    n = 0
    reg.latest(package)
    for _stamp, top in reg.versions(package):
        data = reg.s3.get_object(Bucket=reg.bucket, Key=f".quilt/packages/{top}")["Body"].read()
        pkg = quilt3.Package.load(io.BytesIO(data))
        n += pkg.top_hash == top  # the first round checked each manifest against its top_hash
    return n


def measure(s3: LocalS3, fn) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    s3.reset_requests()
    t = time.perf_counter()
    fn()
    return len(s3.requests), time.perf_counter() - t


def bench_one(s3: LocalS3, n: int, files: int) -> tuple:  # type: ignore[type-arg]
    """(n, first round, history cold, history warm, pick cold, pick warm): (requests, seconds) each."""
    from quiltsync.cli.commands import Context
    from quiltsync.cli.revisions import history
    from quiltsync.config import parse_config
    from quiltsync.engine.catalog import Catalog
    from quiltsync.local.revcache import RevisionCache
    from quiltsync.remote.registry import Registry

    bucket = f"hist{n}"
    s3.create_bucket(bucket, versioning=True)
    t = time.perf_counter()
    revs = make_history(s3, bucket, "bench/hist", files, n)
    print(f"{n} revisions of {files} files written in {time.perf_counter() - t:.1f} s")
    reg = Registry(f"s3://{bucket}")
    cache_path = TMP / f"cache-{n}.sqlite3"
    config = parse_config(f'[daemon]\nstate_dir = "{TMP / "state"}"\n[[folder]]\npath = "{TMP}"\n'
                          f'package = "other/pkg"\nregistry = "s3://{bucket}"\n', source="bench")
    ctx = Context(config, TMP / "bench.toml", io.StringIO())
    middle = revs[len(revs) // 2]

    def ours() -> None:  # as a new process: a new handle on the cache file
        ctx._revisions = RevisionCache(cache_path)
        history(ctx, "bench/hist", as_json=True, registry=f"s3://{bucket}")

    def pick() -> None:
        cat = Catalog(reg, "bench/hist", RevisionCache(cache_path))
        picked = cat.at(middle[0] + 30)
        cat.revision(picked.top_hash)  # what restore reads next
        assert picked.top_hash == middle[1]

    before = measure(s3, lambda: first_round_history(reg, "bench/hist"))
    cold = measure(s3, ours)
    warm = measure(s3, ours)
    cache_path.unlink()
    return n, before, cold, warm, measure(s3, pick), measure(s3, pick)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--revisions", default="5,500")
    args = ap.parse_args()
    with local_s3() as s3:
        rows = [bench_one(s3, int(x), args.files) for x in args.revisions.split(",")]

    print()
    print(f"{'revisions':>9}  {'':24}{'requests':>9}{'wall s':>9}{'vs first round':>16}")
    for n, before, cold, warm, at_cold, at_warm in rows:
        for label, (q, w) in (("first-round history", before), ("history, cold cache", cold),
                              ("history, warm cache", warm), ("restore --at pick, cold", at_cold),
                              ("restore --at pick, warm", at_warm)):
            ratio = "" if label.startswith("first") else f"{before[0] / max(q, 1):>6.0f}x req {before[1] / w:>5.1f}x"
            print(f"{n:>9}  {label:<24}{q:>9}{w:>9.2f}  {ratio}")
    ok = all(warm[0] <= 3 and at_warm[0] <= 3 for _n, _b, _c, warm, _ac, at_warm in rows)
    print(f"target (warm history and pick: one LIST and no GET per revision): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

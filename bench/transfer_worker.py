"""One measured upload of bench/transfer.py, in its own process (the local S3 runs in the
driver's): prints one JSON line {"seconds", "cpu_s", "read_bytes", ...}.

``read_bytes`` is the change of this process's ``rchar`` (/proc/self/io: bytes
passed by read() calls, the file's reads; S3's answers are a few kB).

    QS_TREE=<tree> python bench/transfer_worker.py MODE ENDPOINT BUCKET PATH [options as JSON]

MODE: ``push`` (a FolderPusher pass over the folder PATH, as `quiltsync push` runs
it), ``boto3`` (boto3's ``upload_file`` of the file PATH), ``capped`` (the file PATH
through the upload path with a bandwidth cap: the achieved rate).
Options: {"https_like": true} signs no payload (what https allows: botocore then
does not hash the body for SigV4), {"concurrency": N}, {"cap": bytes/s}.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(os.environ["QS_TREE"]) / "daemon"))


def rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return -1


def main() -> int:
    mode, endpoint, bucket, path = sys.argv[1:5]
    opts = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    from quiltsync import logs
    from quiltsync.remote import settings

    settings.prepare_environment()
    logs.configure("warning", "console")
    if opts.get("https_like"):
        make = settings.client_config

        def unsigned(**overrides: object) -> object:
            return make(**overrides).merge(__import__("botocore.config").config.Config(
                s3={"payload_signing_enabled": False}))
        settings.client_config = unsigned  # type: ignore[assignment]
    settings.activate(settings.S3Settings(endpoint, "us-east-1"))
    settings.import_quilt3()
    out: dict[str, object] = {}
    if mode == "boto3":
        import boto3
        import botocore.config

        s3 = {"payload_signing_enabled": False} if opts.get("https_like") else {}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              config=botocore.config.Config(s3=s3))
        r, cpu, t = rchar(), time.process_time(), time.monotonic()
        client.upload_file(path, bucket, f"boto3/{Path(path).name}")
    elif mode == "capped":
        from quiltsync.remote import transfer

        size = Path(path).stat().st_size
        transfer.transfers().configure(int(opts.get("concurrency", 10)), float(opts["cap"]))
        r, cpu, t = rchar(), time.process_time(), time.monotonic()
        transfer.transfers().upload(lambda: settings.thread_client("upload"), f"s3://{bucket}", bucket,
                                    [transfer.Upload(f"capped/{Path(path).name}", Path(path), size)])
    else:
        from quiltsync.config import FolderConfig
        from quiltsync.engine.pusher import FolderPusher
        from quiltsync.local.index import Index

        try:
            from quiltsync.remote import transfer

            transfer.transfers().configure(int(opts.get("concurrency", 10)), 0)
        except ImportError:  # the baseline: quilt3's transfers (QUILT_TRANSFER_MAX_CONCURRENCY, 10)
            pass
        state = Path(opts["state"])
        state.mkdir(parents=True, exist_ok=True)
        pusher = FolderPusher(FolderConfig(path=Path(path), package=opts["package"], registry=f"s3://{bucket}"),
                              Index(state / "index.sqlite3"))
        r, cpu, t = rchar(), time.process_time(), time.monotonic()
        result = pusher.push()
        out.update(files=result.files, top_hash=result.top_hash, duration_ms=result.duration_ms)
    out.update(seconds=round(time.monotonic() - t, 3), cpu_s=round(time.process_time() - cpu, 2),
               read_bytes=rchar() - r)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

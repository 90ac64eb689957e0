"""One side of bench/cost.py in its own process: a FolderPusher of the tree in QS_TREE.

The driver (bench/cost.py) starts one per side (the baseline's tree, this tree),
so both run the same script against the same local S3; it counts the requests.
Protocol on stdin/stdout, one line each:

    (start)  a full pass (nothing changed: a daemon's start-up reconcile, with the
             index a set-up run left; with QS_ADOPT_ONLY set, that set-up run: it
             adopts the registry's latest into a new index and exits), print {"ready"}
    round K  rewrite the K-th file with new bytes, push it the way the daemon does
             (push(paths=[key])), print {"duration_ms", "cpu_s", "top_hash"}
    end      print {"peak_rss_mb"} (the process's high-water mark) and exit

    QS_TREE=<tree> python bench/cost_worker.py FOLDER PACKAGE REGISTRY ENDPOINT STATE_DIR
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(os.environ["QS_TREE"]) / "daemon"))


def rss_mb(key: str = "VmHWM") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return -1.0


def main() -> int:
    folder, package, registry, endpoint, state = sys.argv[1:6]
    from quiltsync import logs
    from quiltsync.remote import settings

    settings.prepare_environment()
    try:  # as `quiltsync` does at start (cli/main.py); the baseline's tree has no such module
        from quiltsync.local.memory import return_large_buffers

        return_large_buffers()
    except ImportError:
        pass
    logs.configure("warning", "console")
    settings.activate(settings.S3Settings(endpoint, "us-east-1"))  # quilt3: imported where the tree needs it
    from quiltsync.config import FolderConfig
    from quiltsync.engine.pusher import FolderPusher
    from quiltsync.local.index import Index

    cfg = FolderConfig(path=Path(folder), package=package, registry=registry, max_delete_fraction=1.0)
    Path(state).mkdir(parents=True, exist_ok=True)
    pusher = FolderPusher(cfg, Index(Path(state) / "index.sqlite3"))
    t = time.monotonic()
    first = pusher.push()  # the start-up reconcile: nothing changed
    if os.environ.get("QS_ADOPT_ONLY"):  # set-up: the index of a folder that matches latest
        print(json.dumps({"ready": round(time.monotonic() - t, 2), "top_hash": first.top_hash}), flush=True)
        return 0
    keys = sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())
    gc.collect()
    print(json.dumps({"ready": round(time.monotonic() - t, 2), "top_hash": first.top_hash,
                      "rss_mb": round(rss_mb("VmRSS"), 1)}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "end":
            print(json.dumps({"peak_rss_mb": round(rss_mb(), 1)}), flush=True)
            return 0
        if cmd[0] == "round":
            lk = keys[(int(cmd[1]) * 7919) % len(keys)]
            path = Path(folder) / lk
            path.write_bytes(os.urandom(path.stat().st_size or 1536))
            past = time.time() - 5  # as an editor's write seconds before the push (not "still moving")
            os.utime(path, (past, past))
            cpu = time.process_time()
            result = pusher.push(paths=[lk])
            print(json.dumps({"duration_ms": result.duration_ms, "cpu_s": round(time.process_time() - cpu, 3),
                              "top_hash": result.top_hash, "pushed": result.pushed}), flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())

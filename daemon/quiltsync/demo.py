"""`quiltsync demo` (behind `make demo`): the whole loop on an embedded local S3.

Starts moto's S3 on 127.0.0.1 with a versioned bucket, versions a demo folder,
edits it, pushes again (only the change is uploaded: the request count shows it),
lists the history, then restores the first revision and shows its old bytes.
Everything lives in a temporary directory (or --workdir), including quilt3's
cache, so the user's own Quilt cache and credentials are never touched.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
from pathlib import Path
from typing import Any

BUCKET = "quiltsync-demo"
PACKAGE = "demo/experiments"


def run_demo(workdir: Path | None, out: Any) -> int:
    base = Path(workdir).absolute() if workdir else Path(tempfile.mkdtemp(prefix="quiltsync-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    # Before quilt3 is imported: its cache and config dirs come from these.
    os.environ["XDG_CACHE_HOME"] = str(base / "cache")
    os.environ["XDG_DATA_HOME"] = str(base / "data")
    os.environ["AWS_ACCESS_KEY_ID"] = "demo"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "demo"  # the local S3 accepts any key
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)

    from quiltsync import logs
    from quiltsync.s3local import LocalS3

    logs.configure("warning", "console")
    say = _Printer(out)
    with LocalS3() as s3:
        s3.create_bucket(BUCKET, versioning=True)
        say.step(f"local S3 on {s3.endpoint_url}, versioned bucket s3://{BUCKET}")
        return _walkthrough(base, s3, say)


def _walkthrough(base: Path, s3: Any, say: _Printer) -> int:
    from quiltsync import quilt_env
    from quiltsync.config import parse_config
    from quiltsync.index import Index
    from quiltsync.pusher import FolderPusher
    from quiltsync.registry import Registry
    from quiltsync.restore import restore

    folder = base / "experiments"
    folder.mkdir(exist_ok=True)
    (folder / "README.txt").write_text("Experiment notes, version 1\n")
    (folder / "params.json").write_text('{"learning_rate": 0.1, "epochs": 10}\n')
    (folder / "data").mkdir(exist_ok=True)
    for i in range(20):
        (folder / "data" / f"sample-{i:02d}.csv").write_text(f"id,value\n{i},{i * i}\n" * 200)
    (folder / "editor.swp").write_text("ignored by the built-in rules")
    config_text = textwrap.dedent(f"""\
        [daemon]
        state_dir = "{base / 'state'}"
        [s3]
        endpoint_url = "{s3.endpoint_url}"
        region = "us-east-1"
        [[folder]]
        path = "{folder}"
        package = "{PACKAGE}"
        registry = "s3://{BUCKET}"
        """)
    (base / "config.toml").write_text(config_text)
    config = parse_config(config_text, source=str(base / "config.toml"))
    quilt_env.configure_s3(config.s3.endpoint_url, config.s3.region)
    pusher = FolderPusher(config.folder[0], Index(config.daemon.state_dir / "index.sqlite3"))
    say.step(f"demo folder {folder}: 22 files (editor.swp is ignored)")

    first = pusher.push()
    say.result(f"revision 1: {first.top_hash}  ({first.added} files added)")

    (folder / "params.json").write_text('{"learning_rate": 0.05, "epochs": 20}\n')
    (folder / "data" / "sample-21.csv").write_text("id,value\n21,441\n")
    s3.reset_requests()
    second = pusher.push()
    uploads = [r for r in s3.requests if r.method == "PUT" and not r.is_quilt_metadata]
    say.step("edited params.json, added data/sample-21.csv")
    say.result(f"revision 2: {second.top_hash}  ({second.added} added, {second.modified} modified; "
               f"{len(uploads)} file uploads, {len(s3.requests)} S3 requests in all)")

    (folder / "data" / "sample-00.csv").unlink()
    third = pusher.push()
    say.step("deleted data/sample-00.csv")
    say.result(f"revision 3: {third.top_hash}  ({third.deleted} deleted, {third.files} files)")

    s3.reset_requests()
    again = pusher.push()
    say.step(f"nothing changed: pushed={again.pushed}, {len(s3.requests)} S3 request(s) (the latest pointer)")

    reg = Registry(f"s3://{BUCKET}")
    say.step(f"history of {PACKAGE}:")
    for stamp, top in reg.versions(PACKAGE):
        say.result(f"{top}  {reg.revision(PACKAGE, top).meta.get('message')}")

    dest = base / "restored-revision-1"
    report = restore(reg, PACKAGE, first.top_hash or "", dest)
    say.step(f"restored revision 1 into {dest}: {report.verified}/{report.files} files verified")
    say.result("params.json then: " + (dest / "params.json").read_text().strip())
    say.result("params.json now:  " + (folder / "params.json").read_text().strip())
    ok = (dest / "params.json").read_text() != (folder / "params.json").read_text() and report.verified == report.files
    say.step("demo finished: " + ("old bytes restored and verified" if ok else "FAILED"))
    return 0 if ok else 1


class _Printer:
    def __init__(self, out: Any) -> None:
        self.out = out

    def step(self, text: str) -> None:
        self.out.write(f"==> {text}\n")
        self.out.flush()

    def result(self, text: str) -> None:
        self.out.write(f"    {text}\n")
        self.out.flush()

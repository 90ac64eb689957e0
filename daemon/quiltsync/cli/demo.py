"""`quiltsync demo` (behind `make demo`): the whole loop on an embedded local S3.

Starts moto's S3 on 127.0.0.1 with a versioned bucket and `quiltsync run` (the
daemon, as a separate process) on a demo folder; a script writes, edits and
deletes files, and each top_hash is shown as the daemon logs it (only the change
is uploaded: the request count shows it). Then it stops the daemon, lists the
history, restores the first revision and shows its old bytes.
Everything lives in a temporary directory, removed at the end (or in --workdir,
kept), including quilt3's cache, so the user's own Quilt cache and credentials are
never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BUCKET = "quiltsync-demo"
PACKAGE = "demo/experiments"


def run_demo(workdir: Path | None, out: Any) -> int:
    say = _Printer(out)
    with demo_dir(workdir) as base:
        code = _run_in(base, say)
    if workdir is None:
        say.step(f"removed {base} (pass --workdir DIR to keep the demo's files)")
    return code


@contextlib.contextmanager
def demo_dir(workdir: Path | None) -> Iterator[Path]:
    """The demo's directory: ``workdir`` (created if missing, always kept: it is the
    user's), else a new temp dir that is removed afterwards, also after a failure or ^C."""
    if workdir is not None:
        base = Path(workdir).absolute()
        base.mkdir(parents=True, exist_ok=True)
        yield base
        return
    base = Path(tempfile.mkdtemp(prefix="quiltsync-demo-"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run_in(base: Path, say: _Printer) -> int:
    # Before quilt3 is imported: its cache and config dirs come from these.
    os.environ["XDG_CACHE_HOME"] = str(base / "cache")
    os.environ["XDG_DATA_HOME"] = str(base / "data")
    os.environ["AWS_ACCESS_KEY_ID"] = "demo"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "demo"  # the local S3 accepts any key
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)

    from quiltsync import logs
    from quiltsync.remote.s3local import LocalS3

    logs.configure("warning", "console")
    with LocalS3() as s3:
        s3.create_bucket(BUCKET, versioning=True)
        say.step(f"local S3 on {s3.endpoint_url}, versioned bucket s3://{BUCKET}")
        return _walkthrough(base, s3, say)


def _walkthrough(base: Path, s3: Any, say: _Printer) -> int:
    from quiltsync.engine.restore import restore
    from quiltsync.remote import settings as s3settings
    from quiltsync.remote.registry import Registry

    s3settings.activate(s3settings.S3Settings(s3.endpoint_url, "us-east-1"))
    folder = base / "experiments"
    folder.mkdir(exist_ok=True)
    config_path = base / "config.toml"
    config_path.write_text(textwrap.dedent(f"""\
        [daemon]
        state_dir = "{base / 'state'}"
        log_format = "json"
        [s3]
        endpoint_url = "{s3.endpoint_url}"
        region = "us-east-1"
        [[folder]]
        path = "{folder}"
        package = "{PACKAGE}"
        registry = "s3://{BUCKET}"
        settle_seconds = 1.0
        max_delay_seconds = 10.0
        """))
    say.step(f"starting `quiltsync --config {config_path} run` on {folder}")
    daemon = _DaemonLog([sys.executable, "-m", "quiltsync", "--config", str(config_path), "run"], say)
    try:
        daemon.wait("rescan.completed")  # the start-up reconcile of the (empty) folder
        say.step("writing 22 files (and an editor swap file, which the built-in rules ignore)")
        (folder / "README.txt").write_text("Experiment notes, version 1\n")
        (folder / "params.json").write_text('{"learning_rate": 0.1, "epochs": 10}\n')
        (folder / "data").mkdir(exist_ok=True)
        for i in range(20):
            (folder / "data" / f"sample-{i:02d}.csv").write_text(f"id,value\n{i},{i * i}\n" * 200)
        (folder / ".params.json.swp").write_text("ignored")
        first = daemon.wait_push(files=22)

        say.step("editing params.json and adding data/sample-20.csv")
        s3.reset_requests()
        (folder / "params.json").write_text('{"learning_rate": 0.05, "epochs": 20}\n')
        (folder / "data" / "sample-20.csv").write_text("id,value\n20,400\n")
        daemon.wait_push(files=23)
        uploads = [r for r in s3.requests if r.method == "PUT" and not r.is_quilt_metadata]
        say.result(f"only the change went up: {len(uploads)} file uploads, {len(s3.requests)} S3 requests")

        say.step("deleting data/sample-00.csv")
        (folder / "data" / "sample-00.csv").unlink()
        daemon.wait_push(files=22)
    finally:
        code = daemon.stop()
        say.step(f"daemon stopped (exit {code})")

    reg = Registry(f"s3://{BUCKET}")
    say.step(f"history of {PACKAGE}:")
    for _stamp, top in reg.versions(PACKAGE):
        say.result(f"{top}  {reg.revision(PACKAGE, top).meta.get('message')}")

    dest = base / "restored-first-revision"
    report = restore(reg, PACKAGE, first, dest)
    say.step(f"restored the first revision {first[:12]} into {dest}: "
             f"{report.verified}/{report.files} files verified")
    say.result("params.json then: " + (dest / "params.json").read_text().strip())
    say.result("params.json now:  " + (folder / "params.json").read_text().strip())
    ok = (dest / "params.json").read_text() != (folder / "params.json").read_text() \
        and report.verified == report.files and code == 0
    say.step("demo finished: " + ("old bytes restored and verified" if ok else "FAILED"))
    return 0 if ok else 1


class _DaemonLog:
    """Runs the daemon and shows each push.completed as it is logged."""

    def __init__(self, argv: list[str], say: _Printer) -> None:
        self.say = say
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        self.events: queue.Queue[dict] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "push.completed":
                self.say.result(f"daemon logged push.completed top_hash={event['top_hash']} "
                                f"(+{event['added']} ~{event['modified']} -{event['deleted']}, "
                                f"{event['files']} files, {event['duration_ms']} ms)")
            elif event.get("level") in ("warning", "error"):
                what = event.get("error") or event.get("reason") or event.get("detail") or ""
                check = f"[{event['check']}] " if event.get("check") else ""
                self.say.result(f"daemon {event['level']}: {event.get('event')} {check}{what}")
            self.events.put(event)

    def wait(self, name: str, timeout: float = 60.0, **fields: Any) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                e = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"the daemon did not log {name} within {timeout:.0f}s") from None
            if e.get("event") == name and all(e.get(k) == v for k, v in fields.items()):
                return e

    def wait_push(self, files: int) -> str:
        return str(self.wait("push.completed", files=files)["top_hash"])

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class _Printer:
    def __init__(self, out: Any) -> None:
        self.out = out

    def step(self, text: str) -> None:
        self.out.write(f"==> {text}\n")
        self.out.flush()

    def result(self, text: str) -> None:
        self.out.write(f"    {text}\n")
        self.out.flush()

"""The CLI commands push, status, history and restore, on a loaded Context."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from quiltsync import logs
from quiltsync.cli.main import report_error
from quiltsync.config import Config, check_folders_exist, find_config_path, load_config
from quiltsync.errors import QuiltsyncError
from quiltsync.local.index import Index
from quiltsync.remote import settings as s3settings
from quiltsync.remote import transfer


@dataclass
class Context:
    config: Config
    config_path: Path
    out: TextIO
    _index: Index | None = None
    _revisions: Any = None  # the per-user RevisionCache, opened on first use

    @classmethod
    def load(cls, cli_config: str | None, out: Any) -> Context:
        path = find_config_path(cli_config)
        config = load_config(path)
        logs.configure(config.daemon.log_level, config.daemon.log_format)
        s3settings.activate(s3settings.S3Settings.from_config(config.s3))
        transfer.apply(config.s3)
        return cls(config, path, out)

    def index(self) -> Index:
        """The process's one Index (opened on first use)."""
        if self._index is None:
            self._index = Index(self.config.daemon.state_dir / "index.sqlite3")
        return self._index

    def revision_cache(self) -> Any:
        """The per-user cache of manifests and pointers (local/revcache.py)."""
        if self._revisions is None:
            from quiltsync.local.revcache import RevisionCache

            self._revisions = RevisionCache()
        return self._revisions

    def emit(self, line: str = "") -> None:
        self.out.write(line + "\n")
        self.out.flush()


def push(ctx: Context, only: str | None, *, allow_deletes: bool = False) -> int:
    from quiltsync.engine.pusher import FolderPusher, push_with_retries

    folders = [ctx.config.folder_by_package(only)] if only else list(ctx.config.folder)
    check_folders_exist(ctx.config, str(ctx.config_path))
    index = ctx.index()
    failed = 0
    for folder in folders:
        pusher = FolderPusher(folder, index)
        bar = ProgressBar(folder.package) if sys.stderr.isatty() else None  # nothing on a pipe
        pusher.on_progress = bar
        try:
            for _ in range(3):  # files that changed during a push are pushed again
                result = push_with_retries(pusher, attempts=3, allow_deletes=allow_deletes)
                if bar is not None:
                    bar.close()
                if result.pushed:
                    ctx.emit(f"{result.package} {result.top_hash}")
                if not result.changed_during_push:
                    break
        except QuiltsyncError as e:
            failed += 1
            report_error(str(e), e.exit_code, package=folder.package)
        finally:
            if bar is not None:
                bar.close()
    return 1 if failed else 0


class ProgressBar:
    """A terminal's progress bar (tqdm, on stderr) for one folder's uploads; fed from
    upload threads with ``transfer.Progress``; a new upload (a retry) starts it anew."""

    def __init__(self, package: str) -> None:
        self.package = package
        self._bar: Any = None
        self._lock = threading.Lock()

    def __call__(self, p: transfer.Progress) -> None:
        with self._lock:
            if self._bar is None or p.bytes_done < self._bar.n:
                self._close()
                from tqdm import tqdm

                self._bar = tqdm(total=p.bytes_total, unit="B", unit_scale=True, unit_divisor=1024,
                                 desc=self.package, file=sys.stderr, leave=False, dynamic_ncols=True)
            self._bar.set_postfix_str(f"{p.files_done}/{p.files_total} files", refresh=False)
            self._bar.update(p.bytes_done - self._bar.n)

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


STATUS_SCAN_SECONDS = 15.0  # a folder on a share that does not answer: status says so and goes on


def status(ctx: Context, *, as_json: bool) -> int:
    from quiltsync.core.planner import pending_changes
    from quiltsync.local.fstype import answered
    from quiltsync.local.scanner import RootUnavailable, make_ignore_spec, scan_folder

    index = ctx.index()
    rows = []
    recorded = index.health()
    holds = index.holds()
    for f in ctx.config.folder:
        rev = index.last_push(f.package)
        snap_index = index.files(f.package)
        try:
            scan = answered(partial(scan_folder, f.path, make_ignore_spec(f.ignore)), STATUS_SCAN_SECONDS)
            pending: int | None = pending_changes(scan.files, snap_index) if scan is not None else None
            files: int | None = len(scan.files) if scan is not None else None
            problem = None if scan is not None else (
                f"folder does not answer: a scan of {f.path} took over {STATUS_SCAN_SECONDS:.0f} s")
        except RootUnavailable as e:
            pending, files, problem = None, None, f"folder unavailable: {e}"
        mine = [h for h in recorded if h[1] in (f.package, f"s3://{f.bucket}", str(f.path))]
        watch = next((d for c, t, _s, d, _at in mine if c == "watches" and t == f.package), None)
        if watch is None:
            from quiltsync.local.fstype import layout

            lay = layout(f.path, f.watch)
            watch = lay.describe(f.poll_seconds if lay.polled else None) + " (as configured; no daemon report)"
        bad = [f"{c}: {d}" for c, _t, s_, d, _at in mine if s_ == "fail"]
        paced = next((d for c, t, s_, d, _at in mine if c == "stuck" and t == f.package and s_ == "ok"
                      and d.startswith("paced") and _still_ahead(d)), None)
        held = holds.get(f.package)
        if problem is not None:
            health = problem
        elif held is not None:
            health = f"held since {_iso(held[1])}: {held[0]}"
        elif bad:
            health = "; ".join(bad)
        elif mine:
            health = f"ok (checked {_iso(max(h[4] for h in mine))} by the daemon)"
        else:
            health = "unknown (no daemon check recorded; run `quiltsync check`)"
        rows.append({
            "package": f.package, "registry": f.registry, "path": str(f.path),
            "last_top_hash": rev.top_hash if rev else None,
            "last_push": _iso(rev.pushed_at) if rev and rev.pushed_at else None,
            "pending": pending, "files": files, "health": health, "watch": watch,
            "held": held[0] if held else None, "paced": paced,
        })
    if as_json:
        ctx.emit(json.dumps({"folders": rows}, indent=2))
        return 0
    for r in rows:
        ctx.emit(f"{r['package']}  ({r['path']} -> {r['registry']})")
        ctx.emit(f"  last top_hash: {r['last_top_hash'] or '(never pushed)'}")
        ctx.emit(f"  last push:     {r['last_push'] or '-'}")
        ctx.emit(f"  pending:       {r['pending'] if r['pending'] is not None else '-'} changes "
                 f"({r['files'] if r['files'] is not None else '-'} files in the folder)")
        ctx.emit(f"  watch:         {r['watch']}")
        if r["paced"]:
            ctx.emit(f"  pacing:        {r['paced']}")
        ctx.emit(f"  health:        {r['health']}")
    return 0


def _still_ahead(paced: str) -> bool:
    """A pacing row names the time of the next revision; once that passed it is history."""
    m = re.search(r" at (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)", paced)
    if m is None:
        return False
    when = dt.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    return when.timestamp() > time.time()


def check(ctx: Context) -> int:
    from quiltsync.service.health import CheckResult, run_all

    ctx.emit(f"ok    config           {ctx.config_path}: {len(ctx.config.folder)} folder(s)")
    results = run_all(ctx.config, index=ctx.index())
    holds = ctx.index().holds()
    results += [CheckResult("stuck", f.package, "fail", f"held: {holds[f.package][0]}")
                for f in ctx.config.folder if f.package in holds]
    for r in results:
        ctx.emit(f"{r.status:<5} {r.check:<16} {r.target}: {r.detail}")
    failed = [r for r in results if r.status == "fail"]
    ctx.emit(f"{'UNHEALTHY' if failed else 'healthy'}: {len(failed)} failed, "
             f"{sum(r.status == 'warn' for r in results)} warnings")
    return 1 if failed else 0


def doctor(ctx: Context, *, fix: bool) -> int:
    from quiltsync.remote import quiltcache
    from quiltsync.remote.registry import manifest_parser, quilt_paths

    root = quilt_paths()[0]
    report = quiltcache.inspect(root, {f.bucket for f in ctx.config.folder}, manifest_parser)
    ctx.emit(f"quilt3 cache {root}: {report.total_bytes / 1e6:.1f} MB, {report.manifests} cached manifests, "
             f"{report.objects} object-path entries")
    for p in report.problems:
        ctx.emit(f"  {p.kind:<18} {p.path}: {p.detail}")
    if not report.problems:
        ctx.emit("no stale or corrupt entries")
        return 0
    if not fix:
        ctx.emit(f"{len(report.problems)} problem(s); `quiltsync doctor --fix` removes exactly these entries")
        return 1
    removed = quiltcache.fix(report)
    ctx.emit(f"removed {len(removed)} of {len(report.problems)} entries; everything else was left in place")
    return 0 if len(removed) == len(report.problems) else 1


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

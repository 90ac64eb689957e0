"""Command line: parse, load the config, run a command, map errors to exit codes.

Results go to stdout; logs go to stderr. Exit codes: 0 ok, 1 failed, 2 usage
error, 78 configuration error. A ``QuiltsyncError`` is shown as one line without
a traceback, in the shape of the log lines (a JSON object in JSON mode, so ``jq``
reads every line of stderr); anything else is a bug and keeps its traceback.

A reader of stdout that leaves early (``quiltsync status | head -1``) is not an
error: no traceback, exit 0 (or the command's own code if it had finished).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import select
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from quiltsync import __version__
from quiltsync.errors import QuiltsyncError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="config file (default: $QUILTSYNC_CONFIG, then the per-user or system path)")
    p = _Parser(prog="quiltsync", parents=[common],
                description="Keep local folders versioned as Quilt packages in S3.")
    p.add_argument("--version", action="version", version=f"quiltsync {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    sub.add_parser("run", parents=[common], help="the daemon, in the foreground (systemd Type=notify)")

    push = sub.add_parser("push", parents=[common], help="one reconcile-and-push pass now")
    push.add_argument("--folder", metavar="PACKAGE", help="only the folder of this package")
    push.add_argument("--allow-deletes", action="store_true",
                      help="push deletions the safety checks hold (mass deletion, emptied or remounted folder)")

    sub.add_parser("check", parents=[common], help="validate config, run every health check; exit 1 if unhealthy")

    doctor = sub.add_parser("doctor", parents=[common], help="local Quilt cache health")
    doctor.add_argument("--fix", action="store_true", help="remove only stale or corrupt entries")

    status = sub.add_parser("status", parents=[common], help="per folder state, no network")
    status.add_argument("--json", action="store_true", help="one JSON document")

    registry = _Parser(add_help=False)
    registry.add_argument("--registry", metavar="s3://BUCKET",
                          help="a package that is not in the config (with the config's [s3] settings)")

    history = sub.add_parser("history", parents=[common, registry], help="revisions of a package")
    history.add_argument("package")
    history.add_argument("--json", action="store_true", help="one JSON document")
    history.add_argument("--path", metavar="P", help="only the revisions in which this file or folder changed")
    history.add_argument("--limit", metavar="N", type=_positive, help="only the newest N revisions shown")

    which = _Parser(add_help=False)
    pick = which.add_mutually_exclusive_group(required=True)
    pick.add_argument("--top-hash", metavar="H", help="a top_hash or a unique prefix of 6+ hex digits")
    pick.add_argument("--at", metavar="TIME",
                      help="the revision that was latest at TIME (ISO-8601, UTC when no zone; or a date)")

    restore = sub.add_parser("restore", parents=[common, registry, which], help="install a revision and verify it")
    restore.add_argument("package")
    restore.add_argument("--dest", required=True, metavar="DIR", type=Path)
    restore.add_argument("--path", metavar="P", action="append", help="only this file or folder (repeatable)")
    restore.add_argument("--force", action="store_true",
                         help="restore even a revision whose entries are not pinned to object versions")

    diff = sub.add_parser("diff", parents=[common, registry], help="what changed between two revisions")
    diff.add_argument("package")
    diff.add_argument("old", metavar="FROM", help="a top_hash prefix or a time")
    diff.add_argument("new", metavar="TO", nargs="?", help="a top_hash prefix or a time (default: the folder now)")
    diff.add_argument("--json", action="store_true", help="one JSON document")

    revert = sub.add_parser("revert", parents=[common, which],
                            help="write files' old bytes back into the watched folder")
    revert.add_argument("package")
    revert.add_argument("--path", metavar="P", action="append", required=True,
                        help="a file or folder to bring back (repeatable)")
    revert.add_argument("--force", action="store_true",
                        help="overwrite files whose current content is not pushed yet")

    prune = sub.add_parser("prune", parents=[common],
                           help="drop revisions [folder.retention] does not keep, collect unreferenced objects")
    prune.add_argument("--folder", metavar="PACKAGE", help="only the folder of this package")
    prune.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")

    demo = sub.add_parser("demo", parents=[common], help="the embedded demo behind `make demo`")
    demo.add_argument("--workdir", type=Path, help="keep the demo folder here (default: a temp dir)")
    return p


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    from quiltsync.local.memory import return_large_buffers
    from quiltsync.remote.settings import prepare_environment

    return_large_buffers()  # freed manifests leave the resident memory (local/memory.py)
    prepare_environment()  # quilt3's import-time environment, botocore's retry mode: once, before any thread
    code: int | None = None
    try:
        try:
            code = _main(argv)
        except SystemExit:  # argparse's --help / --version: their output goes out first
            sys.stdout.flush()
            raise
        sys.stdout.flush()  # a reader that left early shows up here at the latest
        return code
    except BrokenPipeError:
        if not _stdout_gone():
            raise  # not stdout's reader leaving: a bug, with its traceback
        _stdout_to_devnull()
        return 0 if code is None else code


def _main(argv: Sequence[str] | None) -> int:
    global _log_format
    _log_format = None
    out = sys.stdout
    try:
        args = build_parser().parse_args(argv)
        return _dispatch(args, out)
    except QuiltsyncError as e:
        report_error(str(e), e.exit_code)
        return e.exit_code
    except KeyboardInterrupt:
        report_error("interrupted", 130, event="command.interrupted", level="warning")
        return 130


# The config's [daemon] log_format once it is loaded; None before (or when it failed to load).
_log_format: str | None = None


def report_error(message: str, exit_code: int, *, event: str = "command.failed", level: str = "error",
                 **context: Any) -> None:
    """An error for the user on stderr, in the shape of the log lines: one JSON object in
    JSON mode (``jq`` reads every line; ``context`` adds keys), else ``quiltsync: error: ...``;
    with the journal's priority prefix when stderr is the journal."""
    from quiltsync.logs import journal_stream_matches

    prefix = ("<3>" if level == "error" else "<4>") if journal_stream_matches(sys.stderr) else ""
    if _json_mode():
        line = json.dumps({
            "timestamp": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
            "level": level, "event": event, **context, "error": message, "exit_code": exit_code,
        }, ensure_ascii=False, default=str)
    elif level == "error":
        line = f"quiltsync: error: {message}"
    else:
        line = f"quiltsync: {message}"
    print(prefix + line, file=sys.stderr, flush=True)


def _json_mode() -> bool:
    """As logs.configure decides; with the auto rule when no config was loaded (a usage
    error, a config that failed to load)."""
    from quiltsync.logs import json_mode

    return json_mode(_log_format or "auto", sys.stderr)


def _stdout_gone() -> bool:
    """Whether stdout's reader went away (the write end of a pipe without readers polls POLLERR)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        events = poller.poll(0)
    except (AttributeError, ValueError, OSError):
        return True  # cannot tell: the BrokenPipeError is the best evidence there is
    return any(ev & (select.POLLERR | select.POLLHUP) for _fd, ev in events)


def _stdout_to_devnull() -> None:
    """Python flushes stdout once more at exit: let that go nowhere instead of raising."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, ValueError, OSError):
        pass


def _dispatch(args: argparse.Namespace, out: object) -> int:
    from quiltsync.cli import commands

    if args.command == "demo":
        from quiltsync.cli.demo import run_demo

        return run_demo(args.workdir, out)
    ctx = commands.Context.load(getattr(args, "config", None), out)
    global _log_format
    _log_format = ctx.config.daemon.log_format
    if args.command == "run":
        from quiltsync.service.daemon import run_daemon

        return run_daemon(ctx.config_path, ctx.config)
    if args.command == "push":
        return commands.push(ctx, args.folder, allow_deletes=args.allow_deletes)
    if args.command == "check":
        return commands.check(ctx)
    if args.command == "doctor":
        return commands.doctor(ctx, fix=args.fix)
    if args.command == "status":
        return commands.status(ctx, as_json=args.json)
    from quiltsync.cli import revisions

    if args.command == "history":
        return revisions.history(ctx, args.package, as_json=args.json, path=args.path, limit=args.limit,
                                registry=args.registry)
    if args.command == "restore":
        return revisions.restore(ctx, args.package, args.top_hash, args.at, args.dest, paths=args.path,
                                force=args.force, registry=args.registry)
    if args.command == "diff":
        return revisions.diff(ctx, args.package, args.old, args.new, as_json=args.json, registry=args.registry)
    if args.command == "prune":
        return revisions.prune(ctx, args.folder, dry_run=args.dry_run)
    if args.command == "revert":
        return revisions.revert(ctx, args.package, args.top_hash, args.at, args.path, force=args.force)
    raise UsageError(f"unknown command {args.command!r}")

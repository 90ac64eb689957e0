"""The commands that read revisions: history, restore, diff, revert.

Each names a package of the config, or any package with ``--registry
s3://BUCKET`` (with the config's [s3] settings), and reads it through a
``Catalog`` (engine/catalog.py): one LIST for the list of revisions, manifests
read once per top_hash and kept in the per-user revision cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quiltsync import logs
from quiltsync.cli.commands import Context
from quiltsync.config import FolderConfig, registry_url
from quiltsync.core.diff import Change, counts, under
from quiltsync.core.types import Revision
from quiltsync.engine.catalog import Catalog, Picked, iso
from quiltsync.errors import UsageError
from quiltsync.remote.registry import Registry


def _catalog(ctx: Context, package: str, registry: str | None) -> tuple[Catalog, FolderConfig | None]:
    """The package's catalog, and its folder when the config has one."""
    folder = next((f for f in ctx.config.folder if f.package == package), None)
    if registry is not None:
        try:
            url = registry_url(registry)
        except ValueError as e:
            raise UsageError(f"--registry: {e}") from None
        if folder is not None and folder.registry != url:
            folder = None
    elif folder is None:
        folder = ctx.config.folder_by_package(package)  # raises: names the configured packages
        assert folder is not None
        url = folder.registry
    else:
        url = folder.registry
    return Catalog(Registry(url), package, ctx.revision_cache()), folder


def _pick(cat: Catalog, top_hash: str | None, at: str | None) -> Picked:
    if top_hash is not None:
        h = top_hash.strip().lower()
        if len(h) < 6 or any(c not in "0123456789abcdef" for c in h):
            raise UsageError(f"--top-hash {top_hash!r}: expected 64 hex digits or a unique prefix of 6 or more")
        return cat.resolve(h, allow_time=False)
    assert at is not None
    from quiltsync.engine.catalog import parse_time

    return cat.at(parse_time(at), at)


# -- history --------------------------------------------------------------------------------------
def history(ctx: Context, package: str, *, as_json: bool, path: str | None = None, limit: int | None = None,
            registry: str | None = None) -> int:
    cat, _folder = _catalog(ctx, package, registry)
    # --limit N alone needs the N newest revisions and the one before them
    revs = cat.revisions(last=limit + 1 if limit is not None and path is None else None)
    latest = cat.registry.latest(package)
    rows: list[dict[str, Any]] = []
    for i in range(len(revs) - 1, -1, -1):  # newest first, until the limit is reached
        if limit is not None and len(rows) >= limit:
            break
        stamp, top = revs[i]
        if i == 0 and stamp != cat.pointers()[0][0]:
            break  # the window's oldest (its pointer vanished meanwhile): no parent to count against
        changes = cat.changes(revs[i - 1][1] if i > 0 else None, top)
        touched = [c for c in changes if under(c.key, path)] if path is not None else None
        if touched is not None and not touched:
            continue
        row = {"time": iso(stamp), "top_hash": top, **cat.summary(top), **counts(changes),
               "latest": top == latest}
        if touched is not None:
            row["changes"] = [{"key": c.key, "kind": c.kind} for c in touched]
        rows.append(row)
    rows.reverse()  # oldest first, as always
    if as_json:
        ctx.emit(json.dumps({"package": package, "registry": cat.registry.url, "revisions": rows}, indent=2))
        return 0
    if not rows:
        ctx.emit(f"{package}: no revisions in {cat.registry.url}" if path is None else
                 f"{package}: no revision in {cat.registry.url} changed {path!r}")
    for r in rows:
        flags = ("pinned" if r["pinned"] else "UNPINNED") + ("  latest" if r["latest"] else "")
        wf = r["workflow"]
        wf_text = f"  [workflow {wf.get('id')}]" if isinstance(wf, dict) and wf.get("id") else ""
        ctx.emit(f"{r['time']}  {r['top_hash']}  {r['files']:>6} files  +{r['added']} ~{r['modified']} "
                 f"-{r['deleted']}  {flags}{wf_text}  {r['message'] or ''}")
        for c in r.get("changes", []):
            ctx.emit(f"    {c['kind']} {c['key']}")
    return 0


# -- restore --------------------------------------------------------------------------------------
def restore(ctx: Context, package: str, top_hash: str | None, at: str | None, dest: Path, *,
            paths: list[str] | None = None, force: bool = False, registry: str | None = None) -> int:
    from quiltsync.engine.restore import restore as do_restore

    cat, _folder = _catalog(ctx, package, registry)
    picked = _pick(cat, top_hash, at)
    ctx.emit(f"{package}@{picked.top_hash}: {picked.why}")
    report = do_restore(cat.registry, package, picked.top_hash, dest, force=force,
                        revision=cat.revision(picked.top_hash, fresh=True), paths=paths)
    logs.get_logger("quiltsync.restore").info(
        "restore.completed", package=package, top_hash=report.top_hash, dest=str(report.dest),
        files=report.files, bytes=report.bytes, from_cache=len(report.from_cache),
        from_s3=report.files - len(report.from_cache), paths=paths or None)
    for lk in sorted(report.sources):
        ctx.emit(f"  {report.sources[lk]:<5}  {lk}")
    ctx.emit(f"restored {package}@{report.top_hash} into {report.dest}: "
             f"{report.verified} of {report.files} files verified, {report.bytes} bytes; "
             f"{len(report.from_cache)} from the local cache, {report.files - len(report.from_cache)} from S3")
    return 0


# -- diff -----------------------------------------------------------------------------------------
def diff(ctx: Context, package: str, old: str, new: str | None, *, as_json: bool,
         registry: str | None = None) -> int:
    cat, folder = _catalog(ctx, package, registry)
    before = cat.resolve(old)
    if new is not None:
        after = cat.resolve(new)
        changes = cat.changes(before.top_hash, after.top_hash)
        to: str | None = after.top_hash
    else:
        if folder is None:
            raise UsageError(f"diff {package} {old}: without TO it compares with the watched folder, but "
                             f"{package} has no folder in the config here; give TO")
        changes = _folder_changes(ctx, folder, cat.revision(before.top_hash))
        to = None
    if as_json:
        ctx.emit(json.dumps({"package": package, "registry": cat.registry.url, "from": before.top_hash,
                             "to": to, "changes": [{"key": c.key, "kind": c.kind} for c in changes]}, indent=2))
    else:
        for c in changes:
            ctx.emit(c.line())
    return 0


def _folder_changes(ctx: Context, folder: FolderConfig, rev: Revision) -> list[Change]:
    """The folder now against ``rev``, planned exactly like a push: stat first, hash
    only where the stat and the index cannot decide."""
    from quiltsync.core.planner import plan_push
    from quiltsync.local import hashing
    from quiltsync.local.scanner import make_ignore_spec, scan_folder

    scan = scan_folder(folder.path, make_ignore_spec(folder.ignore))
    # The index's records count only where their hash is the revision entry's (the
    # planner checks), so records of another revision or registry cost a hash, no error.
    known = ctx.index().files(folder.package)

    def hash_file(lk: str, hash_type: str) -> Any:
        try:
            return hashing.hash_like(folder.path / lk, hash_type)
        except OSError:
            return None

    plan = plan_push(scan.files, known, rev.entries, hash_file)
    return sorted([*(Change(k, "A") for k in plan.added), *(Change(k, "M") for k in plan.modified),
                   *(Change(k, "D") for k in plan.deleted)])


# -- revert ---------------------------------------------------------------------------------------
def revert(ctx: Context, package: str, top_hash: str | None, at: str | None, paths: list[str], *,
           force: bool = False) -> int:
    """Write the old bytes of ``paths`` back into the watched folder (engine/revert.py);
    the daemon (or the next `push`) makes them a revision."""
    from quiltsync.engine.restore import select_paths
    from quiltsync.engine.revert import revert as do_revert

    folder = ctx.config.folder_by_package(package)
    cat, _ = _catalog(ctx, package, None)
    picked = _pick(cat, top_hash, at)
    old = select_paths(cat.revision(picked.top_hash, fresh=True), paths, package)
    latest_top = cat.registry.latest(package)
    latest = cat.revision(latest_top, fresh=True) if latest_top else None
    ctx.emit(f"{package}@{picked.top_hash}: {picked.why}")
    report = do_revert(folder, cat.registry, old, latest, ctx.index().files(package), force=force)
    if not report.written:
        ctx.emit(f"nothing to revert: the {len(report.same)} file(s) already hold those bytes")
        return 0
    for lk in report.written:
        ctx.emit(f"  {'M' if latest is not None and lk in latest.entries else 'A'} {lk}")
    logs.get_logger("quiltsync.revert").info("revert.completed", package=package, top_hash=picked.top_hash,
                                              files=len(report.written), paths=paths)
    ctx.emit(f"reverted {len(report.written)} file(s) of {package} to {picked.top_hash[:12]} in {folder.path}; "
             "the daemon pushes them as a new revision (or run `quiltsync push`)")
    return 0


# -- prune ----------------------------------------------------------------------------------------
def prune(ctx: Context, only: str | None, *, dry_run: bool) -> int:
    """Apply each folder's [folder.retention]; see engine/prune.py for the order of deletions."""
    from quiltsync.engine.prune import prune as do_prune

    folders = [ctx.config.folder_by_package(only)] if only else list(ctx.config.folder)
    for folder in folders:
        if folder.retention is None:
            ctx.emit(f"{folder.package}: no [folder.retention] table: nothing is pruned")
            continue
        cat, _ = _catalog(ctx, folder.package, None)
        plan, freed = do_prune(folder, cat, ctx.config.daemon.state_dir, dry_run=dry_run)
        verb = "would delete" if dry_run else "deleted"
        v = plan.verdict
        ctx.emit(f"{folder.package} ({folder.registry}): keep {len(v.kept)}, prune {len(v.pruned)} revision(s)"
                 + (" (dry run: nothing changed)" if dry_run else ""))
        rows = sorted([(s, t, "keep", ", ".join(why)) for (s, t), why in v.kept.items()]
                      + [(s, t, "drop", "") for s, t in v.pruned])
        for stamp, top, what, why in rows:
            ctx.emit(f"  {what}  {iso(stamp)}  {top}  {why}".rstrip())
        shared = f" ({len(plan.shared)} kept: another package names them)" if plan.shared else ""
        ctx.emit(f"  manifests: {verb} {len(plan.manifests)}{shared}")
        ctx.emit(f"  object versions: {verb} {len(plan.versions)}, {plan.bytes_freed} bytes; "
                 f"{plan.referenced} referenced by remaining revisions, {plan.young} younger than "
                 f"grace_hours = {folder.retention.grace_hours:g}")
        if not dry_run:
            ctx.emit(f"  freed {freed} bytes")
    return 0

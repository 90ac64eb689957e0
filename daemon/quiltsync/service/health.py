"""Health checks: can every folder be versioned safely, and is quilt3's cache sound?

Each check has a name used in ``health.*`` events and in ``quiltsync check``:
registry, versioning, uploads, lifecycle, manifest_pinned, workflow,
credentials, cache, watches, stuck. A result is ``fail`` (versions are at risk: `check` exits 1) or ``warn`` (worth
fixing: a stale cache, a credentials override). Network checks use a client
with short timeouts and run off the daemon's push loop.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from quiltsync.config import Config, FolderConfig
from quiltsync.core.manifest import revision_meta
from quiltsync.core.message import MessageValues, render
from quiltsync.core.types import Entry, Revision
from quiltsync.core.watchmode import NOT_ANSWERING, Layout, is_remote
from quiltsync.errors import QuiltsyncError, WorkflowRefused
from quiltsync.local.index import Index


@dataclass(frozen=True, slots=True)
class CheckResult:
    check: str
    target: str
    status: str  # ok | warn | fail
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


ENTRIES_SCAN_SECONDS = 60.0  # the workflow check's scan for an entries_schema, at most


def run_all(config: Config, *, installed_watches: Callable[[], int] | None = None,
            layouts: Mapping[str, Layout] | None = None, index: Index | None = None) -> list[CheckResult]:
    """Every check; ``installed_watches`` counts the daemon's inotify watches and ``layouts``
    says how it watches each folder (both None: not a daemon). ``index``: the state
    directory's index, which answers for a latest revision that quiltsync pushed (or
    recorded) instead of a download of its manifest."""
    out: list[CheckResult] = []
    reachable = set()
    for bucket, folders in _by_bucket(config.folder).items():
        r = check_registry(bucket)
        out.append(r)
        if r.ok:
            reachable.add(bucket)
            out.append(check_versioning(bucket, folders))
            out.append(check_uploads(bucket, fresh=installed_watches is None))
            out.append(check_lifecycle(bucket, folders))
            workflows = _read_workflows(bucket)
            for f in folders:
                latest = _latest(f, index)
                out.append(check_manifest_pinned(f, latest))
                out.append(check_workflow(f, workflows, latest))
    out.append(check_credentials())
    out.append(check_cache(config))
    out.extend(check_watches(config.folder, installed_watches, layouts=layouts))
    return out


def _by_bucket(folders: Iterable[FolderConfig]) -> dict[str, list[FolderConfig]]:
    out: dict[str, list[FolderConfig]] = {}
    for f in folders:
        out.setdefault(f.bucket, []).append(f)
    return out


def check_registry(bucket: str) -> CheckResult:
    from quiltsync.remote.registry import registry_problem

    problem = registry_problem(bucket)
    if problem is None:
        return CheckResult("registry", f"s3://{bucket}", "ok", "bucket answers")
    kind, detail = problem
    return CheckResult("registry", f"s3://{bucket}", "fail", f"{kind}: {detail}")


def check_versioning(bucket: str, folders: list[FolderConfig]) -> CheckResult:
    from quiltsync.remote.registry import bucket_versioning

    target = f"s3://{bucket}"
    try:
        status = bucket_versioning(bucket, max_age_s=0)
    except QuiltsyncError as e:
        return CheckResult("versioning", target, "fail", f"cannot read versioning: {e}")
    if status == "Enabled":
        return CheckResult("versioning", target, "ok", "Enabled")
    fix = (f"enable it: aws s3api put-bucket-versioning --bucket {bucket} "
           "--versioning-configuration Status=Enabled")
    why = ("versioning was never enabled on bucket " + bucket if status is None else
           f"versioning of bucket {bucket} is Suspended (new writes overwrite the 'null' version)")
    allowed = all(f.allow_unversioned for f in folders)
    return CheckResult("versioning", target, "warn" if allowed else "fail",
                       f"{why}: an old top_hash would restore the newest bytes; {fix}"
                       + ("; pushing anyway (allow_unversioned = true)" if allowed else
                          "; pushes are refused until then"))


def check_uploads(bucket: str, *, fresh: bool = True) -> CheckResult:
    """Which checksums the server verifies, and that an upload works: S3 (and servers
    with its flexible checksums) verify Content-MD5 and SHA-256; servers without
    them (Ceph RGW before 19, other S3-compatible stores) verify Content-MD5, and
    quiltsync computes quilt3's hash itself either way (remote/transfer.py).
    ``fresh``: probe even if uploads already told (``check``); the daemon relies on
    what its uploads and its last probe (at most a day ago) found."""
    from quiltsync.remote.registry import upload_mode
    from quiltsync.remote.transfer import MODE_SHA256

    target = f"s3://{bucket}"
    try:
        mode, left = upload_mode(bucket, fresh=fresh)
    except QuiltsyncError as e:
        return CheckResult("uploads", target, "fail", f"cannot upload: {e}")
    if mode == MODE_SHA256:
        detail = ("the server verifies S3 SHA-256 checksums: each upload carries the SHA-256 of the bytes "
                  "sent")
    else:
        detail = ("the server has no S3 flexible checksums (like Ceph RGW before 19): each upload carries "
                  "Content-MD5 of the bytes sent, which it verifies, and quiltsync hashes what it sends; "
                  "uploads work")
    if left is not None:
        return CheckResult("uploads", target, "warn", f"{detail}; the probe object under .quilt/quiltsync-probe/ "
                                                      f"could not be deleted ({left}): remove it by hand")
    return CheckResult("uploads", target, "ok", detail)


@dataclass(frozen=True, slots=True)
class Latest:
    """What the checks need of a package's latest revision, without holding its entries:
    a revision this process pushed or recorded is answered by the index (SQL slices),
    any other is read from S3."""

    top_hash: str
    meta: dict[str, Any]
    files: int
    unpinned: list[str]  # logical keys without a usable versionId, sorted
    page: Callable[[int, int], list[tuple[str, str]]]  # pinned (logical key, physical key), in key order
    entries: Callable[[], Mapping[str, Entry]]  # every entry (only where a workflow's entries schema asks)

    @property
    def pinned(self) -> int:
        return self.files - len(self.unpinned)


def _latest(folder: FolderConfig, index: Index | None) -> Latest | QuiltsyncError | None:
    """The package's latest revision, as the index records it when `latest` is the
    revision the index records (one GET of the pointer: no manifest), else read once."""
    from quiltsync.remote.registry import Registry

    try:
        reg = Registry(folder.registry)
        top = reg.latest(folder.package)
        if top is None:
            return None
        last = index.last_push(folder.package) if index is not None else None
        if index is not None and last is not None and last.top_hash == top and last.registry == reg.identity:
            return _from_index(index, folder.package, last.top_hash, last.meta)
        return _from_revision(reg.revision(folder.package, top))
    except QuiltsyncError as e:
        return e


def _from_index(index: Index, package: str, top_hash: str, meta: dict[str, Any]) -> Latest:
    from quiltsync.remote.registry import version_id_of

    unpinned = [lk for lk, pk in index.unpinned_candidates(package) if version_id_of(pk) in (None, "null")]
    return Latest(top_hash, meta, index.count(package), unpinned, partial(index.pinned_page, package),
                  lambda: {lk: r.entry for lk, r in index.files(package).items()})


def _from_revision(rev: Revision) -> Latest:
    from quiltsync.remote.registry import unpinned_keys, version_id_of

    pinned = sorted((lk, e.physical_key) for lk, e in rev.entries.items()
                    if version_id_of(e.physical_key) not in (None, "null"))
    return Latest(rev.top_hash, rev.meta, len(rev.entries), unpinned_keys(rev.entries),
                  lambda start, n: pinned[start:start + n], lambda: rev.entries)


def _read_workflows(bucket: str) -> Any:
    from quiltsync.remote.registry import Registry

    try:
        return Registry(f"s3://{bucket}").workflows()
    except QuiltsyncError as e:
        return e


def check_manifest_pinned(folder: FolderConfig, rev: Latest | QuiltsyncError | None) -> CheckResult:
    target = folder.package
    if isinstance(rev, QuiltsyncError):
        return CheckResult("manifest_pinned", target, "fail", f"cannot read the latest manifest: {rev}")
    if rev is None:
        return CheckResult("manifest_pinned", target, "ok", "no revision yet")
    bad = rev.unpinned
    if not bad:
        return _sampled(folder, rev, int(time.time() // _SAMPLE_SLOT_S))
    return CheckResult("manifest_pinned", target, "fail",
                       f"latest {rev.top_hash[:12]}: {len(bad)} of {rev.files} entries have no "
                       f"versionId (first: {bad[0]!r}); it was pushed without versioning and cannot be "
                       "restored exactly; the next push re-pins changed files only")


_SAMPLE = 32  # object versions HEADed per revision per health run
_SAMPLE_SLOT_S = 60.0  # the rotation advances once a minute: every version is checked within N/32 runs


def _sampled(folder: FolderConfig, latest: Latest, slot: int) -> CheckResult:
    """HEAD a rotating slice of the pinned object versions of the latest revision and
    of one older revision still in history (a different one each run): a version
    deleted behind quiltsync's back (by hand, by a lifecycle rule) is found before
    anyone needs it. Each version of a revision is checked within
    ceil(entries / 32) runs. The latest's slice comes from the index when quiltsync
    pushed it; an older manifest is read once into the revision cache and then only
    HEADed for its ETag, and only the sampled lines of it are parsed."""
    from quiltsync.engine.catalog import Catalog
    from quiltsync.remote.registry import Registry

    reg = Registry(folder.registry)
    samples = [(latest.top_hash, _rotating(latest.page, latest.pinned, slot))]
    try:
        catalog = Catalog(reg, folder.package)
        older = [top for _s, top in catalog.revisions() if top != latest.top_hash]
        if older:
            top = older[slot % len(older)]
            samples.append((top, _manifest_sample(catalog.manifest_current(top), slot)))
    except QuiltsyncError:
        pass  # the latest alone is still checked
    checked, gone = 0, []
    try:
        for top, part in samples:
            missing = set(reg.missing_versions([pk for _lk, pk in part]))
            checked += len(part)
            gone += [(top, lk) for lk, pk in part if pk in missing]
    except QuiltsyncError as e:
        return CheckResult("manifest_pinned", folder.package, "warn", f"cannot check object versions now: {e}")
    if gone:
        top, lk = gone[0]
        return CheckResult("manifest_pinned", folder.package, "fail",
                           f"revision {top[:12]}: the object version of {lk!r} is gone ({len(gone)} missing of "
                           f"{checked} checked): deleted by hand or by a lifecycle rule; that revision cannot be "
                           "restored (restore fails on it); check the bucket's lifecycle rules and who deletes "
                           "object versions")
    return CheckResult("manifest_pinned", folder.package, "ok",
                       f"latest {latest.top_hash[:12]}: all {latest.files} entries pinned; "
                       f"{checked} object versions of {len(samples)} revision(s) checked present")


def _rotating(page: Callable[[int, int], list[tuple[str, str]]], total: int, slot: int) -> list[tuple[str, str]]:
    """The slot's window of ``_SAMPLE`` items out of ``total``, wrapping around."""
    if total <= 0:
        return []
    start = (slot * _SAMPLE) % total
    part = page(start, min(_SAMPLE, total))
    if len(part) < min(_SAMPLE, total):
        part += page(0, min(_SAMPLE, total) - len(part))
    return part


def _manifest_sample(data: bytes, slot: int) -> list[tuple[str, str]]:
    """The slot's window of pinned (logical key, physical key) of a manifest, parsing
    only those lines (a 50,000-entry manifest is 13.5 MB of JSON)."""
    import json

    from quiltsync.remote.registry import version_id_of

    lines = [line for line in data.splitlines()[1:] if b"versionId=" in line]
    lines.sort()  # lines start with their logical key: a stable order to rotate through

    def page(start: int, n: int) -> list[tuple[str, str]]:
        out = []
        for line in lines[start:start + n]:
            obj = json.loads(line)
            pk = (obj.get("physical_keys") or [""])[0]
            if version_id_of(pk) not in (None, "null"):
                out.append((str(obj["logical_key"]), str(pk)))
        return out

    return _rotating(page, len(lines), slot)


def check_lifecycle(bucket: str, folders: list[FolderConfig]) -> CheckResult:
    """A lifecycle rule that expires object versions under a watched package's prefix
    or under .quilt/ silently breaks revisions (FACTS.md): fail, naming the rule."""
    from quiltsync.remote.registry import Registry

    target = f"s3://{bucket}"
    try:
        rules = Registry(target).lifecycle_rules()
    except QuiltsyncError as e:
        return CheckResult("lifecycle", target, "warn", f"cannot read the lifecycle configuration: {e}")
    watched = [".quilt/", *(f"{f.package}/" for f in folders)]
    for rule in rules:
        if rule.get("Status") != "Enabled":
            continue
        expiration = {k: v for k, v in (rule.get("Expiration") or {}).items() if k != "ExpiredObjectDeleteMarker"}
        what = [a for a, on in (("NoncurrentVersionExpiration", rule.get("NoncurrentVersionExpiration")),
                                ("Expiration", expiration)) if on]
        if not what:
            continue
        flt = rule.get("Filter") or {}
        prefix = flt.get("Prefix", (flt.get("And") or {}).get("Prefix", rule.get("Prefix", ""))) or ""
        hit = [w for w in watched if w.startswith(prefix) or prefix.startswith(w)]
        if hit:
            why = ("expires noncurrent object versions, which older revisions are pinned to"
                   if "NoncurrentVersionExpiration" in what else
                   "expires current objects (the revision pointers and manifests under .quilt/ among them)")
            return CheckResult("lifecycle", target, "fail",
                               f"lifecycle rule {rule.get('ID') or '(no ID)'!r} (prefix {prefix!r}) {why}; "
                               f"it applies to {', '.join(hit)}: revisions would restore nothing. Use "
                               "Transitions to cheaper storage classes instead, and `quiltsync prune` with "
                               "[folder.retention] to drop old revisions safely")
    return CheckResult("lifecycle", target, "ok",
                       f"{len(rules)} lifecycle rule(s); none expires objects under .quilt/ or a watched package")


def check_workflow(folder: FolderConfig, workflows: Any, latest: Latest | QuiltsyncError | None) -> CheckResult:
    """Which workflow the folder's pushes get, and whether its name, message and
    metadata (and, where the workflow has an entries schema, its files) pass it:
    the same check a push makes before uploading."""
    from quiltsync.local.scanner import RootUnavailable, make_ignore_spec, scan_folder
    from quiltsync.remote.workflows import check

    target = folder.package
    if isinstance(workflows, QuiltsyncError):
        status = "fail" if isinstance(workflows, WorkflowRefused) else "warn"
        return CheckResult("workflow", target, status, str(workflows))
    if isinstance(latest, QuiltsyncError) and folder.metadata is None:
        return CheckResult("workflow", target, "warn", "cannot check the package metadata: the latest "
                           f"revision (whose metadata pushes keep) cannot be read: {latest}")
    base = latest if isinstance(latest, Latest) else None
    meta = revision_meta(base.meta if base else None, folder.metadata, None)
    message = render(folder.message, MessageValues(socket.gethostname(), folder.package, str(folder.path),
                                                   1, 0, 0, base.files + 1 if base else 1, time.time()))

    def entries() -> list[tuple[str, int, dict[str, Any]]]:
        from quiltsync.local.fstype import answered

        try:  # a folder on a share that does not answer must not stall the checks
            scan = answered(partial(scan_folder, folder.path, make_ignore_spec(folder.ignore)), ENTRIES_SCAN_SECONDS)
        except RootUnavailable:
            return []
        if scan is None:
            raise QuiltsyncError(f"{folder.path} did not answer within {ENTRIES_SCAN_SECONDS:.0f} s")
        old = base.entries() if base else {}
        return [(lk, st.size, ((old[lk].meta or {}).get("user_meta") or {}) if lk in old else {})
                for lk, st in scan.files.items()]

    try:
        check(workflows, name=folder.package, choice=folder.workflow, message=message,
              user_meta=meta.get("user_meta") or {}, entries=entries)
    except WorkflowRefused as e:
        return CheckResult("workflow", target, "fail", f"pushes are refused: {e}")
    except QuiltsyncError as e:
        return CheckResult("workflow", target, "warn", f"cannot check the workflow now: {e}")
    except Exception as e:  # never lose the other checks of a run to one folder's
        return CheckResult("workflow", target, "warn", f"cannot check the workflow: {type(e).__name__}: {e}")
    what = workflows.describe(folder.workflow)
    if workflows.config is None:
        return CheckResult("workflow", target, "ok", what)
    version = f", config version {workflows.version_id}" if workflows.version_id else ""
    return CheckResult("workflow", target, "ok", f"{what}{version}: name, message and metadata pass")


def check_credentials() -> CheckResult:
    from quiltsync.remote.registry import quilt_credentials_file

    path = quilt_credentials_file()
    if path is None:
        return CheckResult("credentials", "AWS chain", "ok", "no quilt3 credentials.json override")
    return CheckResult("credentials", str(path), "warn",
                       f"{path} (from quilt3.login) overrides the AWS credentials of the environment; "
                       "remove it (or run quilt3.logout()) unless that is intended")


def check_cache(config: Config) -> CheckResult:
    from quiltsync.remote import quiltcache
    from quiltsync.remote.registry import manifest_parser, quilt_paths

    root = quilt_paths()[0]
    report = quiltcache.inspect(root, {f.bucket for f in config.folder}, manifest_parser)
    size = f"{report.total_bytes / 1e6:.1f} MB, {report.manifests} manifests, {report.objects} object paths"
    if report.ok:
        return CheckResult("cache", str(root), "ok", size)
    kinds: dict[str, int] = {}
    for p in report.problems:
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    what = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    return CheckResult("cache", str(root), "warn", f"{what} ({size}); `quiltsync doctor --fix` removes exactly these")


def check_watches(folders: Iterable[FolderConfig], count_installed: Callable[[], int] | None = None,
                  settle_s: float = 2.0, layouts: Mapping[str, Layout] | None = None) -> list[CheckResult]:
    """How each folder is watched, and whether inotify covers the parts it should.

    ``layouts`` come from the daemon, which reports each folder's row itself
    (polls answer or not as they run); without them (``quiltsync check``) the
    layouts are detected here and each folder gets its row. Polled parts are
    never walked here: a share that does not answer must not stall the checks.
    """
    folders = list(folders)
    out: list[CheckResult] = []
    if layouts is None:
        from quiltsync.local.fstype import layout

        layouts = {f.package: layout(f.path, f.watch) for f in folders}
        out.extend(_watch_row(f, layouts[f.package]) for f in folders)
    evented = [f for f in folders if (lay := layouts.get(f.package)) is None or lay.events]
    limit = _read_int("/proc/sys/fs/inotify/max_user_watches")
    readable = [f for f in evented if f.path.is_dir() and os.access(f.path, os.R_OK | os.X_OK)]
    for f in evented:
        if f not in readable:
            out.append(CheckResult("watches", str(f.path), "fail",
                                   f"folder {f.path} is missing or unreadable by this user"))

    def count() -> int:
        total = 0
        for f in readable:
            lay = layouts.get(f.package)
            skip = {os.path.join(f.path, p.rel) for p in lay.polled} if lay is not None else set()
            total += sum(1 for _ in _dirs(f.path, skip))
        return total

    needed = count()
    installed = count_installed() if count_installed is not None else None
    if installed is not None and 0 <= installed < needed:
        # Directories created a moment ago are still being added by the observer:
        # only a gap that stays is a problem.
        time.sleep(settle_s)
        needed = count()
        installed = count_installed()  # type: ignore[misc]
    if installed is not None and installed < 0:
        installed = None
    detail = f"{needed} directories to watch"
    if installed is not None:
        detail += f", {installed} watches installed"
        if installed < needed:
            out.append(CheckResult("watches", "inotify", "fail", detail + ": part of the trees is not watched"))
            return out
    if limit is not None:
        detail += f", fs.inotify.max_user_watches = {limit}"
        if needed > limit * 0.9:
            out.append(CheckResult("watches", "inotify", "fail" if needed > limit else "warn",
                                   detail + "; raise it: sysctl fs.inotify.max_user_watches=" +
                                   str(max(needed * 2, 524288))))
            return out
    out.append(CheckResult("watches", "inotify", "ok", detail))
    return out


def _watch_row(f: FolderConfig, lay: Layout) -> CheckResult:
    detail = lay.describe(f.poll_seconds if lay.polled else None)
    if lay.root.fstype == NOT_ANSWERING:
        return CheckResult("watches", f.package, "fail",
                           f"folder {f.path} does not answer (a hung NFS/SMB server or a stopped FUSE process?)")
    if f.watch == "events" and is_remote(lay.root.fstype):
        return CheckResult("watches", f.package, "warn",
                           f"{detail}: changes made by other hosts or behind the mount send no events and are "
                           "seen only at the hourly rescan; set watch = \"auto\" or \"poll\"")
    return CheckResult("watches", f.package, "ok", detail)


def _dirs(root: Path, skip: set[str] | None = None) -> Iterable[str]:
    stack = [str(root)]
    while stack:
        d = stack.pop()
        yield d
        try:
            with os.scandir(d) as it:
                stack.extend(e.path for e in it if e.is_dir(follow_symlinks=False) and e.path not in (skip or ()))
        except OSError:
            continue


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None

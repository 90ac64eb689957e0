"""Health checks: can every folder be versioned safely, and is quilt3's cache sound?

Each check has a name used in ``health.*`` events and in ``quiltsync check``:
registry, versioning, manifest_pinned, workflow, credentials, cache, watches,
stuck. A
result is ``fail`` (versions are at risk: `check` exits 1) or ``warn`` (worth
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
from quiltsync.core.types import Revision
from quiltsync.core.watchmode import NOT_ANSWERING, Layout, is_remote
from quiltsync.errors import QuiltsyncError, WorkflowRefused


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
            layouts: Mapping[str, Layout] | None = None) -> list[CheckResult]:
    """Every check; ``installed_watches`` counts the daemon's inotify watches and ``layouts``
    says how it watches each folder (both None: not a daemon)."""
    out: list[CheckResult] = []
    reachable = set()
    for bucket, folders in _by_bucket(config.folder).items():
        r = check_registry(bucket)
        out.append(r)
        if r.ok:
            reachable.add(bucket)
            out.append(check_versioning(bucket, folders))
            out.append(check_lifecycle(bucket, folders))
            workflows = _read_workflows(bucket)
            for f in folders:
                latest = _latest(f)
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


def _latest(folder: FolderConfig) -> Revision | QuiltsyncError | None:
    """The package's latest revision, read once for the checks that need it."""
    from quiltsync.remote.registry import Registry

    try:
        return Registry(folder.registry).latest_revision(folder.package)
    except QuiltsyncError as e:
        return e


def _read_workflows(bucket: str) -> Any:
    from quiltsync.remote.registry import Registry

    try:
        return Registry(f"s3://{bucket}").workflows()
    except QuiltsyncError as e:
        return e


def check_manifest_pinned(folder: FolderConfig, rev: Revision | QuiltsyncError | None) -> CheckResult:
    from quiltsync.remote.registry import unpinned_keys

    target = folder.package
    if isinstance(rev, QuiltsyncError):
        return CheckResult("manifest_pinned", target, "fail", f"cannot read the latest manifest: {rev}")
    if rev is None:
        return CheckResult("manifest_pinned", target, "ok", "no revision yet")
    bad = unpinned_keys(rev.entries)
    if not bad:
        return _sampled(folder, rev, int(time.time() // _SAMPLE_SLOT_S))
    return CheckResult("manifest_pinned", target, "fail",
                       f"latest {rev.top_hash[:12]}: {len(bad)} of {len(rev.entries)} entries have no "
                       f"versionId (first: {bad[0]!r}); it was pushed without versioning and cannot be "
                       "restored exactly; the next push re-pins changed files only")


_SAMPLE = 32  # object versions HEADed per revision per health run
_SAMPLE_SLOT_S = 60.0  # the rotation advances once a minute: every version is checked within N/32 runs


def _sampled(folder: FolderConfig, latest: Revision, slot: int) -> CheckResult:
    """HEAD a rotating slice of the pinned object versions of the latest revision and
    of one older revision still in history (a different one each run): a version
    deleted behind quiltsync's back (by hand, by a lifecycle rule) is found before
    anyone needs it. Each version of a revision is checked within
    ceil(entries / 32) runs."""
    from quiltsync.engine.catalog import Catalog
    from quiltsync.remote.registry import Registry, version_id_of

    reg = Registry(folder.registry)
    revisions = [latest]
    try:
        catalog = Catalog(reg, folder.package)
        older = [top for _s, top in catalog.revisions() if top != latest.top_hash]
        if older:
            revisions.append(catalog.revision(older[slot % len(older)], fresh=True))
    except QuiltsyncError:
        pass  # the latest alone is still checked
    checked, gone = 0, []
    try:
        for rev in revisions:
            keys = sorted(lk for lk, e in rev.entries.items() if version_id_of(e.physical_key) not in (None, "null"))
            start = (slot * _SAMPLE) % len(keys) if keys else 0
            part = [keys[(start + i) % len(keys)] for i in range(min(_SAMPLE, len(keys)))]
            missing = set(reg.missing_versions([rev.entries[lk].physical_key for lk in part]))
            checked += len(part)
            gone += [(rev.top_hash, lk) for lk in part if rev.entries[lk].physical_key in missing]
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
                       f"latest {latest.top_hash[:12]}: all {len(latest.entries)} entries pinned; "
                       f"{checked} object versions of {len(revisions)} revision(s) checked present")


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


def check_workflow(folder: FolderConfig, workflows: Any, latest: Revision | QuiltsyncError | None) -> CheckResult:
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
    base = latest if isinstance(latest, Revision) else None
    meta = revision_meta(base.meta if base else None, folder.metadata, None)
    message = render(folder.message, MessageValues(socket.gethostname(), folder.package, str(folder.path),
                                                   1, 0, 0, len(base.entries) + 1 if base else 1, time.time()))

    def entries() -> list[tuple[str, int, dict[str, Any]]]:
        from quiltsync.local.fstype import answered

        try:  # a folder on a share that does not answer must not stall the checks
            scan = answered(partial(scan_folder, folder.path, make_ignore_spec(folder.ignore)), ENTRIES_SCAN_SECONDS)
        except RootUnavailable:
            return []
        if scan is None:
            raise QuiltsyncError(f"{folder.path} did not answer within {ENTRIES_SCAN_SECONDS:.0f} s")
        old = base.entries if base else {}
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
    from quiltsync.remote.registry import parse_manifest, quilt_paths

    root = quilt_paths()[0]
    report = quiltcache.inspect(root, {f.bucket for f in config.folder}, parse_manifest)
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

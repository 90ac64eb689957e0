"""Prune: drop the revisions a folder's retention policy does not keep, then collect
the object versions no remaining revision of any package references.

The plan (``plan_prune``) reads, changes nothing, and is what `--dry-run`
prints. Carrying it out (``carry_out``) deletes in the order that keeps every
kept revision restorable at every moment, whatever a reader sees between steps
and wherever the process is killed:

1. a journal in ``state_dir`` records the manifest versions to delete, and the
   registry (so a rerun finishes them even after their pointers are gone);
2. the pruned revisions' timestamp pointers: the revisions leave `history`;
   a manifest without a pointer is invisible, never half-visible;
3. their manifests: exactly the object versions listed when planning (a plain
   delete in a versioned bucket only hides an object; a rewrite of the same
   top_hash after the plan survives), unless a kept revision, `latest` or another
   package's pointer names the same top_hash;
4. the object versions under the package's prefix that no remaining manifest
   version in the bucket references (manifests of every package: quilt3 lets a
   package point at another's objects; every version of a manifest, since the
   same top_hash pushed again is rewritten with other physical keys and older
   readers keep the first; an entry without a versionId protects every version
   of its key) and that are older than the grace period (a push in flight uploads
   first and writes its manifest last);
5. the journal.

Step 4 only ever deletes what no manifest still in the bucket references, so a
kill between any two requests leaves kept revisions whole; a rerun plans again
and finishes. The package's lock is held throughout: no push of the package runs
meanwhile (the daemon's waits, `push.waiting`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from quiltsync.config import FolderConfig, RetentionConfig
from quiltsync.core.retention import Policy, Verdict, decide
from quiltsync.engine.catalog import Catalog
from quiltsync.errors import PermanentError
from quiltsync.local.locks import package_lock
from quiltsync.logs import get_logger
from quiltsync.remote.registry import ObjectVersion, Registry, version_id_of


def policy_of(r: RetentionConfig) -> Policy:
    return Policy(r.keep_last, r.keep_hourly, r.keep_daily, r.keep_weekly, r.keep_monthly, frozenset(r.keep))


@dataclass(slots=True)
class PrunePlan:
    package: str
    registry: str
    verdict: Verdict
    manifests: list[str]  # top_hashes whose manifests go
    shared: list[str]  # pruned top_hashes kept because another package's pointer names them
    versions: list[ObjectVersion] = field(default_factory=list)  # object versions that go
    manifest_versions: list[tuple[str, str]] = field(default_factory=list)  # (key, versionId) that go
    young: int = 0  # unreferenced versions kept for the grace period
    referenced: int = 0  # versions under the prefix that remaining manifests reference

    manifest_bytes: int = 0

    @property
    def bytes_freed(self) -> int:
        return sum(v.size for v in self.versions)


def _journal(state_dir: Path, package: str) -> Path:
    return state_dir / "prune" / (package.replace("/", "%2F") + ".json")


def plan_prune(folder: FolderConfig, catalog: Catalog, now: float,
               finishing: list[tuple[str, str]] | None = None) -> PrunePlan:
    """What a prune of ``folder`` would delete now (reads only). ``finishing``: the
    manifest versions an interrupted prune was deleting (recorded in its journal)."""
    assert folder.retention is not None
    reg = catalog.registry
    package = folder.package
    revisions = catalog.revisions()
    latest = reg.latest(package)
    if latest is None and revisions:
        raise PermanentError(f"{package}: s3://{reg.bucket}/.quilt/named_packages/{package}/latest is missing "
                             "while revisions exist; not pruning until it is back (push once to restore it)")
    verdict = decide(policy_of(folder.retention), revisions, latest)
    named_elsewhere = _named_by_other_packages(reg, catalog, package)
    removable = verdict.removable()
    named = named_elsewhere | {top for _stamp, top in verdict.kept} | ({latest} if latest else set())
    tops = sorted(t for t in removable if t not in named)
    plan = PrunePlan(package, folder.registry, verdict, tops, shared=[t for t in removable if t in named_elsewhere])
    _collect(plan, reg, catalog, now - folder.retention.grace_hours * 3600, named,
             [(k, v) for k, v in (finishing or []) if k[len(MANIFESTS):] not in named])
    return plan


MANIFESTS = ".quilt/packages/"


def _named_by_other_packages(reg: Registry, catalog: Catalog, package: str) -> set[str]:
    """Top_hashes that pointers of the bucket's other packages name (latest included)."""
    names = {"/".join(k.split("/")[2:4]) for k, _etag in reg.keys(".quilt/named_packages/") if k.count("/") >= 4}
    out: set[str] = set()
    for name in sorted(names - {package}):
        other = Catalog(reg, name, catalog.cache)
        out.update(top for _stamp, top in other.revisions())
        top = reg.latest(name)
        if top:
            out.add(top)
    return out


def _collect(plan: PrunePlan, reg: Registry, catalog: Catalog, cutoff: float, named: set[str],
             finishing: list[tuple[str, str]]) -> None:
    """The manifest versions that go (exactly these: a rewrite of the same top_hash
    after the plan survives), and the object versions under the package's prefix
    that no remaining manifest version of any package references. Every version
    of a manifest counts, not only the current one: pushing the same content again
    rewrites a manifest with other physical keys, and whoever read the older
    version (an index, a cache, another machine) still points at its objects."""
    prefix = f"{plan.package}/"
    gone_tops = set(plan.manifests)
    listed = [v for v in reg.object_versions(MANIFESTS) if "/" not in v.key[len(MANIFESTS):]]
    present = {(v.key, v.version_id) for v in listed}
    plan.manifest_versions = sorted({*((v.key, v.version_id) for v in listed
                                       if v.key[len(MANIFESTS):] in gone_tops), *(present & set(finishing))})
    going = set(plan.manifest_versions)
    plan.manifest_bytes = sum(v.size for v in listed if (v.key, v.version_id) in going)
    pinned: set[tuple[str, str]] = set()
    whole: set[str] = set()  # keys referenced without a versionId: every version stays
    for v in listed:
        if (v.key, v.version_id) in going:
            continue
        top = v.key[len(MANIFESTS):]
        rev = catalog.revision_version(top, v.version_id) if v.version_id != "null" else \
            catalog.revision(top, fresh=True)
        for e in rev.entries.values():
            u = urlparse(e.physical_key)
            k = unquote(u.path.lstrip("/"))
            if u.netloc != reg.bucket or not k.startswith(prefix):
                continue
            vid = version_id_of(e.physical_key)
            if vid and vid != "null":
                pinned.add((k, vid))
            else:
                whole.add(k)
    for ov in reg.object_versions(prefix):
        if (ov.key, ov.version_id) in pinned or ov.key in whole:
            plan.referenced += 1
        elif ov.modified > cutoff:
            plan.young += 1
        else:
            plan.versions.append(ov)


def carry_out(plan: PrunePlan, reg: Registry, state_dir: Path,
              step: Callable[[str], None] = lambda _what: None) -> int:
    """Delete in the safe order (module docstring); returns the bytes freed.
    ``step(name)`` is called before each step (tests kill the process there)."""
    journal = _journal(state_dir, plan.package)
    journal.parent.mkdir(parents=True, exist_ok=True)
    tmp = journal.with_suffix(".tmp")
    tmp.write_text(json.dumps({"registry": reg.identity, "manifest_versions": plan.manifest_versions}))
    os.replace(tmp, journal)
    freed = 0
    step("pointers")
    for stamp, _top in plan.verdict.pruned:
        freed += reg.delete_key(f".quilt/named_packages/{plan.package}/{stamp}")
    step("manifests")
    reg.delete_versions(plan.manifest_versions)
    freed += plan.manifest_bytes
    step("objects")
    reg.delete_versions([(v.key, v.version_id) for v in plan.versions])
    freed += plan.bytes_freed
    journal.unlink(missing_ok=True)
    return freed


def prune(folder: FolderConfig, catalog: Catalog, state_dir: Path, *, dry_run: bool = False,
          now: Callable[[], float] = time.time,
          step: Callable[[str], None] = lambda _what: None) -> tuple[PrunePlan, int]:
    """Plan, and unless ``dry_run`` carry out, under the package's lock; (plan, bytes freed)."""
    log = get_logger("quiltsync.prune").bind(package=folder.package, registry=folder.registry)

    def waiting() -> None:
        log.info("prune.waiting", detail="a push of this package is running; waiting for it")

    with package_lock(state_dir, folder.package, on_wait=waiting):
        journal = _journal(state_dir, folder.package)
        finishing: list[tuple[str, str]] = []
        if journal.exists():
            try:
                recorded = json.loads(journal.read_text())
                if recorded.get("registry") == catalog.registry.identity:  # another registry: not ours to finish
                    finishing = [(str(k), str(v)) for k, v in recorded.get("manifest_versions", [])]
            except (OSError, ValueError, TypeError):
                finishing = []
            log.info("prune.resuming", manifests=len(finishing), detail="finishing an interrupted prune")
        plan = plan_prune(folder, catalog, now(), finishing)
        if dry_run:
            return plan, 0
        freed = carry_out(plan, catalog.registry, state_dir, step)
    log.info("prune.completed", kept=len(plan.verdict.kept), pruned=len(plan.verdict.pruned),
             manifests_deleted=len(plan.manifests), versions_deleted=len(plan.versions), bytes_freed=freed,
             young_versions_kept=plan.young)
    return plan, freed

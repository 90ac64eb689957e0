"""The one boundary to quilt3, boto3 and botocore.

Everything quiltsync asks of a registry goes through ``Registry``; quilt3's and
botocore's exceptions are mapped here into quiltsync's own (errors.py), as
transient (worth retrying) or permanent. quilt3 is imported only where it is
used (restore, the check of quilt3's own manifest cache, workflows configs: not
by the push path or the daemon's steady state, which saves about 24 MB), and only after the
environment it reads at import time is set (usage metrics off, progress bars
off), see ``settings``.

Reads that must not be served from quilt3's local manifest cache (the latest
pointer, manifests for conflicts, history and restore) go to S3 directly and are
checked: a manifest must hash to the top_hash it was asked for.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlunparse

import botocore.exceptions as bce

from quiltsync.core.manifest import ManifestError, ManifestWriter
from quiltsync.core.manifest import parse_manifest as parse_manifest_bytes
from quiltsync.core.types import Entry, Revision
from quiltsync.errors import (
    PermanentError,
    PushConflict,
    QuiltsyncError,
    SourceChanged,
    TransientError,
)
from quiltsync.remote import settings, transfer
from quiltsync.remote.settings import S3Settings
from quiltsync.remote.transfer import Progress

# Error codes after which retrying the same request cannot help.
_PERMANENT_CODES = {
    "AccessDenied": "access denied",
    "AllAccessDisabled": "access to the bucket is disabled",
    "InvalidAccessKeyId": "the AWS access key id is not known to the endpoint",
    "SignatureDoesNotMatch": "the AWS secret key does not match the access key id",
    "ExpiredToken": "the AWS session token has expired",
    "InvalidToken": "the AWS session token is not valid",
    "NoSuchBucket": "the bucket does not exist",
    "InvalidBucketName": "the bucket name is not valid",
    "AccountProblem": "the AWS account has a problem",
    "PermanentRedirect": "the bucket is in another region; set [s3] region",
    "AuthorizationHeaderMalformed": "the request was signed for the wrong region; set [s3] region",
}
# Worth another try: throttling, timeouts, and bytes damaged on the way (Content-MD5 or
# SHA-256 of what arrived differs from what was sent).
_TRANSIENT_CODES = {"SlowDown", "Throttling", "RequestTimeout", "BadDigest", "XAmzContentSHA256Mismatch",
                    "XAmzContentChecksumMismatch", "IncompleteBody"}
_TRANSIENT_EXC = (
    bce.EndpointConnectionError,
    bce.ConnectTimeoutError,
    bce.ReadTimeoutError,
    bce.ConnectionClosedError,
    bce.ResponseStreamingError,
    bce.HTTPClientError,
    ConnectionError,
    TimeoutError,
)


@dataclass(frozen=True, slots=True)
class ObjectVersion:
    key: str
    version_id: str
    size: int
    modified: float  # unix time
    latest: bool


@dataclass(frozen=True, slots=True)
class Published:
    """A revision this process wrote, and the size of its manifest."""

    revision: Revision
    manifest_bytes: int


def describe(e: BaseException) -> str:
    """A one-line description of a foreign error, for logs and messages."""
    if isinstance(e, bce.ClientError):
        err = e.response.get("Error", {})
        code = err.get("Code", "?")
        op = getattr(e, "operation_name", "request")
        return f"{op}: {code}: {_PERMANENT_CODES.get(code) or err.get('Message') or code}"
    if isinstance(e, bce.NoCredentialsError):
        return ("no AWS credentials found; provide them through the standard chain "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance role)")
    text = f"{type(e).__name__}: {e}".splitlines()[0]
    return _without_force_advice(text) if isinstance(e, _quilt3_errors()[:1]) else text


def _quilt3_errors() -> tuple[type[BaseException], ...]:
    """(QuiltConflictException, QuiltException) once quilt3 is imported; none before:
    the push path and the daemon never import it (about 24 MB resident), and what
    was never imported cannot have raised. Not while another thread is importing
    it (quilt3.util is in sys.modules before its classes are defined)."""
    if not settings.quilt3_imported():
        return ()
    util = sys.modules.get("quilt3.util")
    conflict, base = getattr(util, "QuiltConflictException", None), getattr(util, "QuiltException", None)
    return (conflict, base) if conflict is not None and base is not None else ()


def _quilt3() -> Any:
    """quilt3, imported with its environment set (settings.import_quilt3); a failing
    import (e.g. a QUILT_* variable it rejects) is a PermanentError naming why."""
    try:
        settings.import_quilt3()
        import quilt3
    except Exception as e:
        raise PermanentError(f"cannot import quilt3: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    return quilt3


def physical_key_url(bucket: str, key: str, version_id: str | None) -> str:
    """``str(quilt3.util.PhysicalKey(bucket, key, version_id))``, without importing quilt3
    (the same stdlib calls; tests/test_units.py compares them on generated keys)."""
    params = {} if version_id is None else {"versionId": version_id}
    return urlunparse(("s3", bucket, quote("/" + key), None, urlencode(params), None))


def _without_force_advice(message: str) -> str:
    """quilt3's conflict message ends with "Use force=True (Python) or --force (CLI) to
    overwrite.": advice for quilt3's users that quiltsync never follows (forcing would
    drop the other writer's revision), so it never reaches a quiltsync message."""
    sentences = re.split(r"(?<=[.;])\s+", message)
    kept = [s for s in sentences if "force=True" not in s and "--force" not in s]
    return " ".join(kept).strip() or message


def classify(e: BaseException) -> type[QuiltsyncError]:
    if isinstance(e, _quilt3_errors()[:1]):
        return PushConflict
    if isinstance(e, bce.ClientError):
        code = e.response.get("Error", {}).get("Code", "")
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _PERMANENT_CODES or code in ("403", "404"):
            return PermanentError
        if status >= 500 or status in (408, 429) or code in _TRANSIENT_CODES:
            return TransientError
        return PermanentError
    if isinstance(e, (bce.NoCredentialsError, bce.PartialCredentialsError, bce.ParamValidationError)):
        return PermanentError
    if isinstance(e, (*_TRANSIENT_EXC, OSError)):
        return TransientError
    return PermanentError


@contextlib.contextmanager
def mapped_errors(what: str) -> Iterator[None]:
    """Turn quilt3/botocore exceptions into quiltsync's, with ``what`` as context."""
    try:
        yield
    except QuiltsyncError:
        raise
    except (bce.BotoCoreError, bce.ClientError, OSError, KeyError, ValueError, *_quilt3_errors()) as e:
        if isinstance(e, _quilt3_errors()[:1]):
            raise PushConflict(f"{what}: {_without_force_advice(str(e).splitlines()[0])}") from e
        raise classify(e)(f"{what}: {describe(e)}") from e


class Registry:
    """An S3 package registry ``s3://bucket`` on one endpoint (its identity)."""

    def __init__(self, url: str, s3: S3Settings | None = None) -> None:
        self.url = url.rstrip("/")
        self.bucket = self.url[len("s3://") :]
        self.settings = s3 if s3 is not None else settings.active()
        self.identity = self.settings.identity(self.bucket)

    @property
    def s3(self) -> Any:
        self._check_active()
        return settings.thread_client("s3")

    def _check_active(self) -> None:
        """quilt3's clients follow the process's active settings: a registry of other
        settings (a reload moved the endpoint) must not be reached through them."""
        if self.settings != settings.active():
            raise TransientError(f"{self.identity}: the S3 settings changed (reload); retrying with the new ones")

    # -- reads that bypass quilt3's caches ----------------------------------------
    def _get(self, key: str, what: str) -> bytes | None:
        """An object's bytes, or None when there is no such key."""
        got = self._get_object(key, what)
        return None if got is None else got[0]

    def _get_object(self, key: str, what: str) -> tuple[bytes, str] | None:
        """(bytes, ETag) of an object, or None when there is no such key."""
        with mapped_errors(f"reading {what}s3://{self.bucket}/{key}"):
            try:
                resp = self.s3.get_object(Bucket=self.bucket, Key=key)
                return bytes(resp["Body"].read()), str(resp.get("ETag", ""))
            except bce.ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise

    def latest(self, name: str) -> str | None:
        """The top_hash `latest` points to, or None if the package has no revision."""
        body = self._get(f".quilt/named_packages/{name}/latest", "")
        return None if body is None else body.decode().strip()

    def revision(self, name: str, top_hash: str) -> Revision:
        """A revision's manifest, read from S3 and checked against its top_hash."""
        return self.parse_revision(top_hash, self.manifest_bytes(top_hash))

    def manifest_bytes(self, top_hash: str) -> bytes:
        return self.manifest_object(top_hash)[0]

    def manifest_object(self, top_hash: str) -> tuple[bytes, str]:
        """A manifest's (bytes, ETag). The ETag tells a rewrite: pushing the same
        content again rewrites the manifest with other physical keys (they are not
        part of the top_hash)."""
        key = f".quilt/packages/{top_hash}"
        got = self._get_object(key, "manifest ")
        if got is None:
            raise PermanentError(f"no manifest s3://{self.bucket}/{key}: the revision's manifest "
                                 "was deleted, or the top_hash is not of this registry")
        return got

    def manifest_etag(self, top_hash: str) -> str | None:
        """The ETag of a manifest (a HEAD: no body), or None when it is gone."""
        key = f".quilt/packages/{top_hash}"
        with mapped_errors(f"reading s3://{self.bucket}/{key}"):
            try:
                return str(self.s3.head_object(Bucket=self.bucket, Key=key).get("ETag", ""))
            except bce.ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise

    def manifest_version(self, top_hash: str, version_id: str) -> bytes:
        """One object version of a manifest (a rewrite of the same top_hash keeps the
        older versions, which older readers' physical keys came from)."""
        key = f".quilt/packages/{top_hash}"
        with mapped_errors(f"reading manifest s3://{self.bucket}/{key} version {version_id}"):
            resp = self.s3.get_object(Bucket=self.bucket, Key=key, VersionId=version_id)
            return bytes(resp["Body"].read())

    def parse_revision(self, top_hash: str, data: bytes) -> Revision:
        """A manifest's bytes as a revision of this registry, checked against its top_hash."""
        try:
            meta, entries = parse_manifest_bytes(data, top_hash)
        except ManifestError as e:
            raise PermanentError(f"manifest s3://{self.bucket}/.quilt/packages/{top_hash}: {e}; "
                                 "the registry is damaged") from None
        return Revision(top_hash, meta, entries, self.identity)

    def versioning(self) -> str | None:
        """The bucket's versioning status (cached; see ``bucket_versioning``)."""
        self._check_active()
        return bucket_versioning(self.bucket)

    def latest_revision(self, name: str) -> Revision | None:
        top = self.latest(name)
        return None if top is None else self.revision(name, top)

    def pointers(self, name: str) -> list[tuple[int, str]]:
        """(unix time, ETag) of every revision pointer, by one LIST (per 1,000)."""
        prefix = f".quilt/named_packages/{name}/"
        out: list[tuple[int, str]] = []
        with mapped_errors(f"listing s3://{self.bucket}/{prefix}"):
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    stamp = obj["Key"][len(prefix):]
                    if stamp.isascii() and stamp.isdigit():
                        out.append((int(stamp), str(obj.get("ETag", ""))))
        return sorted(out)

    def read_pointer(self, name: str, stamp: int) -> str | None:
        """The top_hash a timestamp pointer names (None: it is gone)."""
        body = self._get(f".quilt/named_packages/{name}/{stamp}", "")
        return None if body is None else body.decode().strip()

    def versions(self, name: str) -> list[tuple[int, str]]:
        """(unix time, top_hash) of every revision pointer, oldest first (a GET each)."""
        return [(stamp, top) for stamp, _etag in self.pointers(name)
                if (top := self.read_pointer(name, stamp)) is not None]

    # -- listing and deleting (prune) ---------------------------------------------
    def keys(self, prefix: str) -> list[tuple[str, str]]:
        """(key, ETag) of every current object under ``prefix``."""
        out: list[tuple[str, str]] = []
        with mapped_errors(f"listing s3://{self.bucket}/{prefix}"):
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                out.extend((str(obj["Key"]), str(obj.get("ETag", ""))) for obj in page.get("Contents", []))
        return out

    def object_versions(self, prefix: str) -> list[ObjectVersion]:
        """Every object version (not delete markers) under ``prefix``."""
        out: list[ObjectVersion] = []
        with mapped_errors(f"listing versions of s3://{self.bucket}/{prefix}"):
            pages = self.s3.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for v in page.get("Versions", []):
                    out.append(ObjectVersion(str(v["Key"]), str(v.get("VersionId") or "null"), int(v.get("Size", 0)),
                                             v["LastModified"].timestamp(), bool(v.get("IsLatest"))))
        return out

    def delete_versions(self, versions: list[tuple[str, str]]) -> None:
        """Delete these (key, versionId) for good, 1,000 a request; raises if any fails."""
        with mapped_errors(f"deleting object versions in s3://{self.bucket}"):
            for i in range(0, len(versions), 1000):
                batch = [{"Key": k, "VersionId": v} for k, v in versions[i:i + 1000]]
                resp = self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                errors = resp.get("Errors") or []
                if errors:
                    e = errors[0]
                    raise PermanentError(f"deleting s3://{self.bucket}/{e.get('Key')} version {e.get('VersionId')}: "
                                         f"{e.get('Code')}: {e.get('Message')} ({len(errors)} failed)")

    def delete_key(self, key: str) -> int:
        """Delete every version of ``key`` and its delete markers (in a versioned bucket
        a plain delete only hides it); returns the bytes freed."""
        with mapped_errors(f"listing versions of s3://{self.bucket}/{key}"):
            resp = self.s3.list_object_versions(Bucket=self.bucket, Prefix=key)
        versions = [v for v in resp.get("Versions", []) if v["Key"] == key]
        markers = [m for m in resp.get("DeleteMarkers", []) if m["Key"] == key]
        self.delete_versions([(key, str(v["VersionId"])) for v in [*versions, *markers]])
        return sum(int(v.get("Size", 0)) for v in versions)

    def missing_versions(self, physical_keys: list[str]) -> list[str]:
        """Those of ``physical_keys`` (pinned) whose object version is gone (HEAD each,
        with the health checks' short timeouts)."""
        from urllib.parse import unquote, urlparse

        gone = []
        client = _quick_client()
        for pk in physical_keys:
            u = urlparse(pk)
            vid = version_id_of(pk)
            try:
                client.head_object(Bucket=u.netloc, Key=unquote(u.path.lstrip("/")), VersionId=vid)
            except bce.ClientError as e:
                code = str(e.response.get("Error", {}).get("Code", ""))
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if code == "NoSuchBucket":
                    raise PermanentError(f"checking {pk}: the bucket s3://{u.netloc} does not exist") from e
                if code in ("404", "NoSuchKey", "NoSuchVersion", "405", "MethodNotAllowed") or status in (404, 405):
                    gone.append(pk)
                else:
                    raise classify(e)(f"checking s3://{u.netloc}: {describe(e)}") from e
            except bce.BotoCoreError as e:
                raise classify(e)(f"checking s3://{u.netloc}: {describe(e)}") from e
        return gone

    def lifecycle_rules(self) -> list[dict[str, Any]]:
        """The bucket's lifecycle rules ([] when it has none)."""
        with mapped_errors(f"reading the lifecycle configuration of s3://{self.bucket}"):
            try:
                return list(self.s3.get_bucket_lifecycle_configuration(Bucket=self.bucket).get("Rules", []))
            except bce.ClientError as e:
                if e.response.get("Error", {}).get("Code") == "NoSuchLifecycleConfiguration":
                    return []
                raise

    # -- workflows -------------------------------------------------------------
    def workflows(self) -> Any:
        """The bucket's workflows config as it is now (``workflows.Workflows``)."""
        from quiltsync.remote import workflows

        return workflows.read(self.bucket, self.s3)

    def workflow_stamp(self, name: str, *, workflow: str | None, message: str | None,
                       user_meta: dict[str, Any],
                       entries: Callable[[], Iterable[tuple[str, int, dict[str, Any]]]]) -> dict[str, Any] | None:
        """Check a push against the bucket's current workflows config, before any
        upload: the stamp for the manifest header, or WorkflowRefused."""
        from quiltsync.remote import workflows

        return workflows.check(self.workflows(), name=name, choice=workflow, message=message,
                               user_meta=user_meta, entries=entries)

    # -- the push -------------------------------------------------------------
    def push(
        self,
        name: str,
        base: Revision | None,
        uploads: Mapping[str, tuple[Path, int]],
        deletes: Collection[str],
        *,
        message: str | None,
        meta: Mapping[str, Any],
        writer: ManifestWriter,
        reused: Mapping[str, Entry] | None = None,
        changed_sources: Callable[[], list[str]] | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> Published:
        """Publish ``base`` with ``uploads`` (logical key -> (local file, size)) and
        ``reused`` entries set and ``deletes`` removed, as a revision with the package
        metadata ``meta`` (``user_meta``, and ``workflow``: the stamp of
        ``workflow_stamp``) and the commit message ``message``.

        What quilt3's ``Package.push`` does, with quiltsync's own parts
        (docs/design.md, "The push path" and "Uploads"): check that `latest` is still
        ``base`` (PushConflict otherwise); upload the files (transfer.py: one read
        each, quilt3's hash and the checksum the server verifies from the bytes
        sent, the versionId from S3's answer; ``progress`` hears how far it got); after the uploads,
        ``changed_sources()`` names files that changed meanwhile, and if any, nothing
        is published (SourceChanged); check `latest` again; write the manifest
        (built by ``writer`` from the changed entries only), the timestamp pointer and
        `latest`, in that order (a reader never sees a pointer to a manifest that is
        not there).
        """
        self._check_active()
        if base is not None and base.registry != self.identity:
            # Entries carry object versions of the registry they came from: built on a
            # revision of another registry, this one would point at bytes it has not.
            raise PermanentError(f"refusing to push {name} to {self.identity} on a revision read from "
                                 f"{base.registry or 'an unknown registry'}; this is a bug")
        expected = base.top_hash if base is not None else None
        what = f"pushing {name} to {self.url}"
        entries = dict(base.entries) if base is not None else {}
        for lk in deletes:
            entries.pop(lk, None)
        entries.update(reused or {})
        with mapped_errors(what):
            self._check_latest(name, expected)
            keys = list(uploads)
            files = [transfer.Upload(f"{name}/{lk}", *uploads[lk], name=lk) for lk in keys]
            stored = transfer.transfers().upload(self._upload_client, self.identity, self.bucket, files,
                                                 progress) if files else []
            for lk, up, got in zip(keys, files, stored, strict=True):
                entries[lk] = Entry(got.hash, got.size, physical_key_url(self.bucket, up.key, got.version_id), None)
            changed = changed_sources() if changed_sources else []
            if changed:
                raise SourceChanged(changed)
            header = {**meta, "message": message}
            try:
                built = writer.build(header, entries)
            except ManifestError as e:
                raise PermanentError(f"{what}: {e}") from None
            self._check_latest(name, expected)  # again, just before writing: as quilt3 does
            root = ".quilt/named_packages/" + name
            with tempfile.TemporaryFile() as manifest:  # from disk: no joined copy of every line in memory
                md5 = hashlib.md5()
                for part in built.parts:
                    manifest.write(part)
                    md5.update(part)
                manifest.seek(0)
                self.s3.put_object(Bucket=self.bucket, Key=f".quilt/packages/{built.top_hash}", Body=manifest,
                                   ContentMD5=base64.b64encode(md5.digest()).decode())
            pointer = built.top_hash.encode()
            pointer_md5 = base64.b64encode(hashlib.md5(pointer).digest()).decode()
            self.s3.put_object(Bucket=self.bucket, Key=f"{root}/{int(time.time())}", Body=pointer,
                               ContentMD5=pointer_md5)
            self.s3.put_object(Bucket=self.bucket, Key=f"{root}/latest", Body=pointer, ContentMD5=pointer_md5)
        return Published(Revision(built.top_hash, header, entries, self.identity), built.size)

    @staticmethod
    def _upload_client() -> Any:
        return settings.thread_client("upload")

    @staticmethod
    def manifest_writer() -> ManifestWriter:
        """A manifest writer with quilt3's record size limit (QUILT_MANIFEST_MAX_RECORD_SIZE)."""
        return ManifestWriter(manifest_max_record_size())

    def _check_latest(self, name: str, expected: str | None) -> None:
        """PushConflict unless `latest` is ``expected`` (or absent: a first push)."""
        latest = self.latest(name)
        if latest is not None and latest != expected:
            raise PushConflict(f"pushing {name} to {self.url}: package with hash {latest!r} already exists at "
                               f"the destination; expected {expected!r}")

    # -- restore ---------------------------------------------------------------
    def fetch(self, name: str, revision: Revision, dest: Path, *, use_cache: bool = True) -> dict[str, str]:
        """Download every entry of ``revision`` under ``dest`` (keys already validated).

        Like quilt3's install, a pinned entry whose object-path cache entry still
        matches its local file is copied from there instead of downloaded. Returns
        where each logical key came from: "cache" or "s3".
        """
        _quilt3()
        from quilt3 import util
        from quilt3.data_transfer import copy_file_list
        from quilt3.packages import ObjectPathCache
        from quilt3.util import PhysicalKey

        sources: dict[str, str] = {}
        file_list = []
        for lk, e in revision.entries.items():
            src = PhysicalKey.from_url(e.physical_key)
            sources[lk] = "s3"
            if use_cache and util.IS_CACHE_ENABLED and src.version_id:
                cached = ObjectPathCache.get(str(src))
                if cached is not None:
                    src, sources[lk] = PhysicalKey.from_path(cached), "cache"
            file_list.append((src, PhysicalKey.from_path(str(dest / lk)), e.size))
        with mapped_errors(f"downloading {name}@{revision.top_hash[:12]}"):
            copy_file_list(file_list, message="Copying objects")
        return sources

    def remember(self, revision: Revision, dest: Path, keys: list[str]) -> None:
        """Record restored files in quilt3's object-path cache (pinned entries only)."""
        _quilt3()
        from quilt3 import util
        from quilt3.packages import ObjectPathCache
        from quilt3.util import PhysicalKey

        if not util.IS_CACHE_ENABLED:
            return
        for lk in keys:
            pk = PhysicalKey.from_url(revision.entries[lk].physical_key)
            if pk.version_id:
                try:
                    ObjectPathCache.set(str(pk), str(dest / lk))
                except OSError:
                    pass


# -- health-related reads ---------------------------------------------------------------
_VERSIONING_TTL_S = 300.0


def quilt_paths() -> tuple[Path, Path]:
    """(quilt3's cache dir ``.../Quilt/v0``, quilt3's data dir ``.../Quilt``): what
    quilt3.util computes, with the same platformdirs calls (no quilt3 import; a test
    compares them)."""
    from platformdirs import user_cache_dir, user_data_dir

    return Path(user_cache_dir("Quilt", "QuiltData")) / "v0", Path(user_data_dir("Quilt", "QuiltData"))


def manifest_max_record_size() -> int:
    """quilt3's ``MANIFEST_MAX_RECORD_SIZE``: QUILT_MANIFEST_MAX_RECORD_SIZE or 1,000,000
    (read as quilt3.packages reads it, without importing quilt3)."""
    val = os.environ.get("QUILT_MANIFEST_MAX_RECORD_SIZE")
    if not val:
        return 1_000_000
    try:
        size = int(val)
    except ValueError:
        size = 0
    if size <= 0:
        raise PermanentError("QUILT_MANIFEST_MAX_RECORD_SIZE must be a positive integer")
    return size


def _quick_client() -> Any:
    """A client for health checks: explicit short timeouts, few retries (never blocks long)."""
    return settings.thread_client("quick", retries={"mode": "standard", "max_attempts": 2},
                                  connect_timeout=5, read_timeout=10)


def registry_problem(bucket: str) -> tuple[str, str] | None:
    """None if the bucket answers HeadBucket; else (kind, detail), kind one of
    access_denied, no_such_bucket, unreachable, credentials, error."""
    try:
        _quick_client().head_bucket(Bucket=bucket)
        return None
    except bce.ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in ("403", "AccessDenied") or status == 403:
            return "access_denied", (f"access denied to bucket {bucket}: the credentials in use may not "
                                     "read it (check the IAM policy or bucket policy)")
        if code in ("404", "NoSuchBucket") or status == 404:
            return "no_such_bucket", f"bucket {bucket} does not exist (check the registry in the config)"
        return "error", f"bucket {bucket}: {describe(e)}"
    except (bce.NoCredentialsError, bce.PartialCredentialsError) as e:
        return "credentials", describe(e)
    except _TRANSIENT_EXC as e:
        return "unreachable", f"cannot reach the S3 endpoint for bucket {bucket}: {describe(e)}"
    except bce.BotoCoreError as e:
        return "error", f"bucket {bucket}: {describe(e)}"


def bucket_versioning(bucket: str, *, max_age_s: float = _VERSIONING_TTL_S) -> str | None:
    """The bucket's versioning Status ("Enabled", "Suspended", or None: never enabled).

    Cached for ``max_age_s`` (0 forces a fresh read). Raises TransientError /
    PermanentError when it cannot be read.
    """
    now = time.monotonic()
    cache, key = settings.versioning_cache(), (settings.active().identity(bucket), bucket)
    hit = cache.get(key)
    if hit is not None and now - hit[0] < max_age_s:
        return hit[1]
    with mapped_errors(f"reading versioning of bucket {bucket}"):
        status = _quick_client().get_bucket_versioning(Bucket=bucket).get("Status")
    if status == "Enabled":  # anything else is read afresh each time: it may get fixed
        cache[key] = (now, status)
    else:
        cache.pop(key, None)
    return status


def upload_mode(bucket: str, *, fresh: bool = False) -> tuple[str, str | None]:
    """What the server verifies of quiltsync's uploads to ``bucket``: transfer.MODE_SHA256
    (S3's SHA-256 checksums) or transfer.MODE_MD5 (no flexible checksums:
    Content-MD5). Learned from the uploads, or from one small probe
    PUT (then deleted with its version) when ``fresh`` or not known yet; and why
    that probe object could not be deleted, if so. Raises TransientError /
    PermanentError when the probe cannot be written."""
    identity = settings.active().identity(bucket)
    known = transfer.transfers().mode(identity)
    if known is not None and not fresh:
        return known, None
    import uuid

    key = f".quilt/quiltsync-probe/{uuid.uuid4().hex}"
    with mapped_errors(f"uploading a probe object to s3://{bucket}"):
        return transfer.transfers().probe(_quick_client(), identity, bucket, key)


def unpinned_keys(entries: Mapping[str, Entry]) -> list[str]:
    """Logical keys whose physical key carries no usable versionId."""
    out = []
    for lk, e in entries.items():
        vid = version_id_of(e.physical_key)
        if not vid or vid == "null":
            out.append(lk)
    return sorted(out)


def version_id_of(physical_key: str) -> str | None:
    """The versionId of an ``s3://bucket/key?versionId=...`` URL, as quilt3's
    ``PhysicalKey.from_url`` reads it (about 20x faster than building one)."""
    _url, sep, query = physical_key.partition("?")
    if not sep or not physical_key.startswith("s3://"):
        return None
    from urllib.parse import unquote_plus

    for part in query.split("&"):
        if part.startswith("versionId="):
            return unquote_plus(part[len("versionId="):]) or None
    return None


def manifest_parser() -> Callable[[bytes], tuple[str, list[str]]]:
    """quilt3's reading of a manifest's bytes: (top_hash, physical key URLs). Imports
    quilt3 here (an import error is raised here, not taken for a corrupt manifest)."""
    quilt3 = _quilt3()

    def parse(data: bytes) -> tuple[str, list[str]]:
        pkg = quilt3.Package.load(io.BytesIO(data))
        return pkg.top_hash, [str(e.physical_key) for _lk, e in pkg.walk()]
    return parse


def quilt_credentials_file() -> Path | None:
    """quilt3's saved credentials (from quilt3.login), which override the AWS chain."""
    path = quilt_paths()[1] / "credentials.json"
    return path if path.exists() else None

"""quiltsync's own upload path: one read per file, checksums the server verifies.

quilt3 8.0 uploads by asking S3 to compute SHA-256 checksums and reads
``ChecksumSHA256`` from every answer; a server without S3's flexible checksums
(Ceph RGW before 19, other S3-compatible stores) makes it raise ``KeyError``. And
over plain http botocore reads a file three times (its request checksum, the
SigV4 payload hash, the send). This module uploads instead (docs/design.md,
"Uploads"):

- each file, or each part of a large one, is read once into a buffer; quilt3's
  ``sha2-256-chunked`` hash (core/quilthash.py) is computed from that buffer, the
  bytes that are sent, so an entry's hash is always of the bytes S3 stored;
- every PUT and part carries a checksum the server verifies: ``ChecksumSHA256``
  where the server answers with it (S3's flexible checksums), ``Content-MD5``
  (which every S3 implementation checks) where it does not, both until the
  first answer tells; nothing depends on the field;
- parts use quilt3's part sizes (8 MiB, doubled past 10,000 parts), so the
  hash equals S3's composite checksum and what quilt3 computes for the bytes;
- the version id comes from S3's answer (PutObject, CompleteMultipartUpload);
- ``Transfers`` is process-wide: ``upload_concurrency`` requests in flight for
  all folders together, and one bandwidth cap (``max_upload_bytes_per_second``)
  applied while bytes are sent (not while botocore hashes them for signing).

A file that is shorter than recorded when read raises SourceChanged (the push
aborts and the file goes up from a still copy next round); the caller's stat
check catches a file that changed during its upload, as before.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from quiltsync.core import quilthash
from quiltsync.core.types import HashValue
from quiltsync.errors import SourceChanged, TransientError

DEFAULT_CONCURRENCY = 10
BUFFER_BYTES = 128 * 1024 * 1024  # part buffers held at once, all uploads together
BURST_SECONDS = 0.05  # credit a capped upload may build up while idle
PROBE_TTL_S = 24 * 3600.0

MODE_SHA256 = "sha256"  # the server verifies Content-MD5 and ChecksumSHA256
MODE_MD5 = "md5"  # no S3 flexible checksums: the server verifies Content-MD5


@dataclass(frozen=True, slots=True)
class Upload:
    """One file to upload: its object key, where it is, the size it was recorded at,
    and its name in errors (the logical key; SourceChanged names it)."""

    key: str  # the object key in the bucket
    path: Path
    size: int
    name: str = ""


@dataclass(frozen=True, slots=True)
class Stored:
    """What S3 stored for an ``Upload``: its version and quilt3's hash of its bytes."""

    version_id: str | None
    hash: HashValue
    size: int


@dataclass(frozen=True, slots=True)
class Progress:
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int


class Bandwidth:
    """A shared upload rate cap (bytes/s; 0 = none): each caller waits its turn, so
    all uploads together stay at the rate. The clock and sleep are passed in."""

    def __init__(self, rate: float = 0.0, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = float(rate)
        self.clock = clock
        self.sleep = sleep
        self._lock = threading.Lock()
        self._next = 0.0  # when the link is free again, at the capped rate

    def set_rate(self, rate: float) -> None:
        with self._lock:
            self.rate = float(rate)

    def delay(self, n: int) -> float:
        """Book ``n`` bytes; how long the caller must wait before sending them."""
        with self._lock:
            if self.rate <= 0:
                return 0.0
            now = self.clock()
            start = max(self._next, now - BURST_SECONDS)
            self._next = start + n / self.rate
            return max(0.0, start - now)

    def take(self, n: int) -> None:
        wait = self.delay(n)
        if wait > 0:
            self.sleep(wait)


class _Body:
    """A request body over a buffer: botocore may read it to sign it (``sending``
    False, set by the client hooks around signing), then reads it to send it, when
    the bandwidth cap and the progress count apply. Seekable, so retries resend it.
    While capped, reads are short (1/20 s of the rate): every connection gets its
    turn often, however many share the cap (a body idle for ~20 s times S3 out)."""

    def __init__(self, data: bytes | memoryview, limit: Bandwidth, sent: Callable[[int], None]) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._high = 0  # bytes counted as sent (a retry resends without counting again)
        self._limit = limit
        self._sent = sent
        self.sending = True

    def __len__(self) -> int:
        return len(self._data)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = len(self._data)
        rate = self._limit.rate
        if self.sending and rate > 0:
            n = min(n, max(4096, int(rate / 20)))
        end = min(len(self._data), self._pos + n)
        chunk = self._data[self._pos:end]
        if self.sending and chunk:
            self._limit.take(len(chunk))
            if end > self._high:
                self._sent(end - self._high)
                self._high = end
        self._pos = end
        return bytes(chunk)

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._data)}[whence]
        self._pos = max(0, min(len(self._data), base + pos))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


class _Budget:
    """Bytes of part buffers held at once, all uploads together; one part is always
    allowed when none is held (a part larger than the budget still goes up)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, n: int) -> Iterator[None]:
        with self._cond:
            while self.held and self.held + n > self.limit:
                self._cond.wait()
            self.held += n
        try:
            yield
        finally:
            with self._cond:
                self.held -= n
                self._cond.notify_all()


def _signing(request: Any, **_kw: Any) -> None:
    if isinstance(request.body, _Body):
        request.body.sending = False


def _signed(request: Any, **_kw: Any) -> None:
    if isinstance(request.body, _Body):
        request.body.sending = True


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


class _Tally:
    """Progress of one ``upload`` call, reported to its callback (any thread; in
    order, under the lock; a failing callback never fails an upload)."""

    def __init__(self, total_bytes: int, total_files: int, report: Callable[[Progress], None] | None) -> None:
        self._lock = threading.Lock()
        self.bytes = 0
        self.files = 0
        self.total = (total_bytes, total_files)
        self._report = report

    def sent(self, n: int) -> None:
        with self._lock:
            self.bytes += n
            self._tell()

    def finished(self) -> None:
        with self._lock:
            self.files += 1
            self._tell()

    def _tell(self) -> None:
        if self._report is not None:
            try:
                self._report(Progress(self.bytes, self.total[0], self.files, self.total[1]))
            except Exception:  # a progress bar or a log line must not fail an upload
                self._report = None


class Transfers:
    """The process's uploads: a pool of ``concurrency`` request threads and one
    bandwidth cap, shared by every folder; and what each server was found to
    verify (S3's SHA-256 checksums, or Content-MD5 only)."""

    def __init__(self, concurrency: int = DEFAULT_CONCURRENCY, max_bytes_per_second: float = 0.0) -> None:
        self._lock = threading.Lock()
        self.concurrency = max(1, concurrency)
        self.bandwidth = Bandwidth(max_bytes_per_second)
        self._pool: ThreadPoolExecutor | None = None
        self.buffers = _Budget(BUFFER_BYTES)
        self._modes: dict[str, tuple[float, str]] = {}  # endpoint identity -> (when, mode)

    def configure(self, concurrency: int, max_bytes_per_second: float) -> None:
        """New limits (a reload): tasks already handed to the old pool finish there;
        uploads in flight hand their next tasks to the new one."""
        with self._lock:
            if max(1, concurrency) != self.concurrency and self._pool is not None:
                self._pool.shutdown(wait=False)
                self._pool = None
            self.concurrency = max(1, concurrency)
        self.bandwidth.set_rate(max_bytes_per_second)

    def _submit(self, fn: Callable[[], Any]) -> Future[Any]:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="upload")
            return self._pool.submit(fn)

    # -- what the server verifies ---------------------------------------------
    def mode(self, identity: str) -> str | None:
        hit = self._modes.get(identity)
        return hit[1] if hit is not None and time.monotonic() - hit[0] < PROBE_TTL_S else None

    def learn(self, identity: str, answer: dict[str, Any]) -> str:
        """What an answer to a request that sent ChecksumSHA256 says of the server
        (PutObject answers teach either mode; UploadPart answers only SHA-256)."""
        mode = MODE_SHA256 if answer.get("ChecksumSHA256") else MODE_MD5
        self._modes[identity] = (time.monotonic(), mode)
        return mode

    def probe(self, client: Any, identity: str, bucket: str, key: str) -> tuple[str, str | None]:
        """Which checksums the server verifies, from one small PUT (with both), and
        why the probe object could not be deleted again (by version: nothing is left
        in a versioned bucket), if it could not."""
        data = b"quiltsync upload probe\n"
        answer = client.put_object(Bucket=bucket, Key=key, Body=data, **_checksums(data, None))
        mode = self.learn(identity, answer)
        vid = answer.get("VersionId")
        try:
            client.delete_object(Bucket=bucket, Key=key, **({"VersionId": vid} if vid else {}))
        except Exception as e:  # credentials that may write but not delete versions: the upload still works
            return mode, f"{type(e).__name__}: {e}".splitlines()[0]
        return mode, None

    # -- uploads --------------------------------------------------------------
    def client(self, make: Callable[[], Any]) -> Any:
        """The upload client from ``make``, with the hooks that tell signing from sending
        (registered once per client: botocore keeps one handler per unique_id)."""
        c = make()
        events = c.meta.events
        events.register_first("request-created.s3", _signing, unique_id="quiltsync-signing")
        events.register_last("request-created.s3", _signed, unique_id="quiltsync-signed")
        return c

    def upload(self, make_client: Callable[[], Any], identity: str, bucket: str, files: Sequence[Upload],
               progress: Callable[[Progress], None] | None = None) -> list[Stored]:
        """Upload ``files``; what S3 stored for each, in order.

        Tasks (a single PUT, or one part of a multipart upload) go to the shared
        pool at most 2 x concurrency at a time per call (two folders' uploads
        interleave; a multipart upload is created when its first part is due, and
        completed by this thread when its last part is done). The first failure
        stops it: tasks not started are cancelled, running ones end, multipart
        uploads are aborted, and the error is raised (SourceChanged names every
        file found changed)."""
        tally = _Tally(sum(f.size for f in files), len(files), progress)
        jobs = [_Job(self, make_client, identity, bucket, f, tally) for f in files]
        feed = ((job, task) for job in jobs for task in job.tasks())
        running: dict[Future[Any], tuple[_Job, int]] = {}
        try:
            more = True
            while True:
                while more and len(running) < 2 * self.concurrency:
                    item = next(feed, None)
                    if item is None:
                        more = False
                        break
                    job, (tag, fn) = item
                    running[self._submit(fn)] = (job, tag)
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    job, tag = running.pop(fut)
                    job.collect(tag, fut.result())
        except BaseException as e:
            for fut in running:
                fut.cancel()
            wait([f for f in running if not f.cancelled()])
            for job in jobs:
                job.abort()
            changed = sorted({job.f.name for job in jobs if job.changed})
            if changed:
                raise SourceChanged(changed) from None
            if isinstance(e, RuntimeError):  # the pool refused (interpreter shutdown): try again later
                raise TransientError(f"uploading to s3://{bucket}: {e}") from e
            raise
        return [job.stored for job in jobs if job.stored is not None]


def _checksums(data: bytes | memoryview, mode: str | None, sha256: bytes | None = None) -> dict[str, str]:
    """What the server will verify: ChecksumSHA256 where it checks SHA-256 (Content-MD5
    would only cost another pass, 1.4 s of CPU a GiB), Content-MD5 where it does not,
    both while that is not known yet."""
    out = {}
    if mode != MODE_SHA256:
        out["ContentMD5"] = _b64(hashlib.md5(data).digest())
    if mode != MODE_MD5:  # with the algorithm named, as SDKs send it (some servers echo only then)
        out["ChecksumAlgorithm"] = "SHA256"
        out["ChecksumSHA256"] = _b64(sha256 if sha256 is not None else hashlib.sha256(data).digest())
    return out


def _read_exactly(path: Path, offset: int, n: int) -> bytes | None:
    """``n`` bytes of ``path`` at ``offset``, or None if the file is shorter now (or gone)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        chunks, got = [], 0
        while got < n:
            block = os.pread(fd, n - got, offset + got)  # a share may answer short
            if not block:
                return None
            chunks.append(block)
            got += len(block)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


class _Job:
    """One file's upload: a single PUT, or a multipart upload of quilt3's parts."""

    def __init__(self, owner: Transfers, make_client: Callable[[], Any], identity: str, bucket: str,
                 f: Upload, tally: _Tally) -> None:
        self.owner, self.make_client, self.identity, self.bucket, self.f, self.tally = \
            owner, make_client, identity, bucket, f, tally
        self.psize = quilthash.part_size(f.size)
        self.multipart = f.size > quilthash.PART_SIZE
        self.parts: dict[int, tuple[dict[str, Any], bytes]] = {}
        self.upload_id: str | None = None
        self.mode: str | None = None
        self.changed = False
        self.stored: Stored | None = None

    def _client(self) -> Any:
        return self.owner.client(self.make_client)

    def _source_changed(self) -> SourceChanged:
        self.changed = True
        return SourceChanged([self.f.name])

    def tasks(self) -> Iterator[tuple[int, Callable[[], Any]]]:
        """(tag, task) for the pool, made when due: the multipart upload is created
        (in the caller's thread) just before its first part is handed out."""
        if not self.multipart:
            yield 0, self._put
            return
        if not self.f.path.exists():
            raise self._source_changed()
        self.mode = self.owner.mode(self.identity)
        extra = {"ChecksumAlgorithm": "SHA256"} if self.mode != MODE_MD5 else {}
        self.upload_id = self._client().create_multipart_upload(Bucket=self.bucket, Key=self.f.key,
                                                                **extra)["UploadId"]
        for number, offset in enumerate(range(0, self.f.size, self.psize), start=1):
            yield number, partial(self._part, number, offset)

    def collect(self, tag: int, result: Any) -> None:
        """A finished task's result (in the caller's thread); the last part completes the upload."""
        if not self.multipart:
            self.stored = result
            self.tally.finished()
            return
        self.parts[tag] = result
        if len(self.parts) < math.ceil(self.f.size / self.psize):
            return
        try:
            grown = os.stat(self.f.path).st_size != self.f.size
        except FileNotFoundError:
            grown = True
        if grown:
            raise self._source_changed()
        ordered = [self.parts[n] for n in sorted(self.parts)]
        answer = self._client().complete_multipart_upload(
            Bucket=self.bucket, Key=self.f.key, UploadId=self.upload_id,
            MultipartUpload={"Parts": [p for p, _d in ordered]})
        self.upload_id = None
        self.stored = Stored(answer.get("VersionId"), quilthash.chunked([d for _p, d in ordered]), self.f.size)
        self.tally.finished()

    def _put(self) -> Stored:
        f = self.f
        mode = self.owner.mode(self.identity)
        with self.owner.buffers.hold(f.size):
            data = _read_exactly(f.path, 0, f.size)
            if data is None or _read_exactly(f.path, f.size, 1) is not None:  # shorter, or longer: being written
                raise self._source_changed()
            digest = hashlib.sha256(data).digest()
            sums = _checksums(data, mode, digest)
            body = _Body(data, self.owner.bandwidth, self.tally.sent)
            answer = self._client().put_object(Bucket=self.bucket, Key=f.key, Body=body, **sums)
        if "ChecksumSHA256" in sums:
            self.owner.learn(self.identity, answer)
        return Stored(answer.get("VersionId"), quilthash.chunked([] if f.size == 0 else [digest]), f.size)

    def _part(self, number: int, offset: int) -> tuple[dict[str, Any], bytes]:
        n = min(self.psize, self.f.size - offset)
        with self.owner.buffers.hold(n):
            data = _read_exactly(self.f.path, offset, n)
            if data is None:
                raise self._source_changed()
            digest = hashlib.sha256(data).digest()
            # Parts of an upload created with ChecksumAlgorithm must all carry the SHA-256
            # (S3 requires it); Content-MD5 too, until an answer shows the server checks SHA-256.
            known = self.owner.mode(self.identity) == MODE_SHA256 and self.mode != MODE_MD5
            sums = _checksums(data, MODE_SHA256 if known else self.mode, digest)
            body = _Body(data, self.owner.bandwidth, self.tally.sent)
            answer = self._client().upload_part(Bucket=self.bucket, Key=self.f.key, UploadId=self.upload_id,
                                                PartNumber=number, Body=body, **sums)
        if "ChecksumSHA256" in sums and answer.get("ChecksumSHA256"):
            self.owner.learn(self.identity, answer)  # positive evidence only: parts of others may lack it
        part = {"ETag": answer["ETag"], "PartNumber": number}
        if "ChecksumSHA256" in sums:
            part["ChecksumSHA256"] = sums["ChecksumSHA256"]
        return part, digest

    def abort(self) -> None:
        """Abort a multipart upload this job created and did not complete."""
        if self.upload_id is not None:
            try:
                self._client().abort_multipart_upload(Bucket=self.bucket, Key=self.f.key, UploadId=self.upload_id)
            except Exception:  # best effort; prune removes what an abort leaves
                pass
            self.upload_id = None


_transfers = Transfers()


def transfers() -> Transfers:
    """The process's one ``Transfers``."""
    return _transfers


def apply(s3: Any) -> None:
    """The config's ``[s3]`` limits (``config.S3Config``), at start and at a reload."""
    _transfers.configure(s3.upload_concurrency, s3.max_upload_bytes_per_second)


def reset() -> None:
    """Default limits and nothing learned about servers (tests)."""
    global _transfers
    old, _transfers = _transfers, Transfers()
    if old._pool is not None:
        old._pool.shutdown(wait=False)


"""An embedded S3 server on 127.0.0.1 for the demo, the tests and the benchmarks.

It is moto 5.2.5's server (in memory, versioning and multipart work) with one
response fix from FACTS.md: moto's CompleteMultipartUpload and UploadPartCopy
responses lack ``ChecksumSHA256``, and quilt3 reads that field for every file of
8 MiB or more and for S3-to-S3 copies. The fix adds the field from moto's own
state (the composite checksum moto already computed, or the SHA-256 of the part).
A second fix lets its URL rules match keys with newlines, which S3 allows.

Every request the server answers is recorded (method, path, query), so tests and
benchmarks can count what a push really cost.

Needs the ``local`` extra (``pip install quiltsync[local]``).
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

_PATCHED = False
_PATCH_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: str
    sent: int = 0  # request body bytes (Content-Length)
    received: int = 0  # response body bytes (Content-Length; 0 for HEAD)

    @property
    def is_quilt_metadata(self) -> bool:
        return "/.quilt/" in self.path

    def __str__(self) -> str:
        return f"{self.method} {self.path}{'?' + self.query if self.query else ''}"


def _inject(body: bytes | str, closing_tag: str, element: str) -> bytes | str:
    if isinstance(body, bytes):
        return body.replace(closing_tag.encode(), (element + closing_tag).encode(), 1)
    return body.replace(closing_tag, element + closing_tag, 1)


def _patch_moto() -> None:
    """Add ChecksumSHA256 where moto 5.2.5 leaves it out, and keep its version listing
    from copying every object's bytes (idempotent)."""
    global _PATCHED
    with _PATCH_LOCK:
        if _PATCHED:
            return
        from moto.s3.responses import S3Response

        orig_post = S3Response._key_response_post
        orig_copy = S3Response.upload_part_copy

        def _key_response_post(self: Any, request: Any, body: bytes, bucket_name: str,
                               query: dict[str, Any], key_name: str) -> Any:
            status, headers, resp = orig_post(self, request, body, bucket_name, query, key_name)
            if query.get("uploadId") and status == 200 and b"CompleteMultipartUploadResult" in _b(resp):
                key = self.backend.get_object(bucket_name, key_name)
                if key is not None and key.checksum_value and (key.checksum_algorithm or "").upper() == "SHA256":
                    value = f"{key.checksum_value}-{key.checksum_parts}"
                    resp = _inject(resp, "</CompleteMultipartUploadResult>",
                                   f"<ChecksumSHA256>{value}</ChecksumSHA256>")
                    headers["content-length"] = str(len(_b(resp)))
            return status, headers, resp

        def upload_part_copy(self: Any) -> Any:
            status, headers, resp = orig_copy(self)
            if status == 200:
                upload_id = self._get_param("uploadId")
                part_number = self._get_int_param("partNumber")
                bucket = self.backend.get_bucket(self.bucket_name)
                part = bucket.multiparts[upload_id].parts[part_number]
                digest = base64.b64encode(hashlib.sha256(part.value).digest()).decode()
                resp = _inject(resp, "</CopyPartResult>", f"<ChecksumSHA256>{digest}</ChecksumSHA256>")
                headers["content-length"] = str(len(_b(resp)))
            return status, headers, resp

        S3Response._key_response_post = _key_response_post  # type: ignore[method-assign]
        S3Response.upload_part_copy = upload_part_copy  # type: ignore[method-assign]

        # S3 keys may contain newlines; moto's URL rules use `.`, which does not
        # match one, so such a PUT would 404. Let `.` match every character.
        from moto.moto_server import utilities

        orig_init = utilities.RegexConverter.__init__

        def converter_init(self: Any, url_map: Any, *items: Any) -> None:
            orig_init(self, url_map, *items)
            self.regex = "(?s:" + self.regex + ")"

        utilities.RegexConverter.__init__ = converter_init  # type: ignore[method-assign]

        # list_object_versions deep-copies every object version of the bucket, bytes
        # included (FakeKey.__getstate__ reads the value), for each page, only to set
        # is_latest on the copies: listing the versions of a bucket holding 500 MB of
        # manifests took 24 GB. Its only deepcopy becomes a copy of the attributes.
        import copy as _copy
        import types

        from moto.s3 import models

        listed: dict[type, type] = {}

        def _attribute_copies(versions: Any, memo: Any = None) -> Any:
            out = []
            for v in versions:
                cls = type(v)
                if cls not in listed:  # a copy shares the value's buffer: it must never close it
                    listed[cls] = type(f"Listed{cls.__name__}", (cls,),
                                       {"dispose": lambda self, *a, **k: None, "__del__": lambda self: None})
                c: Any = object.__new__(listed[cls])
                c.__dict__.update(v.__dict__)
                out.append(c)
            return out

        models.copy = types.SimpleNamespace(copy=_copy.copy, deepcopy=_attribute_copies)  # type: ignore[assignment]
        _PATCHED = True


def _b(x: bytes | str) -> bytes:
    return x if isinstance(x, bytes) else x.encode()


class _Recorder:
    """WSGI middleware: records each request, and may answer some with a fault."""

    def __init__(self, app: Callable[..., Any], *, checksums: bool = True) -> None:
        self.app = app if checksums else _WithoutChecksums(app)
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.fault: Callable[[Request], tuple[Any, Any] | None] | None = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        req = Request(environ["REQUEST_METHOD"], unquote(environ.get("PATH_INFO", "")),
                      environ.get("QUERY_STRING", ""), int(environ.get("CONTENT_LENGTH") or 0))
        fault = self.fault(req) if self.fault else None
        if fault is None:
            return self._answered(req, environ, start_response)
        self._record(req)
        if fault is not None and fault[0] == "truncate":
            return self._truncated(environ, start_response, int(fault[1]))
        if fault is not None:
            code, text = fault
            body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{text}</Code>"
                    f"<Message>{text}</Message></Error>").encode()
            start_response(f"{code} {text}", [("Content-Type", "application/xml"),
                                              ("Content-Length", str(len(body)))])
            return [body]
        return self.app(environ, start_response)

    def _record(self, req: Request) -> None:
        if not req.path.startswith("/moto-api"):
            with self.lock:
                self.requests.append(req)

    def _answered(self, req: Request, environ: dict[str, Any], start_response: Callable[..., Any]
                  ) -> Iterable[bytes]:
        """Pass the request on, and record it with the size of its answer."""
        size = [0]

        def sized(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            size[0] = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
            return start_response(status, headers, *exc)

        body = self.app(environ, sized)
        received = 0 if req.method == "HEAD" else size[0]
        self._record(Request(req.method, req.path, req.query, req.sent, received))
        return body

    def _truncated(self, environ: dict[str, Any], start_response: Callable[..., Any], keep: int
                   ) -> Iterable[bytes]:
        """The real response's headers (its Content-Length too), then only ``keep`` bytes."""
        body = b"".join(self.app(environ, start_response))
        return [body[:keep]]


class _WithoutChecksums:
    """WSGI middleware: an S3 server without flexible checksums, like Ceph RGW before 19
    (FACTS.md): checksum request headers are ignored, and no answer carries a checksum
    (no ``x-amz-checksum-*`` header, no ``<Checksum...>`` element)."""

    _ELEMENT = re.compile(rb"<Checksum[A-Za-z0-9]*>[^<]*</Checksum[A-Za-z0-9]*>")

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        for k in [k for k in environ if k.startswith(("HTTP_X_AMZ_CHECKSUM", "HTTP_X_AMZ_SDK_CHECKSUM"))]:
            del environ[k]
        got: list[Any] = []

        def capture(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            got[:] = [status, [(k, v) for k, v in headers if not k.lower().startswith("x-amz-checksum")], exc]
            return lambda _data: None  # no write() callable use in moto

        body = b"".join(_b(x) for x in self.app(environ, capture))
        status, headers, exc = got
        if environ["REQUEST_METHOD"] in ("POST", "PUT"):  # small XML answers
            body = self._ELEMENT.sub(b"", body)
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        start_response(status, headers, *exc)
        return [body]


class LocalS3:
    """moto's S3 server on 127.0.0.1 at a free port, in this process.
    ``checksums=False``: a server without S3's flexible checksums (``_WithoutChecksums``).

    >>> with LocalS3() as s3:
    ...     s3.create_bucket("demo", versioning=True)
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, checksums: bool = True) -> None:
        self.host = host
        self.port = port
        self.checksums = checksums
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._recorder: _Recorder | None = None

    def start(self) -> LocalS3:
        import logging

        from moto.moto_server.threaded_moto_server import MotoRequestHandler
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        _patch_moto()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        app = DomainDispatcherApplication(create_backend_app)
        self._recorder = _Recorder(app, checksums=self.checksums)
        self._server = make_server(self.host, self.port, self._recorder, threaded=True,
                                   request_handler=MotoRequestHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-s3", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- requests seen -------------------------------------------------------
    @property
    def requests(self) -> list[Request]:
        assert self._recorder is not None
        with self._recorder.lock:
            return list(self._recorder.requests)

    def reset_requests(self) -> None:
        assert self._recorder is not None
        with self._recorder.lock:
            self._recorder.requests.clear()

    def set_fault(self, fault: Callable[[Request], tuple[Any, Any] | None] | None) -> None:
        """Answer requests for which ``fault(req)`` returns (status, code) with that error,
        or ("truncate", n) with the real response cut after n body bytes."""
        assert self._recorder is not None
        self._recorder.fault = fault

    # -- helpers -------------------------------------------------------------
    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def create_bucket(self, name: str, *, versioning: bool | str = True) -> None:
        """Create a bucket; versioning True/"Enabled", "Suspended", or False (never enabled)."""
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", name):
            raise ValueError(f"bad bucket name {name!r}")
        c = self.client()
        c.create_bucket(Bucket=name)
        status = "Enabled" if versioning is True else versioning
        if status:
            c.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": status})

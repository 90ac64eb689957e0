"""Process-global S3 and quilt3 set-up, in one place, with a reset for tests.

Everything process-wide that the registry boundary needs lives here:

- the environment quilt3 reads at import time (FACTS.md): usage metrics off
  before ``import quilt3`` (no telemetry host is contacted), ``QUILT_MINIMIZE_STDOUT``
  exactly ``true`` (no tqdm bars), botocore's standard retry mode;
- quilt3's ``print()``s shadowed in quilt3's own modules (not by swapping
  ``sys.stdout``, which is process-wide and not thread-safe);
- the *active* ``S3Settings`` (endpoint, region): passed explicitly to every
  boto3 client, ours and quilt3's (through quilt3's build-client hook), never
  through ``os.environ``;
- the client caches, keyed by the settings they were built for, so a reload
  to another endpoint can never reuse a client of the old one.

``activate(settings)`` is called once at start (and by a reload, while no push is
in flight); ``reset()`` puts everything back, for tests.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_ATTEMPTS = 10
DEFAULT_REGION = "us-east-1"
CLIENT_TTL_S = 900.0
# Folders the daemon pushes at once (service/pushes.py sizes its pool with it); client pools follow.
PARALLEL_PUSHES = 4


@dataclass(frozen=True, slots=True)
class S3Settings:
    """Where S3 is: the endpoint (None: AWS) and the region."""

    endpoint_url: str | None = None
    region: str | None = None

    @property
    def region_name(self) -> str:
        return self.region or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION

    @classmethod
    def from_config(cls, s3: Any) -> S3Settings:
        """From the config's ``[s3]`` table (``config.S3Config``)."""
        return cls(s3.endpoint_url, s3.region)

    def identity(self, bucket: str) -> str:
        """A registry's identity: the same bucket name on two endpoints is two registries."""
        return f"s3://{bucket}" if self.endpoint_url is None else f"s3://{bucket} at {self.endpoint_url}"

    def client_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"region_name": self.region_name}
        if self.endpoint_url:
            kw["endpoint_url"] = self.endpoint_url
        return kw


@dataclass(slots=True)
class _State:
    active: S3Settings
    quilt3_ready: bool = False
    # (settings, purpose, thread id) -> client
    clients: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    # (settings, signature version) -> (built at, client)
    quilt3_clients: dict[tuple[Any, ...], tuple[float, Any]] = field(default_factory=dict)
    # (registry identity, bucket) -> (read at, versioning status)
    versioning: dict[tuple[str, str], tuple[float, str | None]] = field(default_factory=dict)
    session: Any = None  # the boto3 session every thread_client comes from


_lock = threading.Lock()
_state = _State(S3Settings())


def prepare_environment() -> None:
    """Set what must be set before quilt3 is imported (idempotent)."""
    os.environ["QUILT_DISABLE_USAGE_METRICS"] = "1"
    os.environ["QUILT_MINIMIZE_STDOUT"] = "true"
    os.environ.setdefault("AWS_RETRY_MODE", "standard")
    os.environ.setdefault("AWS_MAX_ATTEMPTS", str(DEFAULT_MAX_ATTEMPTS))


def max_attempts() -> int:
    try:
        return max(1, int(os.environ.get("AWS_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)))
    except ValueError:
        return DEFAULT_MAX_ATTEMPTS


def activate(settings: S3Settings) -> None:
    """Make ``settings`` the process's S3; clients of other settings are dropped."""
    with _lock:
        if settings != _state.active:
            _state.active = settings
            _clear_caches()


def active() -> S3Settings:
    return _state.active


def reset() -> None:
    """Back to the default settings with empty caches (tests)."""
    with _lock:
        _state.active = S3Settings()
        _clear_caches()


def _clear_caches() -> None:
    _state.clients = {}
    _state.quilt3_clients = {}
    _state.versioning = {}
    _state.session = None  # credentials are resolved afresh after a reload


def import_quilt3() -> None:
    """Import quilt3 with its environment set, silence its prints, install the client hook."""
    if _state.quilt3_ready:
        return
    prepare_environment()
    import quilt3.hooks

    _silence_quilt3_prints()
    quilt3.hooks.set_build_s3_client_hook(_build_quilt3_client)
    _state.quilt3_ready = True


def client_config(**overrides: Any) -> Any:
    """botocore's standard retries, explicit timeouts, a pool as large as quilt3's transfers.

    quilt3 runs QUILT_TRANSFER_MAX_CONCURRENCY (default 10) transfer threads per push, and
    all of them, in every folder the daemon pushes at once (its push pool), share the one
    client ``_build_quilt3_client`` caches: a smaller pool logs urllib3's "Connection pool
    is full, discarding connection" and reconnects for every request beyond it.
    """
    import botocore.config

    transfer = sys.modules.get("quilt3.data_transfer")
    per_push = getattr(transfer, "MAX_CONCURRENCY", None) or 10
    base: dict[str, Any] = {
        "retries": {"mode": "standard", "max_attempts": max_attempts()},
        "connect_timeout": 10,
        "read_timeout": 60,
        "max_pool_connections": PARALLEL_PUSHES * per_push + 10,
        # No checksum botocore computes by itself (CRC32 in a header or an aws-chunked
        # trailer, which S3 servers without flexible checksums reject): quiltsync sends
        # the checksum the server verifies, computed from the bytes it sends (transfer.py).
        "request_checksum_calculation": "when_required",
    }
    return botocore.config.Config(**{**base, **overrides})


def thread_client(purpose: str, **config: Any) -> Any:
    """One boto3 S3 client per thread, purpose and active settings (~0.2 s to build)."""
    settings = _state.active
    key = (settings, purpose, threading.get_ident())
    clients = _state.clients
    client = clients.get(key)
    if client is None:
        with _lock:  # a session is not thread-safe; the clients it makes are
            client = _session().client("s3", config=client_config(**config), **settings.client_kwargs())
        clients[key] = client
    return client


def warm_up() -> None:
    """Import boto3 and load the S3 service model into the shared session, at daemon
    start: the start-up reconcile's first request would otherwise pay for it (about
    0.15 s of CPU, once quilt3 no longer imports boto3 at start) in the middle of its
    scan. Best effort: a broken AWS config or profile is reported by the first real
    request (a push.failed, the health checks), as before, not here."""
    try:
        thread_client("s3")
    except Exception:  # botocore resolves the profile and region here: errors surface later
        pass


def quilt3_imported() -> bool:
    """quilt3 finished importing (through import_quilt3)."""
    return _state.quilt3_ready


def _session() -> Any:
    """The boto3 session of every client (with ``_lock`` held): each session loads
    botocore's endpoint and service data (about 10 MB of Python objects) once."""
    import boto3

    if _state.session is None:
        _state.session = boto3.session.Session()
    return _state.session


def versioning_cache() -> dict[tuple[str, str], tuple[float, str | None]]:
    return _state.versioning


def _build_quilt3_client(build: Any, session: Any, client_kwargs: dict[str, Any], **kwargs: Any) -> Any:
    """quilt3 builds a new boto3 client (~0.2 s) for every operation; reuse them for a
    while, with our retry mode, timeouts, pool size and the active endpoint."""
    settings = _state.active
    config = (client_kwargs.get("config") or client_config()).merge(client_config())
    key = (settings, str(getattr(config, "signature_version", None)))
    now = time.monotonic()
    cache = _state.quilt3_clients
    with _lock:
        hit = cache.get(key)
        if hit is not None and now - hit[0] < CLIENT_TTL_S:
            return hit[1]
    from quilt3 import session as quilt3_session

    kwargs_all = {**client_kwargs, **settings.client_kwargs(), "config": config}
    if not quilt3_session._load_credentials():  # no quilt3 login: the standard chain, as our own clients
        with _lock:  # a session is not thread-safe: clients are made from it one at a time
            client = build(_session(), kwargs_all, **kwargs)
    else:
        client = build(session, kwargs_all, **kwargs)
    with _lock:
        cache[key] = (now, client)
    return client


def _silence_quilt3_prints() -> None:
    """quilt3 print()s progress lines to stdout, where our results go: a module-level
    ``print`` shadows the builtin for that module only."""
    for name, mod in list(sys.modules.items()):
        if (name == "quilt3" or name.startswith("quilt3.")) and mod is not None:
            mod.print = _no_print  # type: ignore[attr-defined]


def _no_print(*_args: object, **_kwargs: object) -> None:
    return None

"""The process environment quilt3 and botocore read, set in one place.

quilt3 reads some variables at import time (FACTS.md): usage metrics must be off
before ``import quilt3`` (this machine, and many users', reach no telemetry
host), and ``QUILT_MINIMIZE_STDOUT`` must be exactly ``true`` to silence tqdm.
botocore's standard retry mode retries throttling, 5xx and connection errors
with backoff; quilt3 builds its own clients from the same environment.
"""

from __future__ import annotations

import os
import sys

DEFAULT_MAX_ATTEMPTS = 10


def prepare() -> None:
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


def configure_s3(endpoint_url: str | None, region: str | None) -> None:
    """Point boto3 (ours and quilt3's) at the configured endpoint and region."""
    if endpoint_url:
        os.environ["AWS_ENDPOINT_URL_S3"] = endpoint_url
    if region:
        os.environ["AWS_DEFAULT_REGION"] = region
    else:
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def silence_quilt3_prints() -> None:
    """quilt3 print()s progress lines to stdout, where our results go.

    A module-level ``print`` shadows the builtin for that module only, so this
    silences quilt3 without swapping sys.stdout (which is process-wide and not
    thread-safe).
    """
    for name, mod in list(sys.modules.items()):
        if (name == "quilt3" or name.startswith("quilt3.")) and mod is not None:
            mod.print = _no_print  # type: ignore[attr-defined]


def _no_print(*_args: object, **_kwargs: object) -> None:
    return None

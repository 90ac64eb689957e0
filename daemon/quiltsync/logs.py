"""Logging: structlog events, one JSON object a line on stderr (or a console view on a TTY).

stdlib logging (boto3, botocore, quilt3, watchdog, urllib3) goes through the same
processor chain, so every line on stderr has the same shape. quilt3's print()s and
progress bars never reach stderr: see remote/settings.py.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# Libraries that are chatty at INFO/DEBUG; their warnings still come through.
_NOISY = ("botocore", "boto3", "urllib3", "s3transfer", "quilt3", "watchdog", "werkzeug", "filelock")


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog and stdlib logging for the whole process (call once per process)."""
    stream = stream or sys.stderr
    use_json = json_mode(fmt, stream)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if use_json else _keep,  # type: ignore[list-item]
            renderer,
        ],
    )
    handler = (_JournalHandler if use_json and journal_stream_matches(stream) else logging.StreamHandler)(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(logging.WARNING, _LEVELS[level]))
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def json_mode(fmt: str, stream: TextIO) -> bool:
    """Whether lines on ``stream`` are JSON: log_format json, or auto and not a TTY."""
    if fmt != "auto":
        return fmt == "json"
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):
        return True


def journal_stream_matches(stream: TextIO) -> bool:
    """systemd sets JOURNAL_STREAM=dev:inode of the stream it connected to the journal."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


# syslog priorities: journalctl -p warning keeps <0>..<4>
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Prefixes each line with ``<N>``, its syslog priority, which journald strips and
    records; ``journalctl -o cat`` then shows plain JSON lines for jq."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITY.get(record.levelno, 6)}>" + super().format(record)


def get_logger(name: str = "quiltsync") -> Any:
    return structlog.get_logger(name)


def _keep(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    return event


_SECRET_KEYS = ("secret", "password", "token", "credential", "authorization")


def _drop_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """A context key that names a secret never carries its value into a log line."""
    for key in list(event):
        if any(s in key.lower() for s in _SECRET_KEYS):
            event[key] = "***"
    return event

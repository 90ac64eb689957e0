"""The configuration: one TOML file, validated by pydantic models.

Finding the file (``find_config_path``) is separate from parsing it
(``parse_config``), so tests hand in text and the CLI hands in a path. Every
validation problem becomes one line naming the file, the key path and what is
expected, raised as ``ConfigError`` (exit 78, no traceback).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from quiltsync.core.message import DEFAULT_MESSAGE, template_problem
from quiltsync.errors import ConfigError

PACKAGE_NAME_RE = re.compile(r"[\w-]+/[\w-]+")
# S3 bucket naming rules (3-63 chars, lowercase letters, digits, dots, hyphens).
BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def registry_url(v: str) -> str:
    """``s3://BUCKET`` (a trailing slash dropped), or ValueError naming what is wrong."""
    m = re.fullmatch(r"s3://([^/]+)/?", v)
    if not m or not BUCKET_RE.fullmatch(m.group(1)):
        raise ValueError(f"expected 's3://BUCKET' with a valid bucket name and no path, got {v!r}")
    return f"s3://{m.group(1)}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def default_state_dir() -> Path:
    """Where the index lives when the config does not say.

    systemd's StateDirectory= sets $STATE_DIRECTORY; root uses /var/lib; anyone
    else uses $XDG_STATE_HOME (~/.local/state).
    """
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/quiltsync")
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "quiltsync"


class DaemonConfig(_Strict):
    state_dir: Path = Field(default_factory=default_state_dir)
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    rescan_interval_seconds: Annotated[float, Field(gt=0)] = 3600.0
    health_interval_seconds: Annotated[float, Field(gt=0)] = 300.0
    prune_interval_hours: Annotated[float, Field(gt=0)] = 24.0
    metrics_address: str | None = None

    @field_validator("metrics_address")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if v.isdigit():
            v = f"127.0.0.1:{v}"  # a bare port listens on loopback only
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
            raise ValueError(f"expected 'HOST:PORT' or a port, like '127.0.0.1:9464', got {v!r}")
        return v


class S3Config(_Strict):
    endpoint_url: str | None = None
    region: str | None = None
    # all folders together (remote/transfer.py): requests in flight, and a bandwidth cap (0 = none)
    upload_concurrency: Annotated[int, Field(ge=1, le=256)] = 10
    max_upload_bytes_per_second: Annotated[int, Field(ge=0)] = 0

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_url(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", v):
            raise ValueError(f"expected an http:// or https:// URL, got {v!r}")
        return v


class RetentionConfig(_Strict):
    """[folder.retention]: which revisions `prune` keeps (core/retention.py)."""

    keep_last: Annotated[int, Field(ge=0)] = 0
    keep_hourly: Annotated[int, Field(ge=0)] = 0
    keep_daily: Annotated[int, Field(ge=0)] = 0
    keep_weekly: Annotated[int, Field(ge=0)] = 0
    keep_monthly: Annotated[int, Field(ge=0)] = 0
    keep: list[str] = Field(default_factory=list)
    grace_hours: Annotated[float, Field(ge=0)] = 24.0

    @field_validator("keep")
    @classmethod
    def _top_hashes(cls, v: list[str]) -> list[str]:
        for h in v:
            if not re.fullmatch(r"[0-9a-f]{64}", h):
                raise ValueError(f"expected full top_hashes (64 lowercase hex digits), got {h!r}")
        return v


class FolderConfig(_Strict):
    path: Path
    package: str
    registry: str
    settle_seconds: Annotated[float, Field(ge=0)] = 2.0
    max_delay_seconds: Annotated[float, Field(gt=0)] = 30.0
    ignore: list[str] = Field(default_factory=list)
    allow_unversioned: bool = False
    max_delete_fraction: Annotated[float, Field(gt=0, le=1)] = 0.5
    message: str = DEFAULT_MESSAGE
    # None: the bucket's default workflow (quilt3's); "": no workflow; else a workflow id
    workflow: str | None = None
    # None: keep the package's user_meta as it is; a table: the user_meta of every revision
    metadata: dict[str, Any] | None = None
    # None: nothing is ever pruned
    retention: RetentionConfig | None = None
    # auto: inotify on local filesystems, a stat-only poll on network and FUSE ones
    watch: Literal["auto", "events", "poll"] = "auto"
    # at least twice FUSE's 1 s attribute cache: two polls must never see one cached stat
    poll_seconds: Annotated[float, Field(ge=2)] = 30.0
    # a daily budget of manifest bytes: revisions of huge folders are paced (core/pacing.py); 0 = off
    max_manifest_bytes_per_day: Annotated[int, Field(ge=0)] = 1_000_000_000

    @field_validator("message")
    @classmethod
    def _message_template(cls, v: str) -> str:
        problem = template_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata_is_json(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            _check_json(v, "")
        return v

    @field_validator("package")
    @classmethod
    def _package_name(cls, v: str) -> str:
        # fullmatch, not match: quilt3's own check lets a trailing newline through.
        if not PACKAGE_NAME_RE.fullmatch(v):
            raise ValueError(
                f"expected a quilt package name 'namespace/name' "
                f"(letters, digits, _ or -, exactly one '/'), got {v!r}"
            )
        return v

    @field_validator("registry")
    @classmethod
    def _registry_url(cls, v: str) -> str:
        return registry_url(v)

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, v: Path) -> Path:
        if not v.is_absolute():
            raise ValueError(f"expected an absolute path, got {str(v)!r}")
        return Path(os.path.normpath(v))

    @model_validator(mode="after")
    def _settle_within_delay(self) -> FolderConfig:
        if self.settle_seconds > self.max_delay_seconds:
            raise ValueError(
                f"settle_seconds ({self.settle_seconds:g}) must not exceed "
                f"max_delay_seconds ({self.max_delay_seconds:g})"
            )
        return self

    @property
    def bucket(self) -> str:
        return self.registry[len("s3://") :]


class Config(_Strict):
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    s3: S3Config = Field(default_factory=S3Config)
    folder: list[FolderConfig] = Field(min_length=1)

    def folder_by_package(self, package: str) -> FolderConfig:
        for f in self.folder:
            if f.package == package:
                return f
        known = ", ".join(f.package for f in self.folder)
        raise ConfigError(f"no folder is configured for package {package!r} (configured: {known})")


def find_config_path(cli_value: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """--config, else $QUILTSYNC_CONFIG, else the per-user or system default."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    if cli_value:
        return Path(cli_value)
    if env.get("QUILTSYNC_CONFIG"):
        return Path(env["QUILTSYNC_CONFIG"])
    if os.geteuid() == 0:
        return Path("/etc/quiltsync/config.toml")
    xdg = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "quiltsync" / "config.toml"


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found; pass --config PATH or set QUILTSYNC_CONFIG"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config file: {_reason(e)}") from None
    return parse_config(text, source=str(path), base_dir=path.parent)


def parse_config(text: str, *, source: str, base_dir: Path | None = None) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    if base_dir is not None:
        _resolve_relative_paths(raw, base_dir)
    try:
        config = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError("\n".join(_format_error(source, err) for err in e.errors())) from None
    _check_unique(config, source)
    return config


def _resolve_relative_paths(raw: dict[str, Any], base_dir: Path) -> None:
    """A relative folder path is relative to the config file, as users expect."""
    folders = raw.get("folder")
    if not isinstance(folders, list):
        return
    for f in folders:
        if isinstance(f, dict) and isinstance(f.get("path"), str):
            p = Path(os.path.expanduser(f["path"]))
            f["path"] = str(p if p.is_absolute() else (base_dir / p).absolute())


def _check_unique(config: Config, source: str) -> None:
    seen_paths: dict[Path, int] = {}
    seen_packages: dict[str, int] = {}
    for i, f in enumerate(config.folder):
        if f.path in seen_paths:
            raise ConfigError(
                f"{source}: at 'folder[{i}].path': {str(f.path)!r} is already watched by "
                f"folder[{seen_paths[f.path]}]; each folder may appear once"
            )
        if f.package in seen_packages:
            raise ConfigError(
                f"{source}: at 'folder[{i}].package': {f.package!r} is already used by "
                f"folder[{seen_packages[f.package]}]; each package may have one folder"
            )
        seen_paths[f.path] = i
        seen_packages[f.package] = i


def check_folders_exist(config: Config, source: str) -> None:
    """Commands that push need every folder to be a readable directory."""
    for i, f in enumerate(config.folder):
        if not f.path.is_dir():
            what = "does not exist" if not f.path.exists() else "is not a directory"
            raise ConfigError(
                f"{source}: at 'folder[{i}].path': {str(f.path)!r} {what}; "
                "expected an existing directory"
            )
        if not os.access(f.path, os.R_OK | os.X_OK):
            raise ConfigError(
                f"{source}: at 'folder[{i}].path': {str(f.path)!r} is not readable by this user"
            )


def _format_error(source: str, err: Any) -> str:
    loc = _format_loc(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        what = "unknown key; see config.example.toml for the keys"
    elif kind == "missing":
        what = "required key is missing"
    else:
        msg = err["msg"]
        msg = msg.removeprefix("Value error, ")
        what = msg[0].lower() + msg[1:] if msg else kind
        if kind not in ("value_error", "assertion_error") and "input" in err:
            what += f", got {err['input']!r}"
    where = f"at '{loc}': " if loc else ""
    return f"{source}: {where}{what}"


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _check_json(value: Any, where: str) -> None:
    """Package metadata is stored as JSON: TOML's dates and times are not JSON values."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_json(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_json(v, f"{where}[{i}]")
    elif isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        raise ValueError(f"{where!r} is {value!r}, which is not a JSON number")
    elif not isinstance(value, (str, int, float, bool)):
        raise ValueError(f"{where!r} is a TOML {type(value).__name__}, which package metadata (JSON) "
                         f"cannot hold; quote it as a string, like \"{value}\"")


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e)

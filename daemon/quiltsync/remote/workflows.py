"""A bucket's Quilt workflows: read its config, check a push against it before any upload.

A Quilt bucket may hold ``.quilt/workflows/config.yml``: named workflows, each
with rules for the package name (``handle_pattern``), the commit message
(``is_message_required``), the package metadata (``metadata_schema``) and the
entries (``entries_schema``), plus ``default_workflow`` and
``is_workflow_required`` (true unless the config says otherwise). quilt3 reads it
on every push; so does quiltsync, with its own client (so a network fault is a
transient error, not a "configuration error"), and it checks the push with
quilt3's own validators *before* uploading anything. The result is the
workflow stamp quilt3 writes into the manifest header (id, config and schema
URLs with their versionIds), so the revision looks exactly like one pushed by
hand with quilt3.

Whatever fails is a :class:`WorkflowRefused` naming the workflow, the field and
what the rule wants, in terms of the folder's config keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import botocore.exceptions as bce
import yaml

from quiltsync.errors import WorkflowRefused
from quiltsync.remote import settings
from quiltsync.remote.registry import classify, describe, mapped_errors

CONFIG_KEY = ".quilt/workflows/config.yml"
_MISSING = ("NoSuchKey", "404", "AccessDenied", "403")  # a schema the config names cannot be read

# What the folder's `workflow` key asks for: None the bucket's default, "" none, else an id.
Choice = str | None
# (logical key, size, entry user_meta) of every entry the revision will have.
EntryRow = tuple[str, int, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Workflows:
    """A bucket's workflows config as read at one moment (None: the bucket has none)."""

    bucket: str
    config: dict[str, Any] | None
    version_id: str | None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{CONFIG_KEY}"

    @property
    def ids(self) -> list[str]:
        return sorted((self.config or {}).get("workflows", {}))

    def default(self) -> str | None:
        return (self.config or {}).get("default_workflow")

    def required(self) -> bool:
        return bool((self.config or {}).get("is_workflow_required", True))

    def resolve(self, choice: Choice) -> str | None:
        """The workflow id a push with ``choice`` uses (None: no workflow)."""
        if choice is None:
            return self.default()
        return choice or None

    def describe(self, choice: Choice) -> str:
        """Which workflow a folder with ``choice`` gets, for check and status."""
        if self.config is None:
            return f"no workflows config in s3://{self.bucket}: pushed without a workflow"
        wid = self.resolve(choice)
        if wid is None:
            return "no workflow" + ("" if self.required() else " (the bucket requires none)")
        return f"workflow {wid!r} ({'the bucket default' if choice is None else 'set by `workflow`'})"


def _qwf() -> Any:
    """quilt3's workflows module, imported only for a bucket that has a config."""
    settings.import_quilt3()
    from quilt3 import workflows as qwf

    return qwf


def read(bucket: str, client: Any) -> Workflows:
    """The bucket's workflows config, parsed and validated as quilt3 does."""
    with mapped_errors(f"reading s3://{bucket}/{CONFIG_KEY}"):
        try:
            resp = client.get_object(Bucket=bucket, Key=CONFIG_KEY)
        except bce.ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return Workflows(bucket, None, None)
            raise
        data = resp["Body"].read()
    version = resp.get("VersionId")
    where = f"the workflows config s3://{bucket}/{CONFIG_KEY}"
    qwf = _qwf()
    try:
        config = yaml.safe_load(data.decode())
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise WorkflowRefused(f"{where} is not valid YAML ({str(e).splitlines()[0]}); fix it in the bucket") from None
    try:
        qwf._get_conf_validator()(config)
    except Exception as e:  # jsonschema.ValidationError
        raise WorkflowRefused(f"{where} is not a valid workflows config: {getattr(e, 'message', e)}; "
                              "fix it in the bucket") from None
    version_str = qwf.WorkflowConfig.get_config_data_version_str(config)
    if not qwf.WorkflowConfig.is_supported_config_data_version(qwf.ConfigDataVersion.parse(version_str)):
        raise WorkflowRefused(f"{where} has version {version_str}, newer than quilt3 8.0 supports")
    return Workflows(bucket, config, version)


def check(wf: Workflows, *, name: str, choice: Choice, message: str | None,
          user_meta: dict[str, Any], entries: Callable[[], Iterable[EntryRow]]) -> dict[str, Any] | None:
    """The workflow stamp for the manifest header, or WorkflowRefused naming what fails.

    ``entries`` is called only when the workflow has an entries schema.
    """
    if wf.config is None:
        if choice:
            raise WorkflowRefused(f"workflow = {choice!r} is set, but s3://{wf.bucket} has no workflows config "
                                  f"({CONFIG_KEY}); remove `workflow` or add the config to the bucket")
        return None
    wid = wf.resolve(choice)
    if wid is None and wf.required():
        why = ("`workflow = \"\"` asks for none" if choice == "" else
               "the config names no default_workflow and the folder sets no `workflow`")
        raise WorkflowRefused(f"{wf.url} requires a workflow (is_workflow_required), but {why}; "
                              f"set `workflow` to one of: {', '.join(wf.ids) or '(none defined)'}")
    if wid is not None and wid not in wf.ids:
        raise WorkflowRefused(f"workflow {wid!r} is not defined in {wf.url} (it defines: "
                              f"{', '.join(wf.ids) or 'none'}); set `workflow` to one of those")
    # A fresh WorkflowConfig per check, as quilt3 makes one per push: it records the
    # schemas it loaded, and the stamp lists them.
    qwf = _qwf()
    from quilt3.util import PhysicalKey, QuiltException

    config = qwf.WorkflowConfig(wf.config, PhysicalKey(wf.bucket, CONFIG_KEY, wf.version_id))
    label = f"workflow {wid!r} of {wf.url}" if wid else f"the no-workflow rules of {wf.url}"
    try:
        validator = config.get_workflow_validator(wid)
    except QuiltException as e:
        cause = e.__cause__
        if isinstance(cause, bce.ClientError) and cause.response.get("Error", {}).get("Code") in _MISSING:
            raise WorkflowRefused(f"{label}: {e}: {describe(cause)}") from None
        if isinstance(cause, (bce.ClientError, bce.BotoCoreError)):
            raise classify(cause)(f"{label}: {describe(cause)}") from e  # network, credentials
        raise WorkflowRefused(f"{label}: {e}; fix the workflows config in the bucket") from None
    except (bce.BotoCoreError, OSError) as e:
        raise classify(e)(f"{label}: {describe(e)}") from e
    except Exception as e:  # a bad handle_pattern (re.error), a schema that is not UTF-8, ...
        raise WorkflowRefused(f"{label}: the workflows config or a schema cannot be used "
                              f"({type(e).__name__}: {e}); fix it in the bucket") from None
    if validator.is_message_required and not message:
        raise WorkflowRefused(f"{label} requires a commit message, but the folder's `message` renders "
                              "empty; set `message`")
    pattern = validator.pkg_name_pattern
    if pattern is not None and not pattern.search(name):
        raise WorkflowRefused(f"{label}: the package name {name!r} does not match its handle_pattern "
                              f"{pattern.pattern!r}; push to a package name that does")
    rules = wf.config["workflows"].get(wid, {}) if wid else {}
    _check_schema(label, "metadata", rules.get("metadata_schema"), validator.metadata_validator, user_meta,
                  "set [folder.metadata] of this folder to match")
    if validator.entries_validator is not None:
        rows = sorted(entries())
        listing = [{"logical_key": lk, "size": size, "meta": meta} for lk, size, meta in rows]
        _check_schema(label, "entries", rules.get("entries_schema"), validator.entries_validator, listing,
                      "the folder's files must match it (or be ignored)", keys=[r[0] for r in rows])
    return dict(validator.data_to_store)


def _check_schema(label: str, what: str, schema_id: str | None, validator: Any, instance: Any, fix: str,
                  keys: list[str] | None = None) -> None:
    if validator is None:
        return
    import jsonschema

    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    except Exception as e:  # a schema whose own rules fail (a bad "pattern", say)
        raise WorkflowRefused(f"{label}: schema {schema_id!r} cannot be applied ({type(e).__name__}: {e}); "
                              "fix it in the bucket") from None
    if error is None:
        return
    path = list(error.absolute_path)
    if keys is not None and path and isinstance(path[0], int):
        where = f"entry {keys[path[0]]!r}" + "".join(f".{p}" for p in path[1:])
    else:
        where = ".".join(str(p) for p in path)
    wants = "" if error.validator == "required" else \
        f" (it wants {error.validator} {json.dumps(error.validator_value, default=str)[:200]})"
    at = f" at {where!r}" if where else ""
    raise WorkflowRefused(f"{label}: {what} fails schema {schema_id!r}{at}: {error.message}{wants}; {fix}")


__all__ = ["CONFIG_KEY", "Choice", "EntryRow", "Workflows", "check", "read"]

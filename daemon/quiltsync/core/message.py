"""The commit message of a revision: a template from the config, rendered per push.

Pure: the values (host, counts, the push's time) are passed in. A template names
its values as ``{placeholder}``, with Python's format specs allowed
(``{added:>4}``); ``{{`` and ``}}`` are literal braces. Attribute and index
access (``{host.x}``, ``{package[0]}``) are not placeholders and are refused,
like unknown names, when the config is loaded.
"""

from __future__ import annotations

import datetime as dt
import string
from dataclasses import dataclass

DEFAULT_MESSAGE = "quiltsync@{host}: {added} added, {modified} modified, {deleted} deleted"

PLACEHOLDERS: dict[str, str] = {
    "host": "this machine's host name",
    "package": "the package name, namespace/name",
    "folder": "the watched folder's path",
    "added": "files added in this revision",
    "modified": "files modified in this revision",
    "deleted": "files deleted in this revision",
    "changes": "added + modified + deleted",
    "files": "files in the revision",
    "time": "the push's time, ISO-8601 UTC (2026-11-28T21:31:16Z)",
    "date": "the push's date, UTC (2026-11-28)",
}


@dataclass(frozen=True, slots=True)
class MessageValues:
    host: str
    package: str
    folder: str
    added: int
    modified: int
    deleted: int
    files: int
    when: float  # unix seconds

    def as_dict(self) -> dict[str, object]:
        moment = dt.datetime.fromtimestamp(self.when, dt.UTC)
        return {
            "host": self.host, "package": self.package, "folder": self.folder,
            "added": self.added, "modified": self.modified, "deleted": self.deleted,
            "changes": self.added + self.modified + self.deleted, "files": self.files,
            "time": moment.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "date": moment.date().isoformat(),
        }


_SAMPLE = MessageValues("host", "team/data", "/srv/data", 1, 2, 3, 6, 0.0)


def template_problem(template: str) -> str | None:
    """Why ``template`` cannot be a message template, or None when it can."""
    known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
    try:
        fields = [f for _text, f, _spec, _conv in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        return f"not a valid message template ({e}); write {{{{ and }}}} for literal braces"
    for name in fields:
        if name not in PLACEHOLDERS:
            shown = "{" + name + "}" if name else "{}"
            return f"unknown placeholder {shown} in the message template; known: {known}"
    try:  # also catches placeholders nested in a format spec, like {added:{width}}
        render(template, _SAMPLE)
    except KeyError as e:
        return f"unknown placeholder {{{e.args[0]}}} in the message template; known: {known}"
    except IndexError:
        return f"unknown placeholder {{}} in the message template; known: {known}"
    except Exception as e:
        return f"the message template cannot be rendered: {e}"
    return None


def render(template: str, values: MessageValues) -> str:
    return template.format(**values.as_dict())

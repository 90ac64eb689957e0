"""quiltsync's own exception tree.

Foreign exceptions (botocore, quilt3, OSError from a scan) are mapped into this
tree at one boundary each (``registry.py`` for S3 and quilt3), so the rest of the
code and the CLI only ever see these::

    QuiltsyncError              a message for a person; never shown with a traceback
    +-- UsageError              bad command line                      exit 2
    +-- ConfigError             bad or missing configuration          exit 78
    +-- RemoteError             S3 or quilt3 failed                   exit 1
    |   +-- TransientError      worth retrying (network, 5xx, throttling)
    |   +-- PermanentError      retrying will not help (denied, no bucket)
    +-- PushConflict            another writer moved `latest` meanwhile
    +-- PushRefused             pushing would be unsafe: held until the folder changes
    |   +-- DeletionsHeld       mass deletion, emptied or remounted folder: also held
    |   |                       in the index until `push --allow-deletes` releases it
    |   +-- BucketRefuses       the bucket's settings refuse it: retried with backoff, not held
    |       +-- NotVersioned    the bucket keeps no versions
    |       +-- WorkflowRefused the bucket's Quilt workflow rejects name, message or metadata
    +-- SourceChanged           files changed during their upload: nothing published
    +-- RestoreError            a revision could not be restored or verified
"""

from __future__ import annotations


class QuiltsyncError(Exception):
    """An error whose message is meant for the user; the CLI prints it on one line."""

    exit_code = 1


class UsageError(QuiltsyncError):
    exit_code = 2


class ConfigError(QuiltsyncError):
    exit_code = 78


class RemoteError(QuiltsyncError):
    pass


class TransientError(RemoteError):
    pass


class PermanentError(RemoteError):
    pass


class PushConflict(QuiltsyncError):
    pass


class PushRefused(QuiltsyncError):
    """Pushing would be unsafe; the folder waits for a change (or a release)."""


class DeletionsHeld(PushRefused):
    """Deletions an operator must confirm with `quiltsync push --allow-deletes`."""


class BucketRefuses(PushRefused):
    """The bucket's settings refuse the push: no change in the folder can fix it, a
    change of the bucket or of the config can; retried with backoff, not held."""


class NotVersioned(BucketRefuses):
    """The bucket's versioning is off: a permanent error until someone enables it."""


class WorkflowRefused(BucketRefuses):
    """The bucket's workflows config rejects the package name, message or metadata
    (checked before any upload), or the folder's `workflow` cannot be used there."""


class SourceChanged(QuiltsyncError):
    """Files changed while they were uploaded: the revision was not published."""

    def __init__(self, keys: list[str]) -> None:
        super().__init__(f"{len(keys)} file(s) changed while being uploaded (first: {keys[0]!r})")
        self.keys = keys


class RestoreError(QuiltsyncError):
    pass

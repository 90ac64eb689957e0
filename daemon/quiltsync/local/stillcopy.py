"""Still copies of files that are being written, to upload instead of the files.

A copy counts as still when the file's stat (size, mtime, inode) is the same
before and after copying it, and the copy has the recorded size.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from quiltsync.config import FolderConfig
from quiltsync.core.types import FileStat


class StillCopies:
    """Still copies of files that are being written, taken in the state dir."""

    def __init__(self, folder: FolderConfig, state_dir: Path) -> None:
        base = state_dir / "stillcopies"
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.dir = Path(tempfile.mkdtemp(prefix=folder.package.replace("/", "_") + "-", dir=base))
        self._n = 0

    def take(self, path: Path, attempts: int = 3) -> tuple[FileStat, Path] | None:
        """(the file's stat, a copy) taken while its stat did not move, or None."""
        for _ in range(attempts):
            self._n += 1
            copy = self.dir / str(self._n)
            try:
                before = FileStat.of(os.stat(path))
                shutil.copyfile(path, copy)
                after = FileStat.of(os.stat(path))
            except OSError:
                return None
            if before == after and copy.stat().st_size == before.size:
                return before, copy
            copy.unlink(missing_ok=True)
        return None

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

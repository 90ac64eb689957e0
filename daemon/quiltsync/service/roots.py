"""The folders' roots as the watcher sees them: watched, failed, lost, back.

A root that cannot be watched at start is reported (``watch.failed``) and tried
again at every root check; a root that vanishes or is replaced (another inode)
is reported (``watch.lost``) and unwatched; when it is back it is watched again
and the caller reconciles it. Without a watcher (in-process tests), a root
counts as watched when it is a directory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from quiltsync.config import FolderConfig
from quiltsync.local.scanner import make_ignore_spec

ROOT_CHECK_SECONDS = 5.0  # how often roots are checked for vanishing or coming back


@dataclass(slots=True)
class RootState:
    config: FolderConfig
    watching: bool = False
    problem: str | None = None


class Roots:
    def __init__(self, watcher: Any, log: Any) -> None:
        self.watcher = watcher
        self.log = log

    def watch(self, st: RootState) -> None:
        f = st.config
        if self.watcher is None:
            st.watching = f.path.is_dir()
            return
        from quiltsync.local.watcher import installed_watches

        before = installed_watches()
        try:
            self.watcher.watch(f.package, f.path, make_ignore_spec(f.ignore))
        except OSError as e:
            problem = f"cannot watch {f.path}: {e.strerror or e}"
            if st.problem != problem:
                self.log.error("watch.failed", package=f.package, path=str(f.path), detail=problem,
                               retry_in_s=ROOT_CHECK_SECONDS)
            st.watching, st.problem = False, problem
            return
        after = installed_watches()
        st.watching, st.problem = True, None
        self.log.info("watch.started", package=f.package, folder=str(f.path),
                      directories=(after - before) if before >= 0 and after >= 0 else None)

    def unwatch(self, package: str) -> None:
        if self.watcher is not None:
            self.watcher.unwatch(package)

    def check(self, roots: Mapping[str, RootState], came_back: Callable[[str], None]) -> None:
        """Notice lost roots; re-watch the ones that are back and call ``came_back``."""
        lost = set(self.watcher.lost()) if self.watcher is not None else set()
        for pkg, st in roots.items():
            if pkg in lost:
                self.unwatch(pkg)
                st.watching = False
                st.problem = f"folder {st.config.path} vanished or was replaced"
                self.log.error("watch.lost", package=pkg, path=str(st.config.path), detail=st.problem,
                               retry_in_s=ROOT_CHECK_SECONDS)
            elif not st.watching:
                self.watch(st)
                if st.watching:
                    came_back(pkg)

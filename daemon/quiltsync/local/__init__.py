"""The local side: folder scans, file hashes, the SQLite index, inotify, still copies, the state-dir lock."""

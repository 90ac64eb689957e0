"""The daemon shell: loop, pool, watcher, notify, signals, metrics, health checks."""

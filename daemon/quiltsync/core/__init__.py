"""The pure core: values and decisions, no I/O (stdlib and quiltsync.errors only)."""

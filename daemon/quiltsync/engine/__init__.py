"""The push pipeline and restores: core decisions run against the local side and the registry."""

"""quiltsync: keeps local folders versioned as Quilt packages in S3."""

__version__ = "0.1.0"

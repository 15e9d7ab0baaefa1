"""dyldcache: build and inspect dyld shared caches (dyld-1162 format) on any OS."""

__version__ = "0.1.0"

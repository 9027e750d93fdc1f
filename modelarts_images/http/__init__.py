"""The HTTP edge: downloads and the registry's v2 API (requests only)."""

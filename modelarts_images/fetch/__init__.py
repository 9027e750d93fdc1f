"""Stage 1, fetch: every installer and wheel an image needs, in a sha256-addressed cache, pinned in versions.lock."""

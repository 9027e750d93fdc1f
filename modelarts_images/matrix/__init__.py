"""The matrix: every stage for every entry of versions.yaml, resumable, shardable, with its reports."""

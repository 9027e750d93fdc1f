"""Stage 2, build: the build decided from the fetched entry, its context assembled, the engine asked to build it."""

"""Reading and checking the inputs: versions.yaml (with its schema and the compatibility table) and invoke.yaml."""

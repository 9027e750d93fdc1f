"""`inv doctor`: what this machine and configuration can do for the selected images, one row per check.

- report.py: the rows, their levels (ok, warning, missing), the verdict, the table and the JSON (pure);
- needs.py: what the selected work needs (a GPU, architectures, sources, disk space), from the entries alone (pure);
- rows.py: each check's row from what its probe found and what the work needs (pure);
- local.py: what is read of this machine itself (the installed requirements, disk, the cache, pip's index, keys);
- run.py: every probe at once, each bounded (the engine's in engine/probe.py, the network's in http/reach.py).
"""

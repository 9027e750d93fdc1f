"""Where the project's own files are: the checkout, the build context template, the programs run in images."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTEXT_TEMPLATE = ROOT / "context"  # Dockerfile and .dockerignore
VERIFY_DIR = ROOT / "verify"  # pytorch-verification.py, mounted where ModelArts puts a job's code
PROBES_DIR = VERIFY_DIR / "probes"  # the conformance and manifest probes
GITLAB_CELL_FILE = "ci/gitlab/cell.yml"  # the job template a generated GitLab child pipeline extends (relative)

"""context/layers.py run as the builder stages run it: placeholders for the mount points a base lacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LAYERS = Path(__file__).resolve().parents[2] / "context" / "layers.py"
EPOCH = 315532800


def layers(*args: str | Path) -> None:
    env = {**os.environ, "MA_USER": "ma-user", "MA_UID": "1000", "MA_GID": "100", "SOURCE_DATE_EPOCH": str(EPOCH)}
    subprocess.run([sys.executable, "-S", "-s", str(LAYERS), *map(str, args)], check=True, env=env, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0, reason="the placeholders belong to root: chown to 0 needs root")
def test_only_what_the_base_lacks_gets_an_empty_root_owned_placeholder(tmp_path: Path) -> None:
    base, out = tmp_path / "base-etc", tmp_path / "out"
    base.mkdir()
    out.mkdir()
    (base / "resolv.conf").write_text("nameserver 10.0.0.1\n")
    layers("placeholders", base, out, "hosts", "resolv.conf")
    assert sorted(path.name for path in (out / "etc").iterdir()) == ["hosts"]
    for path, mode in ((out / "etc", 0o755), (out / "etc" / "hosts", 0o644)):
        status = path.lstat()
        assert (status.st_uid, status.st_gid, status.st_mode & 0o7777, int(status.st_mtime)) == (0, 0, mode, EPOCH)
    assert (out / "etc" / "hosts").read_bytes() == b""


def test_a_base_with_every_file_adds_nothing_to_the_layer(tmp_path: Path) -> None:
    base, out = tmp_path / "base-etc", tmp_path / "out"
    base.mkdir()
    out.mkdir()
    (base / "hosts").write_text("127.0.0.1 localhost\n")
    (base / "resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")  # dangling, as on Ubuntu
    layers("placeholders", base, out, "hosts", "resolv.conf")
    assert not any(out.iterdir())

"""`inv fetch` and `inv lock` end to end against a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.support.http_server import FileServer, serve
from tests.support.wheels import make_wheel

TORCH = "torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl"
INSTALLER = b"#!/bin/bash\necho stand-in installer\n" + b"#" * 200_000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Setup:
    server: FileServer
    root: Path
    wheel: bytes

    def versions(self, *, installer_sha: str | None = None, wheels: str | None = None) -> Path:
        wheel_url = self.server.url("/files/torch-2.13.0%2Bcpu-cp311-cp311-linux_x86_64.whl")
        wheel_block = wheels if wheels is not None else f"    wheels:\n      - url: {wheel_url}\n"
        text = f"""
images:
  - id: test-cpu
    python: "3.11"
    cuda: cpu
    torch: "2.13.0"
    base_image: modelarts-test-base:bookworm
    installer:
      url: {self.server.url("/files/stand-in.sh")}
      sha256: {installer_sha or sha(INSTALLER)}
{wheel_block}"""
        path = self.root / "versions.yaml"
        path.write_text(text, "utf-8")
        return path

    def inv(self, *args: str) -> subprocess.CompletedProcess[str]:
        config = self.root / "invoke-test.yaml"
        config.write_text(yaml.safe_dump({"modelarts": {
            "cache_dir": str(self.root / "cache"),
            "organization": "test",
            "mirrors": {"https://download.pytorch.org/whl/": self.server.url("/whl/")},
        }}), "utf-8")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.run([sys.executable, "-m", "invoke", "-f", str(config), *args,
                               "--versions", str(self.root / "versions.yaml")],
                              cwd=ROOT, capture_output=True, text=True, timeout=120, check=False, env=env)

    def lock(self) -> dict[str, object]:
        loaded: dict[str, object] = yaml.safe_load((self.root / "versions.lock").read_text("utf-8"))
        return loaded


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    with serve() as server:
        wheel = make_wheel(TORCH, padding=300_000)
        server.add("/files/stand-in.sh", INSTALLER)
        server.add("/files/torch-2.13.0%2Bcpu-cp311-cp311-linux_x86_64.whl", wheel)
        yield Setup(server=server, root=tmp_path, wheel=wheel)


def test_fetch_pins_then_reuses(setup: Setup) -> None:
    setup.versions()
    first = setup.inv("fetch", "--no-closure")
    assert first.returncode == 0, first.stderr
    assert "fetched 2, reused 0" in first.stdout
    assert "versions.lock: pinned test-cpu" in first.stdout
    assert "trust on first use" in first.stderr
    blobs = setup.root / "cache" / "blobs" / "sha256"
    stored = sorted(p.name for p in blobs.iterdir() if len(p.name) == 64)
    assert stored == sorted([sha(INSTALLER), sha(setup.wheel)])
    entry = setup.lock()["images"]["test-cpu"]  # type: ignore[index]
    assert entry["wheels"] == [{"url": setup.server.url("/files/torch-2.13.0%2Bcpu-cp311-cp311-linux_x86_64.whl"),
                                "sha256": sha(setup.wheel), "size": len(setup.wheel)}]
    requests_before = len(setup.server.requests())
    second = setup.inv("fetch", "--no-closure", "--locked")
    assert second.returncode == 0, second.stderr
    assert "fetched 0, reused 2, 0 B transferred" in second.stdout
    assert len(setup.server.requests()) == requests_before


def test_offline_names_what_is_missing(setup: Setup) -> None:
    setup.versions()
    result = setup.inv("fetch", "--no-closure", "--offline")
    assert result.returncode == 3
    assert "stand-in.sh is not in the cache" in result.stderr or "torch-2.13.0+cpu" in result.stderr
    assert "--offline" in result.stderr and "Traceback" not in result.stderr
    assert setup.server.requests() == []


def test_locked_without_lock_fails(setup: Setup) -> None:
    setup.versions()
    result = setup.inv("fetch", "--no-closure", "--locked")
    assert result.returncode == 3
    assert result.stderr.strip() == ("error: test-cpu: --locked, but versions.lock has no current entry for it; "
                                     "run `inv lock`")


def test_hash_mismatch_exits_3_and_keeps_nothing(setup: Setup) -> None:
    wrong = "ab" * 32
    setup.versions(installer_sha=wrong)
    result = setup.inv("fetch", "--no-closure")
    assert result.returncode == 3, result.stderr
    assert setup.server.url("/files/stand-in.sh") in result.stderr
    assert wrong in result.stderr and sha(INSTALLER) in result.stderr
    assert not (setup.root / "cache" / "blobs" / "sha256" / wrong).exists()
    # The wheel's download is stopped by the failure and may keep its partial for a resume; the installer's not.
    assert not list((setup.root / "cache").rglob(f"{wrong}*.part"))


def test_missing_file_names_image_and_url(setup: Setup) -> None:
    setup.server.add("/files/stand-in.sh", b"", status=404)
    setup.versions()
    result = setup.inv("fetch", "--no-closure")
    assert result.returncode == 3
    assert "test-cpu" in result.stderr and setup.server.url("/files/stand-in.sh") in result.stderr
    assert "404" in result.stderr


def test_wheels_are_derived_from_the_index(setup: Setup) -> None:
    digest = sha(setup.wheel)
    setup.server.add("/whl/cpu/torch/", (
        f'<a href="/whl/cpu/torch-2.13.0%2Bcpu-cp310-cp310-linux_x86_64.whl#sha256={"1" * 64}">a</a>\n'
        f'<a href="/whl/cpu/torch-2.13.0%2Bcpu-cp311-cp311-linux_x86_64.whl#sha256={digest}">b</a>\n').encode())
    setup.server.add("/whl/cpu/torch-2.13.0%2Bcpu-cp311-cp311-linux_x86_64.whl", setup.wheel)
    setup.versions(wheels="")
    result = setup.inv("fetch", "--no-closure")
    assert result.returncode == 0, result.stderr
    entry = setup.lock()["images"]["test-cpu"]  # type: ignore[index]
    assert entry["wheels"] == [{"url": "https://download.pytorch.org/whl/cpu/torch-2.13.0%2Bcpu-cp311-cp311-linux_x86_64.whl",
                                "sha256": digest, "size": len(setup.wheel)}]
    assert "trust on first use" not in result.stderr.split("stand-in.sh")[-1]


def test_dependency_closure_is_pinned_and_fetched(setup: Setup) -> None:
    wheel = make_wheel(TORCH, requires=("typing-extensions",))
    setup.server.add("/files/torch-2.13.0%2Bcpu-cp311-cp311-linux_x86_64.whl", wheel)
    setup.versions()
    result = setup.inv("fetch")
    assert result.returncode == 0, result.stderr
    assert "1 dependency wheels" in result.stdout
    closure = setup.lock()["images"]["test-cpu"]["closure"]  # type: ignore[index]
    assert len(closure) == 1 and "typing_extensions" in closure[0]["url"]
    assert (setup.root / "cache" / "blobs" / "sha256" / closure[0]["sha256"]).is_file()


def test_changed_pin_in_versions_yaml_wins_over_the_lock(setup: Setup) -> None:
    setup.versions()
    assert setup.inv("fetch", "--no-closure").returncode == 0
    other = INSTALLER + b"# new release\n"
    setup.server.add("/files/stand-in.sh", other)
    setup.versions(installer_sha=sha(other))
    result = setup.inv("fetch", "--no-closure", "--locked")
    assert result.returncode == 3  # the lock no longer describes the entry
    result = setup.inv("fetch", "--no-closure")
    assert result.returncode == 0, result.stderr
    assert setup.lock()["images"]["test-cpu"]["installer"]["sha256"] == sha(other)  # type: ignore[index]


def test_two_fetches_at_once_share_the_cache(setup: Setup) -> None:
    big = make_wheel(TORCH, padding=3_000_000)
    setup.server.add("/files/torch-2.13.0%2Bcpu-cp311-cp311-linux_x86_64.whl", big, throttle=4_000_000)
    setup.versions()
    setup.inv("plan")  # writes the invoke config file used by both runs
    config = setup.root / "invoke-test.yaml"
    command = [sys.executable, "-m", "invoke", "-f", str(config), "fetch", "--no-closure",
               "--versions", str(setup.root / "versions.yaml")]
    runs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outcomes = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outcomes
    blob = setup.root / "cache" / "blobs" / "sha256" / sha(big)
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha(big)
    assert not list((setup.root / "cache").rglob("*.part"))


def test_a_killed_fetch_resumes(setup: Setup) -> None:
    big = make_wheel(TORCH, padding=4_000_000)
    setup.server.add("/files/torch-2.13.0%2Bcpu-cp311-cp311-linux_x86_64.whl", big, throttle=2_000_000)
    setup.versions()
    setup.inv("plan")
    config = setup.root / "invoke-test.yaml"
    command = [sys.executable, "-m", "invoke", "-f", str(config), "fetch", "--no-closure",
               "--versions", str(setup.root / "versions.yaml")]
    run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache = setup.root / "cache"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        parts = list(cache.rglob("*.part"))
        if parts and parts[0].stat().st_size > 1_000_000:
            break
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    kept = sum(part.stat().st_size for part in cache.rglob("*.part"))
    assert kept > 1_000_000
    setup.server.add("/files/torch-2.13.0%2Bcpu-cp311-cp311-linux_x86_64.whl", big)  # full speed now
    result = setup.inv("fetch", "--no-closure")
    assert result.returncode == 0, result.stderr
    last = setup.server.requests("/files/torch-2.13.0%2Bcpu-cp311-cp311-linux_x86_64.whl")[-1]
    assert last.headers["range"].startswith("bytes=")
    assert last.bytes_sent <= len(big) - kept
    assert hashlib.sha256((cache / "blobs" / "sha256" / sha(big)).read_bytes()).hexdigest() == sha(big)


def test_a_closure_skipped_once_is_resolved_later(setup: Setup) -> None:
    wheel = make_wheel(TORCH, requires=("typing-extensions",))
    setup.server.add("/files/torch-2.13.0%2Bcpu-cp311-cp311-linux_x86_64.whl", wheel)
    setup.versions()
    assert setup.inv("fetch", "--no-closure").returncode == 0
    assert setup.lock()["images"]["test-cpu"]["closure"] is None  # type: ignore[index]
    result = setup.inv("fetch")
    assert result.returncode == 0, result.stderr
    assert "1 dependency wheels" in result.stdout
    assert len(setup.lock()["images"]["test-cpu"]["closure"]) == 1  # type: ignore[index]

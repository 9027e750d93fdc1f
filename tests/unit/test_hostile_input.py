"""Hostile input: a lock file, a cache, YAML and flags made to hurt. No file outside the cache is touched, no
secret is shown, nothing hangs, and every failure is one message with its stage's exit code."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from modelarts_images import pipeline
from modelarts_images.config import versions
from modelarts_images.errors import ConfigError, FetchError
from modelarts_images.fetch import lockfile
from modelarts_images.fetch.cache import Cache
from modelarts_images.fetch.fetcher import fetch_images
from modelarts_images.fetch.index import parse_links
from modelarts_images.http import pip_resolver
from modelarts_images.model import Artifact, ImageSpec
from modelarts_images.options import FetchOptions
from modelarts_images.shared import yamlio
from tests.conftest import ROOT
from tests.support.http_server import serve

INSTALLER = b"#!/bin/bash\necho stand-in installer\n"
SHA = hashlib.sha256(INSTALLER).hexdigest()


def run_inv(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          check=False, timeout=timeout, env={**os.environ, **(env or {})})


def entry(url: str, *, sha256: str | None = None, image_id: str = "cell") -> ImageSpec:
    return ImageSpec(id=image_id, default=True, python="3.11", cuda="cpu", torch="2.13.0", torchvision=None,
                     torchaudio=None, tag="t", registry="localhost:5999", organization="tests", repository="x",
                     base_image="debian:bookworm", pip_index="", apt_mirror="http://repo.example",
                     installer=Artifact(url=url, sha256=sha256), wheels=(Artifact(url=url, sha256=sha256),))


def options(tmp_path: Path, **changes: object) -> FetchOptions:
    values: dict[str, object] = {"cache_dir": tmp_path / "cache", "lock_path": tmp_path / "versions.lock",
                                 "closure": False, **changes}
    return FetchOptions(**values)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------------
# versions.lock and the cache are never a way out of the cache


@pytest.mark.parametrize("sha256", ["../../victim", "/etc/passwd", "A" * 64, "a" * 63, "a" * 64 + "\n"])
def test_a_lock_sha256_that_is_a_path_is_refused_and_nothing_is_deleted(tmp_path: Path, sha256: str) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    lock = tmp_path / "versions.lock"
    lock.write_text(yaml.safe_dump({"images": {"cell": {
        "inputs": "x", "installer": {"url": "https://h.example/a.sh", "sha256": sha256},
        "wheels": [], "closure": None}}}))
    with pytest.raises(ConfigError, match=r"^versions.lock: cell.installer.sha256: .* is not a sha256 "
                                          r"\(64 lowercase hexadecimal digits\); delete the entry"):
        lockfile.read(lock)
    assert victim.read_text() == "keep me"


@pytest.mark.parametrize(("raw", "key"), [
    ({"url": "https://h.example/..%2F..%2Fvictim", "sha256": SHA}, "cell.installer.url"),
    ({"url": "https://user:pw@h.example/a.sh", "sha256": SHA}, "cell.installer.url"),
    ({"url": "ftp://h.example/a.sh", "sha256": SHA}, "cell.installer.url"),
    ({"url": "https://h.example/a.sh", "sha256": SHA, "size": -1}, "cell.installer.size"),
    ("https://h.example/a.sh", "cell.installer"),
])
def test_every_lock_value_is_checked(tmp_path: Path, raw: object, key: str) -> None:
    lock = tmp_path / "versions.lock"
    lock.write_text(yaml.safe_dump({"images": {"cell": {"inputs": "x", "installer": raw, "wheels": [],
                                                        "closure": None}}}))
    with pytest.raises(ConfigError) as caught:
        lockfile.read(lock)
    assert str(caught.value).startswith(f"versions.lock: {key}")
    assert "pw" not in str(caught.value)


def test_the_cache_refuses_a_sha256_that_is_a_path(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="is not a sha256"):
        Cache(tmp_path).blob("../../x")
    with pytest.raises(FetchError, match="cannot be a file name"):
        Cache(tmp_path).entry("../x")


def test_a_link_planted_at_a_blob_is_removed_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"outside the cache")
    cache = Cache(tmp_path / "cache")
    cache.prepare()
    (cache.blobs / SHA).symlink_to(victim)
    assert not cache.has(SHA)
    assert not (cache.blobs / SHA).exists() and not (cache.blobs / SHA).is_symlink()
    assert victim.read_bytes() == b"outside the cache"


def test_links_planted_at_the_cache_records_are_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    cache = Cache(tmp_path / "cache")
    cache.prepare()
    (cache.root / "verified.json.tmp").symlink_to(victim)
    (cache.root / "verified.lock").symlink_to(victim)
    blob = cache.blobs / SHA
    blob.write_bytes(INSTALLER)
    with pytest.raises(FetchError, match=r"verified.lock is a symbolic link where the cache keeps a lock file"):
        cache.has(SHA)  # the lock is not opened through the link, and that is a fetch error naming it
    (cache.root / "verified.lock").unlink()
    assert cache.has(SHA)
    assert victim.read_text() == "keep me"
    assert json.loads((cache.root / "verified.json").read_text())[SHA][0] == len(INSTALLER)


def test_a_cache_record_that_is_a_directory_is_a_clear_fetch_error(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    cache.prepare()
    (cache.root / "verified.json").mkdir()
    (cache.blobs / SHA).write_bytes(INSTALLER)
    with pytest.raises(FetchError, match=r"^cannot write the cache record .*verified.json: Is a directory"), \
            pipeline.stage(FetchError):
        cache.has(SHA)


def test_an_offline_fetch_needs_no_write(tmp_path: Path) -> None:
    with serve() as server:
        url = server.add("/files/a.sh", INSTALLER)
        image = entry(url, sha256=SHA)
        fetch_images([image], options(tmp_path))  # fills the cache and the lock
    cache = tmp_path / "cache"
    for path in [cache, *cache.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        if os.geteuid() == 0:
            # root writes through permission bits: what must not happen is that anything is written at all
            before = {path: path.stat().st_mtime_ns for path in cache.rglob("*")}
        fetched, summary = fetch_images([image], options(tmp_path, offline=True))
        assert summary.reused == 1 and fetched[0].installer.sha256 == SHA
        if os.geteuid() == 0:
            assert {path: path.stat().st_mtime_ns for path in cache.rglob("*")} == before
    finally:
        for path in [cache, *cache.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_a_cache_on_a_read_only_mount_serves_offline(tmp_path: Path) -> None:
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights): the read-only mount is not tested")
    try:
        with serve() as server:
            url = server.add("/files/a.sh", INSTALLER)
            fetch_images([entry(url, sha256=SHA)], options(tmp_path, cache_dir=mount))
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        fetched, summary = fetch_images([entry(url, sha256=SHA)], options(tmp_path, cache_dir=mount, offline=True))
        assert summary.reused == 1 and fetched[0].installer.path.read_bytes() == INSTALLER
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_an_unpinned_name_longer_than_a_file_name_may_be_still_fetches(tmp_path: Path) -> None:
    name = "x" * 240 + ".sh"
    with serve() as server:
        url = server.add(f"/files/{name}", INSTALLER)
        fetched, _ = fetch_images([entry(url)], options(tmp_path))
    assert fetched[0].installer.filename == name and fetched[0].installer.sha256 == SHA


# --------------------------------------------------------------------------------------------------------------
# versions.yaml and the index: paths, credentials and untidy text refused where they come in


def write_versions(tmp_path: Path, installer: dict[str, object]) -> Path:
    path = tmp_path / "versions.yaml"
    path.write_text(yaml.safe_dump({"images": [{
        "id": "cell", "python": "3.11", "cuda": "cpu", "torch": "2.13.0", "registry": "localhost:5999",
        "organization": "tests", "repository": "x", "base_image": "debian:bookworm", "installer": installer}]}))
    return path


@pytest.mark.parametrize(("installer", "message"), [
    ({"url": "https://h.example/..%2F..%2Fvictim.sh"}, "'../../victim.sh' cannot be a file name"),
    ({"url": "https://h.example/%2e%2e"}, "'..' cannot be a file name"),
    ({"url": "https://robot:s3cret@h.example/a.sh"}, "https://robot:***@h.example/a.sh carries a user name or "
                                                     "password"),
    ({"url": "https://h.example/a.sh", "sha256": SHA + "\n"}, "must be one line"),
    ({"url": "https://h.example/a.sh\n"}, "must be one line"),
])
def test_versions_yaml_refuses_paths_credentials_and_untidy_values(tmp_path: Path, installer: dict[str, object],
                                                                   message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        versions.load_versions(write_versions(tmp_path, installer))
    assert "images[0].installer" in str(caught.value) and message in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_an_index_page_with_a_sha256_that_is_a_path_is_refused() -> None:
    html = '<a href="torch-2.13.0-cp311-cp311-linux_x86_64.whl#sha256=../../etc/passwd">t</a>'
    with pytest.raises(FetchError, match="is not a sha256"):
        parse_links(html, "https://index.example/whl/cpu/torch/")


def test_index_links_lose_their_credentials() -> None:
    html = '<a href="https://u:tok@files.example/torch-2.13.0-cp311-cp311-linux_x86_64.whl">t</a>'
    (link,) = parse_links(html, "https://index.example/whl/cpu/torch/")
    assert link.url == "https://files.example/torch-2.13.0-cp311-cp311-linux_x86_64.whl"


@pytest.mark.parametrize("info", [
    {"url": "https://files.example/..%2Fx.whl", "archive_info": {"hashes": {"sha256": SHA}}},
    {"url": "https://files.example/x.whl", "archive_info": {"hashes": {"sha256": "../x"}}},
    {"url": "/etc/passwd"},
])
def test_pip_report_entries_are_checked(info: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        pip_resolver._artifact(info)


def test_pip_report_urls_lose_their_credentials() -> None:
    artifact = pip_resolver._artifact({"url": "https://u:tok@pypi.example/packages/numpy-2.0-py3-none-any.whl",
                                       "archive_info": {"hashes": {"sha256": SHA}}})
    assert artifact.url == "https://pypi.example/packages/numpy-2.0-py3-none-any.whl" and artifact.sha256 == SHA


# --------------------------------------------------------------------------------------------------------------
# YAML that PyYAML parses but cannot turn into values, and alias bombs


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(  # nine levels of nine-fold aliases: 9^9 values
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n"
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True))


@pytest.mark.parametrize(("text", "message"), [
    ("d: 2024-13-45\n", "line 1, column 4 (d): '2024-13-45' cannot be read: YAML reads it as a date, and there is "
                       "no such date (month must be in 1..12); quote it if it is text"),
    ("? [a]\n: b\n", "unhashable"),
    ("n: " + "9" * 5000 + "\n", "line 1, column 4 (n): '999"),
    ("a: [1, {b: " + "9" * 5000 + "}]\n", "(a[1].b): '" + "9" * 60 + "…' cannot be read: an integer of 5,000 "
                                      "digits is more than a value here can hold"),
    ("a: &d 2023-02-29\nb: [*d]\n", "line 1, column 4 (a): '2023-02-29' cannot be read"),
    ("[" * 3000 + "]" * 3000 + "\n", "not valid YAML"),
    (BOMB, "holds more than 1,000,000 values once its YAML aliases are expanded"),
    ("x: &x [*x]\n", "holds more than 1,000,000 values"),
])
def test_yaml_that_cannot_become_values_is_a_config_error(text: str, message: str) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        yamlio.parse(text, label="f.yaml")
    assert str(caught.value).startswith("f.yaml: ") and message in str(caught.value)
    assert time.monotonic() - started < 30  # not a timing assertion of speed: an alias bomb would take hours


@pytest.mark.parametrize("name", ["versions.yaml", "versions.lock"])
def test_versions_and_lock_files_refuse_it_too(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("images: 2024-13-45\n")
    with pytest.raises(ConfigError, match=f"{name}: line 1, column 9 \\(images\\): '2024-13-45' cannot be read"):
        versions.load_versions(path) if name == "versions.yaml" else lockfile.read(path)


@pytest.mark.parametrize(("text", "message"), [
    (BOMB, "holds more than 1,000,000 values"),
    ("modelarts: [1, 2\n", "not valid YAML"),
    ("modelarts: 5\n", "modelarts: must be a mapping of settings (got int)"),
    ("- a\n", "must be a mapping of config sections (got list)"),
    ("modelarts:\n  when: 2024-13-45\n", "bad.yaml: line 2, column 9 (modelarts.when): '2024-13-45' cannot be read"),
    ("modelarts:\n  cache_dir: \"cache\\n\"\n", "modelarts.cache_dir: 'cache\\n' must be one line"),
])
def test_a_bad_invoke_config_file_exits_2_with_one_message(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    result = run_inv("-f", str(config), "plan")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_debug_output_masks_credentials_from_config_files(tmp_path: Path) -> None:
    config = tmp_path / "cred.yaml"
    config.write_text('modelarts:\n  pip_index: "https://robot:s3cret-pw@pypi.example/simple"\n'
                      '  mirrors: {"https://download.pytorch.org/whl/": "https://m:s3cret-pw@mirror.example/whl/"}\n')
    result = run_inv("--debug", "-f", str(config), "plan")
    assert result.returncode == 0, result.stderr
    assert "robot:***@pypi.example" in result.stderr  # invoke's merge was printed, masked
    assert "s3cret-pw" not in result.stdout + result.stderr


# --------------------------------------------------------------------------------------------------------------
# Flags and outputs


@pytest.mark.parametrize(("args", "message"), [
    (("verify", "--size-budget", "inf"), "error: --size-budget: must be a finite number, got inf"),
    (("verify", "--size-budget", "1e308"), "error: --size-budget: 1e308 GB is beyond any image size; give the "
                                           "budget in GB, e.g. 9.5"),
    (("verify", "--timeout", "inf"), "error: --timeout: must be a finite number, got inf"),
    (("plan", "--only="), "error: --only: needs an image id (--only ID); repeat it for several"),
])
def test_flags_that_would_overflow_or_say_nothing_exit_2(args: tuple[str, ...], message: str) -> None:
    result = run_inv(*args)
    assert (result.returncode, result.stderr.strip().splitlines()[0]) == (2, message)


@pytest.mark.parametrize("value", ["-5", "nan", "inf"])
def test_the_matrix_refuses_the_timeouts_the_tasks_refuse(value: str) -> None:
    result = subprocess.run([sys.executable, "-m", "modelarts_images.matrix", "--timeout", value], cwd=ROOT,
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("error: --timeout: ")


def test_output_to_a_full_device_is_one_message_and_exit_74() -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    with Path("/dev/full").open("w") as full:
        result = subprocess.run([sys.executable, "-m", "invoke", "plan", "--all"], cwd=ROOT, stdout=full,
                                stderr=subprocess.PIPE, text=True, check=False, timeout=60)
    assert result.returncode == 74
    assert result.stderr.strip() == "error: cannot write the output: No space left on device"


@pytest.mark.parametrize("host", ["tcp://localhost:99999", "tcp://localhost:abc"])
def test_a_malformed_docker_host_is_the_stage_error(host: str) -> None:
    result = run_inv("verify", env={"DOCKER_HOST": host})
    assert result.returncode == 5 and "Traceback" not in result.stderr
    assert f"no Docker Engine answers at DOCKER_HOST={host}" in result.stderr


def test_an_environment_setting_is_named_as_such() -> None:
    result = run_inv("fetch", "--offline", env={"INVOKE_MODELARTS_MIN_SPEED": "-1"})
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: INVOKE_MODELARTS_MIN_SPEED (environment): must be a whole number of "
                                     "at least 1 (got '-1')")


def test_the_size_the_lock_records_bounds_the_download(tmp_path: Path) -> None:
    with serve() as server:
        url = server.add("/files/a.sh", INSTALLER + b"# grown since it was locked\n" * 1000)
        image = entry(url)
        lock = tmp_path / "versions.lock"
        lock.write_text(yaml.safe_dump({"images": {"cell": {
            "inputs": lockfile.inputs_of(image), "installer": {"url": url, "sha256": SHA, "size": len(INSTALLER)},
            "wheels": [{"url": url, "sha256": SHA, "size": len(INSTALLER)}], "closure": None}}}))
        with pytest.raises(FetchError, match=f"is larger than the {len(INSTALLER)} bytes versions.lock records"):
            fetch_images([image], options(tmp_path))
    assert not list((tmp_path / "cache").rglob("*.part"))
    assert not (tmp_path / "cache" / "blobs" / "sha256" / SHA).exists()


@pytest.mark.parametrize("planted", ["blob", "part", "part.meta", "lock"])
def test_links_planted_at_a_downloads_files_are_never_written_through(tmp_path: Path, planted: str) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    cache = Cache(tmp_path / "cache")
    cache.prepare()
    blob = cache.blobs / SHA
    name = {"blob": blob.name, "part": f"{SHA}.part", "part.meta": f"{SHA}.part.meta", "lock": f"{SHA}.lock"}[planted]
    (cache.blobs / name).symlink_to(victim)
    with serve() as server:
        url = server.add("/files/a.sh", INSTALLER)
        fetch_images([entry(url, sha256=SHA)], options(tmp_path))
    assert blob.read_bytes() == INSTALLER and not blob.is_symlink()
    assert victim.read_text() == "keep me"


def test_invokes_own_parse_errors_are_the_documented_exit_1_without_a_traceback() -> None:
    result = run_inv("plan", "--bogus")
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
    assert "--bogus" in result.stderr + result.stdout


def test_only_without_a_value_plans_the_default_image_as_documented() -> None:
    bare, default = run_inv("plan", "--json", "--only"), run_inv("plan", "--json")
    assert bare.returncode == 0 and bare.stdout == default.stdout
    empty = run_inv("plan", "--only=")
    assert empty.returncode == 2 and "Traceback" not in empty.stderr

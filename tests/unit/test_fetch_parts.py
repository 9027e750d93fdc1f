"""Pure parts of fetch: index parsing, wheel choice, the lock file, the cache record, mirrors, platform tags."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from modelarts_images import pipeline
from modelarts_images.errors import ConfigError, FetchError, WriteError
from modelarts_images.fetch import index, lockfile
from modelarts_images.fetch.cache import Cache, sha256_of
from modelarts_images.fetch.fetcher import mirrored
from modelarts_images.http import pip_resolver as closure
from modelarts_images.model import Artifact, ImageSpec

SHA = "a" * 64

FLAT_PAGE = """<html><body>
<a href="cu102/torch-1.8.1%2Bcu102-cp37-cp37m-linux_x86_64.whl">cu102/torch-1.8.1+cu102-cp37-cp37m-linux_x86_64.whl</a>
<a href="cu111/torch-1.8.1%2Bcu111-cp37-cp37m-linux_x86_64.whl">cu111/torch-1.8.1+cu111-cp37-cp37m-linux_x86_64.whl</a>
<a href="torch-1.8.1-cp37-cp37m-linux_x86_64.whl">torch-1.8.1-cp37-cp37m-linux_x86_64.whl</a>
<a href="cu102/torch-1.8.1%2Bcu102-cp38-cp38-linux_x86_64.whl">x</a>
<a href="torchaudio-0.8.1-cp37-cp37m-linux_x86_64.whl">torchaudio</a>
<a href="cu102/torch-1.8.1%2Bcu102-cp37-none-macosx_10_9_x86_64.whl">mac</a>
</body></html>"""

SIMPLE_PAGE = f"""<a href="/whl/cu121/torch-2.1.2%2Bcu121-cp310-cp310-linux_x86_64.whl#sha256={SHA}">t</a>
<a href="/whl/cu121/torch-2.1.2%2Bcu121-cp311-cp311-linux_x86_64.whl#sha256={'b' * 64}">t</a>"""


def image(**overrides: object) -> ImageSpec:
    values: dict[str, object] = dict(
        id="x", default=False, python="3.7", cuda="10.2", torch="1.8.1", torchvision=None, torchaudio="0.8.1",
        tag="t", registry="r", organization="o", repository="p", base_image="ubuntu:18.04", pip_index="https://p/s",
        apt_mirror="http://m", installer=Artifact(url="file:///i.sh", sha256=None), wheels=())
    values.update(overrides)
    return ImageSpec(**values)  # type: ignore[arg-type]


def test_flat_page_picks_the_variant_wheel() -> None:
    page = "https://download.pytorch.org/whl/torch_stable.html"
    links = index.parse_links(FLAT_PAGE, page)
    chosen = index.choose_wheel(links, package="torch", version="1.8.1", image=image(), page_url=page)
    assert chosen == Artifact(url="https://download.pytorch.org/whl/cu102/torch-1.8.1%2Bcu102-cp37-cp37m-linux_x86_64.whl",
                              sha256=None)
    audio = index.choose_wheel(links, package="torchaudio", version="0.8.1", image=image(), page_url=page)
    assert audio.filename == "torchaudio-0.8.1-cp37-cp37m-linux_x86_64.whl"


def test_simple_page_carries_the_hash() -> None:
    page = index.page_urls("https://download.pytorch.org/whl/cu121", "torch")
    assert page == "https://download.pytorch.org/whl/cu121/torch/"
    links = index.parse_links(SIMPLE_PAGE, page)
    chosen = index.choose_wheel(links, package="torch", version="2.1.2", page_url=page,
                                image=image(python="3.10", cuda="12.1", torch="2.1.2", torchaudio=None))
    assert chosen.url == "https://download.pytorch.org/whl/cu121/torch-2.1.2%2Bcu121-cp310-cp310-linux_x86_64.whl"
    assert chosen.sha256 == SHA


def test_no_fitting_wheel_names_the_page() -> None:
    page = "https://download.pytorch.org/whl/torch_stable.html"
    with pytest.raises(FetchError, match=r"^x: no torch==1.8.1 wheel for Python 3.9, cu102, Linux x86_64 at https://"):
        index.choose_wheel(index.parse_links(FLAT_PAGE, page), package="torch", version="1.8.1",
                           image=image(python="3.9"), page_url=page)


CU126_PAGE = "\n".join(
    f'<a href="/whl/cu126/torch-2.13.0%2Bcu126-cp3{minor}-cp3{minor}-manylinux_2_28_x86_64.whl">t</a>'
    for minor in (10, 11, 12, 13, 15))
CU126_PAGE += '<a href="/whl/cu126/torch-2.13.0%2Bcu126-cp314-cp314t-manylinux_2_28_x86_64.whl">t</a>'


def test_a_python_the_table_allows_but_the_index_lacks_says_the_table_is_wrong() -> None:
    page = "https://download.pytorch.org/whl/cu126/torch/"
    entry = image(python="3.14", cuda="12.6", torch="2.13.0", torchaudio=None)
    with pytest.raises(FetchError) as caught:
        index.choose_wheel(index.parse_links(CU126_PAGE, page), package="torch", version="2.13.0", image=entry,
                           page_url=page)
    assert str(caught.value) == (
        "x: no torch==2.13.0 wheel for Python 3.14, cu126, Linux x86_64 at https://download.pytorch.org/whl/cu126/"
        "torch/; the page has torch 2.13.0 for Python 3.10, 3.11, 3.12, 3.13, 3.15 only, while "
        "modelarts_images/config/data/compat.yaml lists Python 3.10–3.14 for torch 2.13.0: if this index is "
        "PyTorch's own, the table is wrong for this release (please report it)")


def test_a_variant_the_table_allows_but_the_index_lacks_says_so() -> None:
    page = "https://download.pytorch.org/whl/cu129/torch/"
    entry = image(python="3.11", cuda="12.9", torch="2.13.0", torchaudio=None)
    with pytest.raises(FetchError, match=r"; the page has no torch 2.13.0 wheel for cu129 at all; modelarts_images/"
                                         r"config/data/compat.yaml lists CUDA 12.9 for torch 2.13.0: if this index "
                                         r"is PyTorch's own, that entry of the table is wrong"):
        index.choose_wheel([], package="torch", version="2.13.0", image=entry, page_url=page)


def test_what_the_index_has_beyond_the_table_is_noted() -> None:
    entry = image(python="3.11", cuda="12.6", torch="2.13.0", torchaudio=None)
    links = index.parse_links(CU126_PAGE, "https://download.pytorch.org/whl/cu126/torch/")
    assert index.table_mismatches(links, version="2.13.0", image=entry) == [
        "the index has torch 2.13.0 wheels for Python 3.15 (cu126) too, which "
        "modelarts_images/config/data/compat.yaml does not list for it"]
    flat = index.parse_links(FLAT_PAGE, "https://download.pytorch.org/whl/torch_stable.html")
    assert index.table_mismatches(flat, version="1.8.1", image=image()) == []
    extra = index.parse_links(FLAT_PAGE.replace("cu111", "cu113"), "https://download.pytorch.org/whl/torch_stable.html")
    assert index.table_mismatches(extra, version="1.8.1", image=image()) == [
        "the index has torch 1.8.1 wheels for cu113 too, which modelarts_images/config/data/compat.yaml does not "
        "list for it"]


def test_lock_round_trip(tmp_path: Path) -> None:
    entry = lockfile.LockedImage(
        inputs="python 3.7; cu102", installer=Artifact(url="https://i/inst.sh", sha256=SHA),
        wheels=(Artifact(url="https://w/b.whl", sha256=SHA), Artifact(url="https://w/a.whl", sha256=SHA)),
        closure=None)
    path = tmp_path / "versions.lock"
    lockfile.write(path, {"x": entry, "a": entry})
    text = path.read_text("utf-8")
    assert text.startswith("# versions.lock")
    assert text.index("  a:") < text.index("  x:")
    assert text.index("https://w/a.whl") < text.index("https://w/b.whl")
    again = lockfile.read(path)
    assert again["x"].installer == entry.installer
    assert [w.url for w in again["x"].wheels] == ["https://w/a.whl", "https://w/b.whl"]
    assert again["x"].closure is None
    assert [p.name for p in tmp_path.iterdir()] == ["versions.lock"]
    # the time of the image's own layers is recorded, 1980-01-01 unless the lock says otherwise
    assert "source_date_epoch: 315532800" in text and again["x"].source_date_epoch == 315_532_800
    path.write_text(text.replace("source_date_epoch: 315532800", "source_date_epoch: 1700000000", 1), "utf-8")
    assert lockfile.read(path)["a"].source_date_epoch == 1_700_000_000
    for bad in ("-1", "'soon'", "true", "4294967296"):
        path.write_text(text.replace("source_date_epoch: 315532800", f"source_date_epoch: {bad}", 1), "utf-8")
        with pytest.raises(ConfigError, match=r"a.source_date_epoch: must be seconds since 1970"):
            lockfile.read(path)


def test_lock_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "versions.lock"
    path.write_text("images:\n  x:\n    inputs: y\n", "utf-8")
    with pytest.raises(ConfigError, match=r"^versions.lock: x.installer: must be a mapping with url and sha256; "
                                          r"delete the entry \(or the file\) and run `inv lock`$"):
        lockfile.read(path)


def lock_entry() -> lockfile.LockedImage:
    return lockfile.LockedImage(inputs="python 3.7; cu102", installer=Artifact(url="https://i/inst.sh", sha256=SHA),
                                wheels=(), closure=None)


def test_lock_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "versions.lock"
    path.write_bytes(b"images:\n\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match=rf"^{path}: not UTF-8 text \(byte 8\); delete it and run `inv lock`$"):
        lockfile.read(path)


def test_rewritten_lock_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "versions.lock"
    lockfile.write(path, {"x": lock_entry()})
    path.chmod(0o640)
    lockfile.write(path, {"y": lock_entry()})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert "  y:" in path.read_text("utf-8")


def test_new_lock_gets_the_umask_mode(tmp_path: Path) -> None:
    path = tmp_path / "versions.lock"
    previous = os.umask(0o027)
    try:
        lockfile.write(path, {"x": lock_entry()})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_failed_lock_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "versions.lock"
    (path / "taken").mkdir(parents=True)  # a directory where the lock goes: the rename fails
    with pytest.raises(WriteError, match=rf"^cannot write the lock file {path}: "):
        lockfile.write(path, {"x": lock_entry()})
    assert [p.name for p in tmp_path.iterdir()] == ["versions.lock"]
    # inside the fetch step the same failure is a fetch error (exit 3), with the same message
    with pytest.raises(FetchError, match=rf"^cannot write the lock file {path}: "), pipeline.stage(FetchError):
        lockfile.write(path, {"x": lock_entry()})


def test_cache_trusts_its_record_and_notices_changes(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    cache.prepare()
    content = b"wheel bytes"
    source = tmp_path / "download"
    source.write_bytes(content)
    digest = sha256_of(source)
    cache.adopt(source, digest)
    assert cache.has(digest)
    blob = cache.blob(digest)
    # Same size, new content, old mtime: the record no longer matches the inode/mtime, so it is re-hashed.
    stat = blob.stat()
    blob.write_bytes(b"wheel BYTES")
    os.utime(blob, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert not cache.has(digest)
    assert not blob.exists()


def test_cache_rehash_on_request(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    cache.prepare()
    cache.blob(SHA).write_bytes(b"not matching")
    cache.record(SHA)
    assert cache.has(SHA)  # the record vouches for it
    assert not cache.has(SHA, rehash=True)  # --verify-cache does not


def test_mirrors_use_the_longest_prefix() -> None:
    mirrors = {"https://download.pytorch.org/": "https://a/", "https://download.pytorch.org/whl/": "https://b/"}
    assert mirrored("https://download.pytorch.org/whl/cu102/t.whl", mirrors) == "https://b/cu102/t.whl"
    assert mirrored("https://download.pytorch.org/x", mirrors) == "https://a/x"
    assert mirrored("https://repo.anaconda.com/x", mirrors) == "https://repo.anaconda.com/x"
    assert mirrored("https://x/y", {}) == "https://x/y"


def test_platform_tags_follow_the_base_glibc() -> None:
    tags = closure.platform_tags("ubuntu:18.04")
    assert tags[0] == "manylinux_2_27_x86_64"
    assert "manylinux_2_28_x86_64" not in tags
    assert tags[-4:] == ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
    assert closure.platform_tags("registry.example/mirror/ubuntu:22.04")[0] == "manylinux_2_35_x86_64"
    assert closure.platform_tags("something:else")[0] == "manylinux_2_28_x86_64"

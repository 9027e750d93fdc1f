"""Index pages: retried like downloads, decoded (gzip, deflate) with a bound that a gzip bomb, a huge announced
size or an endless body cannot get past; credentials in the URL never reach a message."""

from __future__ import annotations

import gzip
import time
import tracemalloc
import zlib
from collections.abc import Callable

import pytest
import requests

from modelarts_images.errors import FetchError
from modelarts_images.http.pages import get_text
from tests.support.http_server import FileServer
from tests.unit.test_download import MB, with_userinfo


def test_page_cut_while_read_is_retried(server: FileServer) -> None:
    page = b"<a href='torch.whl'>torch</a>\n" * 4000
    url = server.add("/simple/torch/", page, cut_after=1000)

    with requests.Session() as session:
        assert get_text(url, session=session, backoff=0.01) == page.decode()

    assert [r.bytes_sent for r in server.requests("/simple/torch/")] == [1000, len(page)]


def test_page_cut_every_time_is_a_fetch_error_naming_the_url(server: FileServer) -> None:
    url = with_userinfo(server.add("/simple/torch/", b"x" * 100_000, cut_after=1000, cut_times=None), "u:s3cret-pw")

    with requests.Session() as session, pytest.raises(FetchError) as caught:
        get_text(url, session=session, retries=1, backoff=0.01)

    assert str(caught.value).startswith(
        f"cannot read http://u:***@127.0.0.1:{server.port}/simple/torch/ after 2 attempts: connection cut")
    assert "s3cret" not in str(caught.value)


def test_a_page_answered_429_is_retried_after_its_retry_after(server: FileServer, waits: list[float]) -> None:
    url = server.add("/simple/torch/", b"<a href='t.whl'>t</a>", fail_times=1, fail_status=429, retry_after="3")

    with requests.Session() as session:
        assert get_text(url, session=session, backoff=0.01) == "<a href='t.whl'>t</a>"

    assert waits == [3.0]


def gzipped_zeros(size: int) -> bytes:
    """A gzip bomb: `size` zero bytes (a multiple of 1 MiB) in about size/1000 bytes, made without holding them."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(MB)
    return b"".join([*(packer.compress(block) for _ in range(size // MB)), packer.flush()])


def test_a_gzip_bomb_page_is_refused_within_the_bound(server: FileServer) -> None:
    url = server.add("/simple/bomb/", gzipped_zeros(50 * MB), content_encoding="gzip", content_type="text/html")

    tracemalloc.start()
    try:
        with requests.Session() as session, pytest.raises(FetchError) as caught:
            get_text(url, session=session, max_bytes=MB, backoff=0.01)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert str(caught.value) == (f"index page larger than {MB} bytes (1.0 MB; it inflates past that): {url}; an index "
                                 "of links is far smaller, so check the URL, or the mirror in invoke.yaml that "
                                 "serves it")
    assert caught.value.exit_code == 3
    assert peak < 8 * MB  # never the 50 MiB the bomb holds
    assert len(server.requests("/simple/bomb/")) == 1  # not retried


def test_the_default_page_bound_is_64_mib(server: FileServer) -> None:
    url = server.add("/simple/bomb/", gzipped_zeros(65 * MB), content_encoding="gzip")

    with requests.Session() as session, pytest.raises(FetchError, match=rf"^index page larger than {64 * MB} bytes"):
        get_text(url, session=session, backoff=0.01)


def test_a_page_announcing_more_than_the_bound_is_refused_unread(server: FileServer) -> None:
    url = server.add("/simple/huge/", b"x" * 100_000, throttle=100_000)  # 1 s in full

    started = time.monotonic()
    with requests.Session() as session, pytest.raises(FetchError, match=r"^index page larger than 50000 bytes \(50.0 "
                                                                        r"KB; the server announces 100000 bytes\)"):
        get_text(url, session=session, max_bytes=50_000, backoff=0.01)

    assert time.monotonic() - started < 0.8


def test_an_endless_page_stops_at_the_bound(server: FileServer) -> None:
    url = server.add("/simple/endless/", b"<a href='x.whl'>x</a>\n" * 1000, endless=True)

    with requests.Session() as session, pytest.raises(FetchError, match=r"^index page larger than 1000000 bytes "
                                                                        r"\(1.0 MB; more than that arrived\)"):
        get_text(url, session=session, max_bytes=1_000_000, backoff=0.01)


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(("encoding", "compress"), [
    ("gzip", gzip.compress),
    ("gzip", lambda data: gzip.compress(data[:1000]) + gzip.compress(data[1000:])),  # two members, as urllib3 reads
    ("deflate", zlib.compress),
    ("deflate", raw_deflate),  # what some servers send as 'deflate'
])
def test_a_compressed_page_is_decoded_whole_up_to_its_bound(
    server: FileServer, encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    text = "<a href='torch-2.0.0+cpu-cp311-cp311-linux_x86_64.whl'>torch (café)</a>\n" * 500
    page = text.encode("iso-8859-1")
    url = server.add("/simple/torch/", compress(page), content_encoding=encoding,
                     content_type="text/html; charset=ISO-8859-1")

    with requests.Session() as session:
        assert get_text(url, session=session, max_bytes=len(page), backoff=0.01) == text  # exactly the bound: read

    [request] = server.requests("/simple/torch/")
    assert request.headers["accept-encoding"] == "gzip, deflate"

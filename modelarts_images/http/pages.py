"""Index pages (a PEP 503 simple index, or a page of links such as PyTorch's): fetched with the retry rules of a
download, read raw and decoded here (gzip, deflate) with a bound on their decoded size, so a gzip bomb cannot
allocate more than the bound.
"""

from __future__ import annotations

import logging
import zlib
from email.message import Message

import requests

from modelarts_images.errors import FetchError
from modelarts_images.http.session import (
    DEFAULT_MIN_SPEED,
    DEFAULT_SPEED_WINDOW,
    Body,
    Speed,
    check_status,
    content_length,
    request,
)
from modelarts_images.shared import redact, retry
from modelarts_images.shared.text import size as shown_size

log = logging.getLogger(__name__)

DEFAULT_MAX_PAGE = 64 << 20  # bytes of a decoded index page; the largest real one (torch_stable.html) is ~5 MB
PAGE_ENCODINGS = "gzip, deflate"  # what get_text accepts: index pages compress well, and both are decoded here
_PAGE_CHUNK = 1 << 16
_GZIP_MAGIC = b"\x1f"  # first byte of a gzip member


def get_text(
    url: str, *, session: requests.Session, retries: int = 4, backoff: float = 0.5,
    timeouts: tuple[float, float] = (10, 30), max_bytes: int = DEFAULT_MAX_PAGE, min_speed: int = DEFAULT_MIN_SPEED,
    speed_window: float = DEFAULT_SPEED_WINDOW,
) -> str:
    """An index page, with the same retry rules as a download (429, 5xx and connection errors retried, other 4xx
    not). Its body is read raw and decoded here (gzip, deflate): more than `max_bytes` received or decoded, a
    gzip bomb included, is a FetchError before the memory is spent."""

    def once(attempt: int) -> str:
        with request(url, session, 0, None, timeouts, accept_encoding=PAGE_ENCODINGS) as response:
            check_status(url, response)
            return _read_page(url, response, max_bytes=max_bytes, read_timeout=timeouts[1],
                              speed=Speed(min_speed, speed_window))

    def give_up(attempts: int, failure: retry.TransientError) -> FetchError:
        return FetchError(f"cannot read {redact.url(url)} after {attempts} attempts: {failure.final}")

    return retry.call(once, backoff=retry.Backoff(retries=retries, base=backoff), describe=redact.url(url),
                      give_up=give_up, log=log)


def _read_page(url: str, response: requests.Response, *, max_bytes: int, read_timeout: float, speed: Speed) -> str:
    """The page's text; a cut or a stall while reading it is transient like one before it."""
    length = content_length(response)
    if length is not None and length > max_bytes:
        raise _page_too_large(url, max_bytes, f"the server announces {length} bytes")
    decoder = _page_decoder(url, response.headers.get("Content-Encoding"))
    page = bytearray()
    raw = 0
    body = Body(response, read_timeout, where=lambda: f"{raw} bytes of the page")
    while chunk := body.read(_PAGE_CHUNK):
        raw += len(chunk)
        if raw > max_bytes:  # even a body that decodes to little: an endless stream must end
            raise _page_too_large(url, max_bytes, "more than that arrived")
        try:
            decoder.feed(chunk, page, max_bytes)
        except zlib.error as exc:  # a corrupt body does not heal by retrying
            raise FetchError(f"cannot read {redact.url(url)}: its compressed body is corrupt ({exc})") from None
        if len(page) > max_bytes:
            raise _page_too_large(url, max_bytes, "it inflates past that")
        speed.add(len(chunk))
    if length is not None and raw < length:
        raise retry.TransientError(f"connection cut after {raw} of {length} bytes of the page")
    decoder.end()
    try:
        return page.decode(_charset(response), errors="replace")
    except LookupError:  # an unknown charset, or one that is no text encoding ('base64'): utf-8 rather than fail
        return page.decode("utf-8", errors="replace")


def _page_too_large(url: str, max_bytes: int, seen: str) -> FetchError:
    return FetchError(f"index page larger than {max_bytes} bytes ({shown_size(max_bytes)}; {seen}): "
                      f"{redact.url(url)}; an index of links is far smaller, so check the URL, or the mirror in "
                      "invoke.yaml that serves it")


class _Identity:
    """A body sent as is."""

    def feed(self, data: bytes, out: bytearray, limit: int) -> None:
        out += data[: limit + 1 - len(out)]  # one byte past the limit shows the caller it was crossed

    def end(self) -> None:
        """Nothing to check: the transfer's own length check saw any cut."""


class _Inflate:
    """gzip or deflate, inflated with zlib's max_length so that no call makes more than the bound allows: a few
    kilobytes of gzip can inflate to gigabytes, which requests would allocate whole."""

    def __init__(self, gzip: bool) -> None:
        self.gzip = gzip
        self.head = b""  # the first bytes of a deflate body, until its format can be told
        self.inflater: zlib._Decompress | None = None

    def feed(self, data: bytes, out: bytearray, limit: int) -> None:
        """Inflate `data` onto `out`, stopping once `out` holds more than `limit` bytes; zlib.error when corrupt."""
        if self.inflater is None:
            data = self.head + data
            if not self.gzip and len(data) < 2:
                self.head = data
                return
            self.inflater = zlib.decompressobj(self._wbits(data))
        pending = data
        while pending and len(out) <= limit:
            if self.inflater.eof:
                pending = self._next_member(pending)
                continue
            out += self.inflater.decompress(pending, min(limit + 1 - len(out), _PAGE_CHUNK))
            pending = self.inflater.unused_data if self.inflater.eof else self.inflater.unconsumed_tail

    def _next_member(self, pending: bytes) -> bytes:
        """After the end of a stream: gzip members may follow each other (as urllib3 reads them); anything else
        after the end is ignored, as urllib3 does."""
        if self.gzip and pending[:1] == _GZIP_MAGIC:
            self.inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            return pending
        return b""

    def _wbits(self, data: bytes) -> int:
        if self.gzip:
            return 16 + zlib.MAX_WBITS
        # 'deflate' is meant to be zlib-wrapped, but some servers send raw deflate: tell them by the zlib header.
        zlib_header = data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0
        return zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS

    def end(self) -> None:
        if self.inflater is None and not self.head:
            return  # an empty body
        if self.inflater is None or not self.inflater.eof:
            raise retry.TransientError("the compressed page ended before its end")


def _page_decoder(url: str, encoding: str | None) -> _Identity | _Inflate:
    coding = (encoding or "identity").strip().lower()
    if coding == "identity":
        return _Identity()
    if coding in ("gzip", "x-gzip", "deflate"):
        return _Inflate(gzip=coding != "deflate")
    raise FetchError(f"cannot read {redact.url(url)}: it is sent with Content-Encoding {coding!r}, which this tool "
                     f"does not decode (it asks for {PAGE_ENCODINGS})")


def _charset(response: requests.Response) -> str:
    """The charset of the Content-Type, else utf-8 (what index pages are in practice; bad bytes are replaced)."""
    header = Message()
    header["Content-Type"] = response.headers.get("Content-Type", "")
    return header.get_content_charset() or "utf-8"

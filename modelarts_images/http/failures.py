"""Why a connection to a server failed, in one line that names the cause and the next step, and whether another
attempt can help: written once for every edge that talks to a server.

`classify()` reads the exception requests raises (its chain down to the socket's own error: a resolver's
gaierror, ECONNREFUSED, an ssl.SSLError, urllib3's connect timeout or proxy error); `classify_text()` reads another
client's words for the same failures (pip's, which are urllib3's; the Docker Engine's, which are Go's: "dial tcp:
lookup HOST: no such host", "connect: connection refused", "x509: ..."). Both give a `Failure`: its kind, the host
and port, a short `cause` for a retry's log line, and `text`, the one line a message ends with.

What is retried (`RETRIES`), and why:

- a name that does not resolve (DNS), a TLS failure and a proxy's refusal: never. The resolver, the certificate
  and the proxy are this machine's configuration: the next attempt gets the same answer, so five attempts only
  put off the message by their backoff;
- a refused connection, and a network without a route to the host: once. A server or registry that restarts
  (a registry coming up in CI, a mirror's nginx reloading, a VPN reconnecting) refuses for a moment; one that
  still refuses after the first pause is down or the port is wrong, and the further pauses (up to a minute in
  all) would only delay saying so;
- no connection within the timeout, no answer within it, and a connection reset or closed early: as many times
  as the caller's backoff allows. Packets lost on a congested path, and servers slow or dropping connections
  under load, heal.

The messages name the settings that route around the failure for the caller (`Route`): the proxy variables and
`modelarts.mirrors` for downloads, pip's own for its index, the engine's for what the engine fetches.
"""

from __future__ import annotations

import dataclasses
import errno
import re
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
import requests.utils

# urllib3 is requests' transport: its exceptions are the links of the chain that say what failed.
import urllib3.exceptions

from modelarts_images import declared
from modelarts_images.shared import redact, retry
from modelarts_images.shared.choices import Choice
from modelarts_images.shared.text import one_line


class Kind(Choice):
    """What went wrong on the way to a server."""

    DNS = "dns"  # the host name does not resolve
    REFUSED = "refused"  # nothing accepts connections at host:port
    TIMEOUT = "timeout"  # no connection within the connect timeout
    UNREACHABLE = "unreachable"  # no route to the host's network
    TLS = "tls"  # the TLS handshake failed: a certificate not trusted, or no TLS on that port
    PROXY = "proxy"  # the proxy could not be reached, or refused to connect us
    NO_ANSWER = "no-answer"  # connected, but no answer within the read timeout
    RESET = "reset"  # the connection was reset or closed before an answer


# The most retries each kind is worth (None: as many as the caller's backoff allows); see the module doc.
RETRIES: dict[Kind, int | None] = {Kind.DNS: 0, Kind.TLS: 0, Kind.PROXY: 0, Kind.REFUSED: 1, Kind.UNREACHABLE: 1,
                                   Kind.TIMEOUT: None, Kind.NO_ANSWER: None, Kind.RESET: None}


@dataclass(frozen=True, kw_only=True)
class Route:
    """The settings that lead to a server another way, named in the advice of a message."""

    proxy: str = "a proxy (HTTPS_PROXY)"  # how a proxy is set for the client that failed
    proxy_names: str = "HTTPS_PROXY/HTTP_PROXY (and NO_PROXY)"  # the proxy settings to check
    ca: str = "REQUESTS_CA_BUNDLE"  # where a private CA's certificate goes
    elsewhere: str = ""  # another source of the same files: 'a mirror (modelarts.mirrors in invoke.yaml)'


MIRRORS = f"a mirror ({declared.SECTION}.mirrors in invoke.yaml)"
FETCH = Route(elsewhere=MIRRORS)  # downloads and index pages: requests, with modelarts.mirrors
REGISTRY = Route()  # a registry's v2 API: requests
PIP = Route(proxy="a proxy (HTTPS_PROXY, or proxy in pip.conf)", proxy_names="HTTPS_PROXY or proxy in pip.conf",
            ca="PIP_CERT (or cert in pip.conf)", elsewhere="another index (PIP_INDEX_URL, or index-url in pip.conf)")
ENGINE = Route(proxy="the engine's proxy (HTTPS_PROXY in dockerd's environment, or proxies in daemon.json)",
               proxy_names="the engine's proxy (HTTPS_PROXY in dockerd's environment, or proxies in daemon.json)",
               ca="/etc/docker/certs.d/<host>/ca.crt on the engine's machine")


@dataclass(frozen=True, kw_only=True)
class Failure:
    """One failed connection: what kind, to where, and the words for it."""

    kind: Kind
    host: str
    port: int | None
    cause: str  # what failed, short, for a retry's log line: 'cannot resolve download.pytorch.org'
    why: str  # what it likely means: 'DNS lookup failed: no network, or the name is wrong'
    advice: str  # the next step: 'check the network, set a proxy (HTTPS_PROXY) or a mirror (...)'

    @property
    def text(self) -> str:
        """The one line a message ends with: cause (why): next step."""
        return f"{self.cause} ({self.why}): {self.advice}"

    @property
    def retries(self) -> int | None:
        return RETRIES[self.kind]

    @property
    def transient(self) -> bool:
        """Whether another attempt may work at all."""
        return self.retries != 0

    def retry(self) -> retry.TransientError:
        """The failure as retry.call sees it: its short cause logged per retry, its whole line at the end."""
        return retry.TransientError(self.cause, retries=self.retries, final=self.text)


def where(host: str, port: int | None) -> str:
    """'host:port', '[::1]:443'; the host alone when the port is unknown."""
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port else shown


def address(url: str) -> tuple[str, int | None]:
    """The host and port a URL connects to (the scheme's default port when it names none)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is no number: the URL itself is wrong, and says so elsewhere
        return "", None
    default = {"https": 443, "http": 80}.get(parts.scheme.lower())
    return parts.hostname or "", port or default


# --------------------------------------------------------------------------------------------------------------
# The advice for each kind


def failure(kind: Kind, host: str, port: int | None, route: Route, *, detail: str = "", proxy: str = "",
            timeout: float | None = None) -> Failure:
    """The words for a failure of `kind` at host:port, with the next steps `route` names. `detail`: the client's
    own short words where they add to the kind (the TLS reason, the proxy's answer, the reset's errno text)."""
    at = where(host, port)
    around = f"set {route.proxy} or {route.elsewhere}" if route.elsewhere else f"or set {route.proxy}"
    if kind is Kind.DNS:
        return Failure(kind=kind, host=host, port=port, cause=f"cannot resolve {host or 'the host'}",
                       why="DNS lookup failed: no network, or the name is wrong",
                       advice=f"check the network, {around}" if route.elsewhere else
                       f"check the network and the name, {around}")
    if kind is Kind.REFUSED:
        return Failure(kind=kind, host=host, port=port, cause=f"{at} refused the connection",
                       why="nothing listens on that port, or a firewall rejects it",
                       advice=f"check the host and port, {around}" if route.elsewhere else
                       f"check that the server runs and the host and port are right, {around}")
    if kind is Kind.TIMEOUT:
        within = f" within {timeout:g}s" if timeout else ""
        return Failure(kind=kind, host=host, port=port, cause=f"no connection to {at}{within}",
                       why="a firewall drops the packets, or the network is down or slow",
                       advice=f"check the network, {around}")
    if kind is Kind.NO_ANSWER:
        within = f" within {timeout:g}s" if timeout else " in time"
        return Failure(kind=kind, host=host, port=port, cause=f"no answer from {at}{within}",
                       why="the server is slow or overloaded, or something in the way holds the connection",
                       advice=f"try again later, {around}")
    if kind is Kind.UNREACHABLE:
        return Failure(kind=kind, host=host, port=port, cause=f"{at} is unreachable",
                       why=f"{detail or 'no route to its network'}: no network, or a VPN or route is missing",
                       advice=f"check the network, {around}")
    if kind is Kind.TLS:
        return _tls(host, port, route, detail)
    if kind is Kind.PROXY:
        return _proxy(host, port, route, detail, proxy)
    return Failure(kind=kind, host=host, port=port, cause=f"the connection to {at} failed",
                   why=detail or "it was reset or closed before an answer",
                   advice=f"check the network, {around}")


def _tls(host: str, port: int | None, route: Route, detail: str) -> Failure:
    at = where(host, port)
    lowered = detail.lower()
    ca = route.ca.replace("<host>", host if port in (None, 443) else at)  # the engine's certs.d/<host[:port]>/
    if "certificate" in lowered or "x509" in lowered:
        advice = (f"a proxy that inspects HTTPS, or a server with a certificate from a private CA, needs that CA's "
                  f"certificate in {ca}")
    elif "wrong_version_number" in lowered or "wrong version number" in lowered or "http response" in lowered \
            or "record layer" in lowered:
        detail = f"{detail}: the port does not speak TLS"
        advice = (f"an https:// address on a plain-HTTP port, or a proxy in the way: check the address's scheme and "
                  f"port, and {route.proxy_names}")
    else:
        advice = (f"a proxy in the way, or a private CA, may be the cause: check {route.proxy_names}, or put the CA's "
                  f"certificate in {ca}")
    return Failure(kind=Kind.TLS, host=host, port=port, cause=f"TLS with {at} failed",
                   why=detail or "the handshake failed", advice=advice)


def _proxy(host: str, port: int | None, route: Route, detail: str, proxy: str) -> Failure:
    status = re.search(r"\b(40[37])\b", detail)
    if status and status.group(1) == "407":
        advice = f"the proxy wants a login: put USER:PASSWORD@ in its URL ({route.proxy_names})"
    elif status:
        advice = f"the proxy does not let this machine reach {host}: ask its keeper, or check {route.proxy_names}"
    else:
        advice = f"check {route.proxy_names}"
    named = f" {proxy}" if proxy else ""
    return Failure(kind=Kind.PROXY, host=host, port=port, cause=f"the proxy{named} failed the connection to {host}",
                   why=detail or "the proxy could not be reached", advice=advice)


# --------------------------------------------------------------------------------------------------------------
# From an exception


def chain(error: BaseException, limit: int = 24) -> Iterator[BaseException]:
    """`error` and what caused it, as Python shows them (__cause__, else an unsuppressed __context__), with
    urllib3's `reason` and exceptions held in `args` (requests wraps urllib3's MaxRetryError there)."""
    seen: set[int] = set()
    todo = [error]
    while todo and len(seen) < limit:
        item = todo.pop(0)
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        context = item.__cause__ or (None if item.__suppress_context__ else item.__context__)
        todo += [link for link in (context, getattr(item, "reason", None), *item.args)
                 if isinstance(link, BaseException)]


_TIMEOUT_SAID = re.compile(r"connect timeout=([0-9.]+)")
_TUNNEL = re.compile(r"Tunnel connection failed: (.*)")


def classify(error: BaseException, url: str, route: Route = FETCH, *, connect_timeout: float | None = None,
             read_timeout: float | None = None) -> Failure | None:
    """What `error`, raised by requests for `url`, says of the connection; None when it is no connection failure
    (an invalid URL, a redirect loop): the caller keeps its own words for those."""
    links = list(chain(error))
    host, port = address(url)
    if url.lower().startswith("http://"):  # a plain-http address goes through HTTP_PROXY
        route = dataclasses.replace(route, proxy=route.proxy.replace("HTTPS_PROXY", "HTTP_PROXY"))
    if any(isinstance(link, (requests.exceptions.ProxyError, urllib3.exceptions.ProxyError)) for link in links):
        return failure(Kind.PROXY, host, port, route, detail=_proxy_detail(links), proxy=_proxy_of(url))
    if any(isinstance(link, (ssl.SSLError, urllib3.exceptions.SSLError, requests.exceptions.SSLError))
           for link in links):
        return failure(Kind.TLS, host, port, route, detail=_tls_detail(links))
    if any(isinstance(link, (socket.gaierror, urllib3.exceptions.NameResolutionError)) for link in links):
        return failure(Kind.DNS, host, port, route)
    errnos = {link.errno for link in links if isinstance(link, OSError)}
    if errno.ECONNREFUSED in errnos:
        return failure(Kind.REFUSED, host, port, route)
    unreachable = next((link for link in links if isinstance(link, OSError)
                        and link.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH)), None)
    if unreachable is not None:
        return failure(Kind.UNREACHABLE, host, port, route, detail=str(unreachable.strerror or ""))
    if any(_connect_timeout(link) for link in links):
        said = next((match for link in links if (match := _TIMEOUT_SAID.search(str(link)))), None)
        return failure(Kind.TIMEOUT, host, port, route,
                       timeout=float(said.group(1)) if said else connect_timeout)
    if any(isinstance(link, (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError))
           for link in links):
        return failure(Kind.NO_ANSWER, host, port, route, timeout=read_timeout)
    if isinstance(error, (requests.exceptions.ConnectionError, urllib3.exceptions.ProtocolError,
                          urllib3.exceptions.NewConnectionError, ConnectionError)):
        return failure(Kind.RESET, host, port, route, detail=_reset_detail(links))
    return None


def _connect_timeout(link: BaseException) -> bool:
    """urllib3's NewConnectionError is a ConnectTimeoutError by descent; only a real one is a timeout (requests
    draws the same line for its ConnectTimeout)."""
    return isinstance(link, requests.exceptions.ConnectTimeout) or (
        isinstance(link, urllib3.exceptions.ConnectTimeoutError)
        and not isinstance(link, urllib3.exceptions.NewConnectionError))


def _tls_detail(links: list[BaseException]) -> str:
    """The TLS library's own reason, without its source-file note: 'certificate verify failed: self-signed
    certificate in certificate chain', 'WRONG_VERSION_NUMBER'."""
    for link in links:
        if isinstance(link, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {link.verify_message}" if link.verify_message else \
                "certificate verify failed"
    for link in links:
        if isinstance(link, ssl.SSLError) and link.reason:
            return str(link.reason)
    for link in links:
        if isinstance(link, ssl.SSLError):
            return re.sub(r"\s*\(_ssl\.c:\d+\)", "", one_line(str(link.strerror or link), 160))
    return ""


def _proxy_detail(links: list[BaseException]) -> str:
    for link in reversed(links):  # the innermost says it alone; the outer ones quote it inside their reprs
        tunnel = _TUNNEL.search(str(link))
        if tunnel:
            return f"it answered {one_line(tunnel.group(1), 120)}"
    if any(isinstance(link, (socket.gaierror, urllib3.exceptions.NameResolutionError)) for link in links):
        return "its name does not resolve"
    if any(isinstance(link, OSError) and link.errno == errno.ECONNREFUSED for link in links):
        return "it refused the connection: nothing listens there"
    if any(_connect_timeout(link) for link in links):
        return "no connection to it within the timeout"
    return "the proxy could not be reached"


def _proxy_of(url: str) -> str:
    """The proxy the environment sets for `url`, shown without its credentials; '' when none is set."""
    try:
        proxy = requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url))
    except (ValueError, OSError):
        return ""
    return redact.url(proxy) if proxy else ""


def _reset_detail(links: list[BaseException]) -> str:
    """The socket's own words ('Connection reset by peer'), else http.client's ('Remote end closed connection
    without response'); '' when neither says more than the kind does."""
    for link in reversed(links):
        if isinstance(link, OSError) and link.strerror:
            return str(link.strerror)
    inner = links[-1]
    return one_line(str(inner), 120) if type(inner).__module__ in ("builtins", "http.client") else ""


# --------------------------------------------------------------------------------------------------------------
# From another client's words

# (kind, words), tried in order: the first match decides. A lookup that times out is DNS, not a timeout; a TLS
# handshake that times out is a timeout, not a TLS problem; a proxy's failure is the proxy's whatever it was.
_WORDS: tuple[tuple[Kind, re.Pattern[str]], ...] = tuple((kind, re.compile(words, re.IGNORECASE)) for kind, words in (
    (Kind.PROXY, r"proxyconnect tcp|Unable to connect to proxy|ProxyError|Tunnel connection failed|"
                 r"Proxy Authentication Required"),
    (Kind.DNS, r"dial tcp: lookup \S+|no such host|Name or service not known|Temporary failure in name resolution|"
               r"NameResolutionError|nodename nor servname|getaddrinfo failed|Failed to resolve|"
               r"No address associated with hostname"),
    (Kind.TIMEOUT, r"TLS handshake timeout|i/o timeout|Client\.Timeout exceeded|ConnectTimeoutError|"
                   r"connect(?:ion)? timed out|Connection to \S+ timed out|context deadline exceeded"),
    (Kind.NO_ANSWER, r"ReadTimeoutError|Read timed out"),
    (Kind.TLS, r"x509:|certificate verify failed|CERTIFICATE_VERIFY_FAILED|SSLError|tls: |WRONG_VERSION_NUMBER|"
               r"server gave HTTP response to HTTPS client|first record does not look like a TLS handshake"),
    (Kind.REFUSED, r"connection refused|ConnectionRefusedError|Errno 111\b"),
    (Kind.UNREACHABLE, r"network is unreachable|no route to host"),
    (Kind.RESET, r"connection reset by peer|ConnectionResetError|RemoteDisconnected|Connection aborted|"
                 r"unexpected EOF|broken pipe"),
))
_HOSTS = (
    re.compile(r"dial tcp: lookup (?P<host>[^\s:]+?)(?: on |: |$)"),
    re.compile(r"host='(?P<host>[^']+)', port=(?P<port>\d+)"),
    re.compile(r"dial tcp (?P<host>\[[0-9a-fA-F:]+\]|[^\s:]+):(?P<port>\d+)"),
    re.compile(r"(?:Get|Head|Post|Put|Patch|Delete|GET|HEAD|POST|PUT) \"?(?P<url>https?://[^\"\s]+)"),
    re.compile(r"(?P<url>https?://[^\"'\s)]+)"),
)
_TLS_WORDS = re.compile(r"(x509: [^\"\n]*|certificate verify failed[^'\")\n(]*|WRONG_VERSION_NUMBER|"
                        r"server gave HTTP response to HTTPS client|"
                        r"first record does not look like a TLS handshake)", re.IGNORECASE)
_PROXY_WORDS = re.compile(r"(?:Tunnel connection failed: |proxyconnect tcp: )([^\"'\n)]+)")


def classify_text(text: str, route: Route, *, host: str = "", port: int | None = None) -> Failure | None:
    """The failure another client's message describes (pip's output, the Docker Engine's error), None when its
    words name no connection failure. `host`/`port`: where it connected, when the caller knows better than the
    words."""
    kind = next((kind for kind, words in _WORDS if words.search(text)), None)
    if kind is None:
        return None
    if not host:  # a proxy's failure names the proxy's address first: the target is in the URL
        host, port = _host_in(text, port, _HOSTS[3:] + _HOSTS if kind is Kind.PROXY else _HOSTS)
    detail = proxy = ""
    if kind is Kind.TLS:
        said = _TLS_WORDS.search(text)
        detail = one_line(said.group(1).rstrip(" .:;,"), 160) if said else ""
    elif kind is Kind.PROXY:
        said = _PROXY_WORDS.search(text)
        if said and "Tunnel" in said.group(0):
            detail = f"it answered {one_line(said.group(1), 120)}"
        elif said:
            dialled = re.match(r"dial tcp (\S+?): (.*)", said.group(1))
            proxy = dialled.group(1) if dialled else ""
            rest = classify_text(dialled.group(2), route) if dialled else None
            detail = {Kind.REFUSED: "it refused the connection: nothing listens there",
                      Kind.DNS: "its name does not resolve",
                      Kind.TIMEOUT: "no connection to it within the timeout"}.get(rest.kind, "") if rest else ""
    elif kind in (Kind.RESET, Kind.UNREACHABLE):
        said = _WORDS[[k for k, _ in _WORDS].index(kind)][1].search(text)
        detail = said.group(0) if said else ""
    return failure(kind, host, port, route, detail=detail, proxy=proxy)


def _host_in(text: str, port: int | None, patterns: tuple[re.Pattern[str], ...]) -> tuple[str, int | None]:
    for pattern in patterns:
        match = pattern.search(text)
        if match is None:
            continue
        if "url" in match.groupdict():
            return address(match.group("url"))
        found = match.group("host").strip("[]")
        said = match.groupdict().get("port")
        return found, int(said) if said else port
    return "", port

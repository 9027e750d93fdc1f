"""How far this machine gets to a server, stage by stage: the name (DNS), a connection (TCP), the proxy's tunnel,
the TLS handshake, and the HTTP status line; and whether a registry takes the login from the environment.

`inv doctor` asks each host once. One deadline bounds all the stages of a probe: sockets get what is left of it,
and the name lookup (getaddrinfo has no timeout of its own) runs in a daemon thread that is left behind at the
deadline, so a resolver that never answers cannot hold the check or the interpreter's exit.

A proxy from the environment is used as requests would use it (HTTPS_PROXY / HTTP_PROXY / ALL_PROXY, NO_PROXY,
requests' own reading of them): the name and the connection are then the proxy's, an https URL goes through a
CONNECT tunnel, and the probe says which variable named the proxy. The probe sends one `GET` with `Range:
bytes=0-0` (a file's first byte at most) and reads nothing but the status line; it never sends credentials.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import SplitResult, unquote, urlsplit

import requests
import requests.utils

from modelarts_images.errors import RegistryError
from modelarts_images.http.registry import LoginRejectedError, Registry, base_url
from modelarts_images.shared import redact
from modelarts_images.shared.choices import Choice
from modelarts_images.shared.credentials import Credentials, hide_key
from modelarts_images.shared.text import one_line

TIMEOUT_S = 3.0  # every stage of one probe together
USER_AGENT = "modelarts-images-doctor"
MAX_HEAD = 16 * 1024  # bytes of a status line (or a proxy's answer) read before it counts as no HTTP
_STATUS = re.compile(rb"^HTTP/\d(?:\.\d)? (\d{3})(?: ([^\r\n]*))?\r?\n")
_DEFAULT_PORTS = {"http": 80, "https": 443}

T = TypeVar("T")


class Stage(Choice):
    """The stages of a probe, in order; a probe reports the last it passed and the one that failed."""

    START = "start"  # nothing done yet: the URL or the proxy cannot be probed
    DNS = "dns"  # the name resolved (the proxy's, through a proxy)
    TCP = "tcp"  # a connection opened
    PROXY = "proxy"  # the proxy opened its tunnel (CONNECT), for an https URL through a proxy
    TLS = "tls"  # the TLS handshake (and the certificate check) passed
    HTTP = "http"  # an HTTP status line came back


@dataclass(frozen=True, kw_only=True)
class Reach:
    """How far a probe got."""

    url: str  # what was asked, credentials masked
    origin: str  # scheme://host:port
    reached: Stage  # the last stage passed
    passed: tuple[Stage, ...] = ()  # every stage passed, in order (PROXY only through a proxy, TLS only for https)
    failed: Stage | None = None  # the stage that failed; None: the server answered (status)
    problem: str = ""  # why it failed, one line
    timed_out: bool = False  # the deadline passed during `failed`
    status: int | None = None
    reason: str = ""
    proxy: str | None = None  # the proxy used, credentials masked; None: direct
    proxy_variable: str | None = None  # the environment variable that named it
    address: str = ""  # the address connected to
    seconds: float = 0.0

    @property
    def answered(self) -> bool:
        return self.status is not None


class _StageError(Exception):
    def __init__(self, stage: Stage, problem: str, *, timed_out: bool = False) -> None:
        super().__init__(problem)
        self.stage = stage
        self.problem = problem
        self.timed_out = timed_out


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.started = time.monotonic()
        self.end = self.started + seconds
        self.seconds = seconds

    def left(self, stage: Stage, doing: str) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise _StageError(stage, f"timed out after {self.seconds:g} s {doing}", timed_out=True)
        return remaining

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def bounded(call: Callable[[], T], seconds: float, name: str = "doctor-probe") -> T:
    """call() in a daemon thread; TimeoutError when it has not returned within `seconds` (the thread is left to
    finish or not: being a daemon, it never holds the interpreter's exit). Its own exception is raised here."""
    outcome: dict[str, T] = {}
    failure: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # handed to the caller, whatever it is
            failure.append(error)
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    if not done.wait(max(seconds, 0.0)):
        raise TimeoutError(f"no answer within {seconds:g} s")
    if failure:
        raise failure[0]
    return outcome["value"]


# --------------------------------------------------------------------------------------------------------------
# Proxies, as requests reads them


def environment_proxy(url: str) -> tuple[str | None, str | None]:
    """The proxy requests would use for `url` from the environment, and the variable that names it."""
    proxies = requests.utils.get_environ_proxies(url)
    chosen = requests.utils.select_proxy(url, proxies) if proxies else None
    if not chosen:
        return None, None
    scheme = urlsplit(url).scheme.lower()
    for key in (scheme, "all"):
        for name in (f"{key}_proxy", f"{key.upper()}_PROXY"):
            value = os.environ.get(name)
            if value and value.strip() == chosen.strip():
                return chosen, name
    return chosen, "the environment"


# --------------------------------------------------------------------------------------------------------------
# The probe


def reach(url: str, *, timeout: float = TIMEOUT_S) -> Reach:
    """Probe `url`'s server, stage by stage, within `timeout` seconds in all; never raises."""
    deadline = _Deadline(timeout)
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    except ValueError:
        port = 0
    shown = redact.url(url)
    origin = f"{scheme}://{_bracketed(host)}:{port}"
    result = Reach(url=shown, origin=origin, reached=Stage.START)
    if scheme not in _DEFAULT_PORTS or not host or not port:
        return replace(result, failed=Stage.START, problem=f"{shown} is not an http:// or https:// URL with a host")
    proxy, variable = environment_proxy(url)
    result = replace(result, proxy=redact.url(proxy) if proxy else None, proxy_variable=variable)
    reached, passed = Stage.START, []
    sock: socket.socket | None = None
    try:
        target_host, target_port, proxy_parts = host, port, None
        if proxy:
            proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            if proxy_parts.scheme.lower() not in ("http", "https") or not proxy_parts.hostname:
                raise _StageError(Stage.START, f"the proxy {redact.url(proxy)} ({variable}) is not an http:// or "
                                           "https:// proxy: not probed")
            target_host = proxy_parts.hostname
            target_port = proxy_parts.port or _DEFAULT_PORTS[proxy_parts.scheme.lower()]
        try:
            addresses = _resolve(target_host, target_port, deadline)
            reached = Stage.DNS
            passed.append(reached)
            sock, address = _connect(addresses, target_host, target_port, deadline)
        except _StageError as failed:
            if proxy is not None:  # what failed is the way to the proxy, not to the server
                failed.problem = f"the proxy {redact.url(proxy)}: {failed.problem}"
            raise
        result = replace(result, address=address)
        reached = Stage.TCP
        passed.append(reached)
        if proxy_parts is not None and proxy_parts.scheme.lower() == "https":
            sock = _tls(sock, proxy_parts.hostname or "", deadline, Stage.TCP, what="the proxy")
        absolute = False
        if proxy_parts is not None and scheme == "https":
            _tunnel(sock, host, port, proxy_parts, deadline)
            reached = Stage.PROXY
            passed.append(reached)
        elif proxy_parts is not None:
            absolute = True  # plain http through a proxy: the request names the whole URL
        if scheme == "https":
            sock = _tls(sock, host, deadline, reached)
            reached = Stage.TLS
            passed.append(reached)
        status, reason = _status(sock, parts, host, port, deadline, absolute=absolute,
                                 proxy_auth=_proxy_authorization(proxy_parts) if absolute else None)
    except _StageError as failed:
        return replace(result, reached=reached, passed=tuple(passed), failed=failed.stage,
                       problem=redact.text(one_line(failed.problem)), timed_out=failed.timed_out,
                       seconds=deadline.elapsed())
    finally:
        if sock is not None:
            sock.close()
    return replace(result, reached=Stage.HTTP, passed=(*passed, Stage.HTTP), status=status, reason=reason,
                   seconds=deadline.elapsed())


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


Address = tuple[int, tuple[str, int] | tuple[str, int, int, int]]  # (family, sockaddr) of an IPv4 or IPv6 address


def _resolve(host: str, port: int, deadline: _Deadline) -> list[Address]:
    seconds = deadline.left(Stage.DNS, f"looking up {host}")
    try:
        found = bounded(lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), seconds,
                        name=f"doctor-dns-{host}")
    except TimeoutError:
        raise _StageError(Stage.DNS, f"timed out after {deadline.seconds:g} s looking up {host}",
                          timed_out=True) from None
    except socket.gaierror as error:
        raise _StageError(Stage.DNS, f"{host} does not resolve ({error.strerror or error})") from None
    except (OSError, UnicodeError) as error:
        raise _StageError(Stage.DNS, f"{host} cannot be looked up ({error})") from None
    addresses = [(family, address) for family, _, _, _, address in found if family in (socket.AF_INET, socket.AF_INET6)]
    if not addresses:
        raise _StageError(Stage.DNS, f"{host} resolves to no IPv4 or IPv6 address")
    return addresses  # type: ignore[return-value]  # AF_INET/AF_INET6 addresses are tuples


def _connect(addresses: list[Address], host: str, port: int, deadline: _Deadline) -> tuple[socket.socket, str]:
    problems: list[str] = []
    for family, address in addresses:
        seconds = deadline.left(Stage.TCP, f"connecting to {host}:{port}"
                                + (f" ({'; '.join(problems)})" if problems else ""))
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(seconds)
        try:
            sock.connect(address)
            return sock, str(address[0])
        except TimeoutError:
            sock.close()
            raise _StageError(Stage.TCP, f"timed out after {deadline.seconds:g} s connecting to {address[0]} port "
                                         f"{port} ({host}): nothing answers (a firewall that drops, or no route)",
                              timed_out=True) from None
        except ConnectionRefusedError:
            sock.close()
            problems.append(f"{address[0]} port {port} refused the connection")
        except OSError as error:
            sock.close()
            problems.append(f"{address[0]} port {port}: {error.strerror or error}")
    named = "" if all(str(address[0]) == host for _, address in addresses) else f" ({host})"
    raise _StageError(Stage.TCP, "; ".join(problems) + f"{named}: nothing listens there, or a firewall refuses")


def _tls(sock: socket.socket, host: str, deadline: _Deadline, before: Stage, *, what: str = "") -> socket.socket:
    """The TLS handshake with requests' CA bundle (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, else certifi's)."""
    seconds = deadline.left(Stage.TLS, f"in the TLS handshake with {what or host}")
    cafile = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or \
        requests.utils.DEFAULT_CA_BUNDLE_PATH
    try:
        context = ssl.create_default_context(cafile=cafile if cafile and Path(cafile).is_file() else None)
    except (OSError, ssl.SSLError) as error:
        raise _StageError(Stage.TLS, f"the CA bundle {cafile} cannot be read: {error}") from None
    sock.settimeout(seconds)
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as error:
        raise _StageError(Stage.TLS, f"the certificate of {what or host} is not trusted: "
                                 f"{error.verify_message or error}") from None
    except TimeoutError:
        raise _StageError(Stage.TLS, f"timed out after {deadline.seconds:g} s in the TLS handshake with {what or host}",
                      timed_out=True) from None
    except (ssl.SSLError, OSError) as error:
        detail = getattr(error, "reason", None) or str(error)
        raise _StageError(Stage.TLS, f"the TLS handshake with {what or host} failed ({detail}): does it speak TLS on "
                                 "this port?") from None


def _proxy_authorization(proxy: SplitResult | None) -> str | None:
    """Basic credentials for the proxy, when its URL carries a user (as requests sends them)."""
    if proxy is None or not proxy.username:
        return None
    pair = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def _tunnel(sock: socket.socket, host: str, port: int, proxy: SplitResult, deadline: _Deadline) -> None:
    authority = f"{_bracketed(host)}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}", f"User-Agent: {USER_AGENT}"]
    authorization = _proxy_authorization(proxy)
    if authorization:
        lines.append(f"Proxy-Authorization: {authorization}")
    head = _exchange(sock, "\r\n".join(lines) + "\r\n\r\n", deadline, Stage.PROXY, "the proxy's answer to CONNECT",
                     whole_head=True)
    status, reason = _parse_status(head, Stage.PROXY, "the proxy")
    if status != 200:
        raise _StageError(Stage.PROXY, f"the proxy refused the tunnel to {authority}: HTTP {status} {reason}".rstrip())


def _status(sock: socket.socket, parts: SplitResult, host: str, port: int, deadline: _Deadline, *, absolute: bool,
              proxy_auth: str | None) -> tuple[int, str]:
    """The status line of a GET for the URL's first byte (the whole URL as the target, through a plain proxy)."""
    scheme = parts.scheme.lower()
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    authority = _bracketed(host) + ("" if port == _DEFAULT_PORTS[scheme] else f":{port}")
    target = f"{scheme}://{authority}{path}" if absolute else path
    lines = [f"GET {target} HTTP/1.1", f"Host: {authority}", f"User-Agent: {USER_AGENT}", "Accept: */*",
             "Range: bytes=0-0", "Connection: close"]
    if proxy_auth:
        lines.append(f"Proxy-Authorization: {proxy_auth}")
    head = _exchange(sock, "\r\n".join(lines) + "\r\n\r\n", deadline, Stage.HTTP, "the HTTP status")
    return _parse_status(head, Stage.HTTP, host)


def _exchange(sock: socket.socket, request: str, deadline: _Deadline, stage: Stage, waiting: str, *,
              whole_head: bool = False) -> bytes:
    """Send the request; read until the status line (or, `whole_head`, the end of the head) arrives."""
    try:
        sock.settimeout(deadline.left(stage, f"sending the request for {waiting}"))
        sock.sendall(request.encode("latin-1"))
        received = b""
        while True:
            end = b"\r\n\r\n" if whole_head else b"\n"
            if end in received or len(received) > MAX_HEAD:
                return received
            sock.settimeout(deadline.left(stage, f"waiting for {waiting}: the server accepted the connection "
                                                 "but does not answer"))
            chunk = sock.recv(4096)
            if not chunk:
                if received:
                    return received
                raise _StageError(stage, f"the server closed the connection without an answer (waiting for {waiting})")
            received += chunk
    except TimeoutError:
        raise _StageError(stage, f"timed out after {deadline.seconds:g} s waiting for {waiting}: the server accepted "
                                 "the connection but does not answer", timed_out=True) from None
    except (ssl.SSLError, OSError) as error:
        raise _StageError(stage, f"the connection failed while waiting for {waiting}: {error}") from None


def _parse_status(head: bytes, stage: Stage, who: str) -> tuple[int, str]:
    match = _STATUS.match(head)
    if match is None:
        raise _StageError(stage, f"{who} answered something that is not HTTP: {head[:40]!r}")
    return int(match.group(1)), (match.group(2) or b"").decode("latin-1", "replace").strip()


# --------------------------------------------------------------------------------------------------------------
# A registry's login


class LoginOutcome(Choice):
    ACCEPTED = "accepted"  # the registry took the login
    REJECTED = "rejected"  # it refused the user or the password
    ANONYMOUS = "anonymous"  # /v2/ answers without any login
    NOT_A_REGISTRY = "not-a-registry"  # the host answers, but not the v2 API
    UNREACHABLE = "unreachable"  # no HTTP answer (see the Reach)
    FAILED = "failed"  # reached, but the login could not be tried to the end (a timeout, an odd answer)
    NOT_TRIED = "not-tried"  # no credentials: only reached


@dataclass(frozen=True, kw_only=True)
class LoginCheck:
    registry: str
    reach: Reach
    outcome: LoginOutcome
    user: str = ""  # masked: the AK of a long-term login cut to four characters, any other name to three
    detail: str = ""  # masked
    seconds: float = 0.0


def masked_user(user: str) -> str:
    """A user name as doctor shows it: an SWR long-term login's AK cut to four characters ('cn-north-4@HPUA…'),
    any other name to its first three ('tes…')."""
    hidden = hide_key(user)
    if hidden != user:
        return hidden
    return user if len(user) <= 3 else user[:3] + "…"


def try_login(registry: str, credentials: Credentials | None, *, timeout: float = TIMEOUT_S) -> LoginCheck:
    """Whether `registry` is reached (GET /v2/), and takes `credentials` (Basic, or a token from the realm a
    Bearer challenge names), all within `timeout` seconds; never raises, never shows a secret."""
    started = time.monotonic()
    url = base_url(registry) + "/v2/"
    reached = reach(url, timeout=timeout)
    user = masked_user(credentials.username) if credentials else ""

    def done(outcome: LoginOutcome, detail: str = "") -> LoginCheck:
        hidden = credentials.hide(detail) if credentials else redact.text(detail)
        if credentials and credentials.username != masked_user(credentials.username):
            hidden = hidden.replace(credentials.username, masked_user(credentials.username))
        return LoginCheck(registry=registry, reach=reached, outcome=outcome, user=user, detail=one_line(hidden),
                          seconds=time.monotonic() - started)

    if not reached.answered:
        return done(LoginOutcome.UNREACHABLE, reached.problem)
    if credentials is None:
        return done(LoginOutcome.NOT_TRIED, f"/v2/ answered HTTP {reached.status}")
    left = timeout - (time.monotonic() - started)
    if left <= 0:
        return done(LoginOutcome.FAILED, f"timed out after {timeout:g} s before the login was tried")
    try:
        outcome, detail = bounded(lambda: _login(registry, credentials, left), left, name=f"doctor-login-{registry}")
    except TimeoutError:
        return done(LoginOutcome.FAILED, f"timed out after {timeout:g} s during the login")
    return done(outcome, detail)


def _login(registry: str, credentials: Credentials, timeout: float) -> tuple[LoginOutcome, str]:
    """The login as a push would make it (registry.Registry: Basic, or a token from a Bearer realm, never a
    password over plain http), once, within `timeout` per request."""
    with Registry(registry, credentials, retries=0, timeout=(timeout, timeout)) as api:
        api.session.headers["User-Agent"] = USER_AGENT
        try:
            answer, logged_in = api.version_check()
        except LoginRejectedError as rejected:
            return LoginOutcome.REJECTED, rejected.answer
        except RegistryError as error:
            return LoginOutcome.FAILED, str(error)
    said = f"HTTP {answer.status_code} {answer.reason}"
    if answer.status_code == 200:
        return (LoginOutcome.ACCEPTED, "") if logged_in else (LoginOutcome.ANONYMOUS, "/v2/ answers without a login")
    if logged_in and answer.status_code == 403:
        return LoginOutcome.REJECTED, said
    kind = LoginOutcome.NOT_A_REGISTRY if answer.status_code == 404 else LoginOutcome.FAILED
    return kind, f"/v2/ answered {said}"

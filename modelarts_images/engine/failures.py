"""What the Docker Engine's own words mean when a first run meets them, in one line with the next step: its disk
full, a base image on Docker Hub it cannot reach, no engine at all. Pure text: the callers hold the engine.

The engine's words are Go's, as the docker SDK passes them on (an APIError's explanation) or the CLI prints them:

- a pull or build with the disk full: ``failed to register layer: Error processing tar file(exit status 1): write
  /usr/lib/x86_64-linux-gnu/libgio-2.0.so.0: no space left on device``; BuildKit: ``ERROR: failed to solve:
  failed to compute cache key: ... write /tmp/containerd-mount1749269262/usr/bin/cksum: no space left on
  device``; a RUN step's own tools: ``OSError: [Errno 28] No space left on device``;
- Docker Hub out of reach: ``Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io on
  10.255.255.53:53: no such host``, ``... net/http: request canceled while waiting for connection
  (Client.Timeout exceeded while awaiting headers)``, BuildKit's ``failed to resolve source metadata for
  docker.io/library/ubuntu:20.04: failed to do request: Head "https://registry-1.docker.io/v2/...": dial tcp
  3.211.199.249:443: i/o timeout``.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterable

from modelarts_images import declared
from modelarts_images.http import failures
from modelarts_images.shared.text import one_line

DISK_FULL = re.compile(r"no space left on device|\[Errno 28\]|ENOSPC|disk quota exceeded", re.IGNORECASE)
# The hosts a pull from Docker Hub talks to: the registry, its token service, and the CDN that serves the layers.
DOCKER_HUB_HOSTS = frozenset({"registry-1.docker.io", "index.docker.io", "docker.io", "auth.docker.io",
                              "registry.docker.io", "production.cloudflare.docker.com"})
_HUB_PREFIXES = ("docker.io/", "index.docker.io/", "registry-1.docker.io/")
_BASE_IN_WORDS = re.compile(r"(?:source metadata for|load metadata for|pull access denied for|fromImage=) ?"
                            r"(?P<reference>[^\s:,\"@]+(?::\w[\w.-]*)?(?:@sha256:[0-9a-f]{64})?)")
EXAMPLE_MIRROR = "mirror.example.com/"


def disk_full(*texts: str | Iterable[str]) -> bool:
    """Whether any of the engine's words (a message, or lines of a log tail) say its disk is full."""
    for text in texts:
        for line in ([text] if isinstance(text, str) else text):
            if DISK_FULL.search(line):
                return True
    return False


def disk_full_line(data_root: str | None) -> str:
    """The one line for an engine whose disk is full, naming its data root when the engine said where it is."""
    where = f"its data root, {data_root}" if data_root else "its data root (`docker info` shows it: Docker Root Dir)"
    return (f"the engine's disk is full (no space left on device, errno {errno.ENOSPC}, under {where}): free space "
            "there, or remove what the engine no longer needs: `docker system prune` (stopped containers, dangling "
            "images, build cache), `docker system prune -a` for every unused image too")


def on_docker_hub(reference: str) -> bool:
    """Whether a pull of `reference` goes to Docker Hub: a name without a registry host (ubuntu:20.04,
    library/ubuntu:20.04, nvidia/cuda:12.1.0-base) or one that names docker.io."""
    first, slash, _ = reference.partition("/")
    if reference.startswith(_HUB_PREFIXES):
        return True
    return not (slash and ("." in first or ":" in first or first == "localhost"))


def docker_hub_line(reference: str, failure: failures.Failure) -> str:
    """The one line for a base on Docker Hub that the engine cannot reach: point base_prefix at a mirror."""
    key = f"{declared.SECTION}.base_prefix in invoke.yaml, or --base-prefix"
    reached = f"the engine cannot reach Docker Hub ({failure.cause}: {failure.why.split(':')[0]})"
    short = reference.split("/", 1)[1].removeprefix("library/") if reference.startswith(_HUB_PREFIXES) else reference
    # Docker Hub's own images live under library/ on a mirror; a user's (nvidia/cuda) under their own name.
    example = EXAMPLE_MIRROR + ("" if "/" in short else "library/")
    pulls = f"e.g. base_prefix: {example} pulls {_prefixed(example, short)}"
    if short != reference:  # base_prefix applies to names without a registry only
        return (f"base image {reference}: {reached}; write it as {short} so that base_prefix ({key}) can put a "
                f"mirror of Docker Hub in front of it ({pulls}), or load the image into the engine (docker load)")
    return (f"base image {reference}: {reached}; set base_prefix ({key}) to a mirror of Docker Hub that this "
            f"engine can reach ({pulls}), or load the image into the engine (docker load)")


def _prefixed(prefix: str, reference: str) -> str:
    return prefix.rstrip("/") + "/" + reference  # as build.builder.effective_base_image prefixes it


def unreachable_hub(text: str, reference: str | None = None) -> failures.Failure | None:
    """The connection failure the engine's words report for a pull from Docker Hub (of `reference`, or of the
    image the words name); None for any other failure, or a `reference` elsewhere that the words do not
    contradict."""
    failure = failures.classify_text(text, failures.ENGINE)  # any kind: a TLS failure too is a proxy in the way
    if failure is None:
        return None
    # The engine's words name the host they could not reach (Get "https://registry-1.docker.io/v2/": ...); a build
    # whose own step lost its connection names another, or none, and is not a base out of reach.
    hub_in_words = failure.host in DOCKER_HUB_HOSTS or any(host in text for host in DOCKER_HUB_HOSTS)
    if not hub_in_words or (reference is not None and not on_docker_hub(reference) and base_in_words(text) is None):
        return None
    return failure


def in_brief(text: str) -> str:
    """The engine's words for a connection failure as cause and meaning ('cannot resolve mirror.example.com: DNS
    lookup failed: ...'); the words themselves, on one line, when they name none."""
    failure = failures.classify_text(text, failures.ENGINE)
    return f"{failure.cause}: {failure.why}" if failure else one_line(text, 400)


def base_in_words(text: str) -> str | None:
    """The image the engine's words say it was pulling ('... source metadata for docker.io/library/ubuntu:20.04')."""
    match = _BASE_IN_WORDS.search(text)
    return match.group("reference") if match else None


def explain(text: str, *, tail: Iterable[str] = (), reference: str | None = None,
            data_root: str | None = None) -> str | None:
    """The one line for an engine failure whose cause a new user can fix (its disk full, Docker Hub out of
    reach for a base), from the engine's words `text` and a log `tail`; None for any other failure.

    `reference`: the base image the build or pull started from, when known; `data_root`: the engine's
    (docker info's DockerRootDir), when it said."""
    lines = list(tail)
    if disk_full(text, lines):
        return disk_full_line(data_root)
    failure = unreachable_hub(text, reference)
    if failure is None:
        return None
    # The image the words name first (a Dockerfile's syntax image comes from Docker Hub too), else the build's base.
    return docker_hub_line(base_in_words(text) or reference or "(the base)", failure)


def no_engine_line(where: str, socket_path: str | None, error: BaseException) -> str:
    """Why no engine answers at `where` (docker_host's words), and what to do, in one line: no socket, a socket
    nobody listens on, a socket this user may not open, or a TCP engine out of reach."""
    start = ("start it (scripts/engine-up.sh here, or `sudo systemctl start docker`), or point DOCKER_HOST "
             "(or `docker context use`) at one that runs")
    links = list(failures.chain(error))
    errnos = {link.errno for link in links if isinstance(link, OSError)}
    if socket_path and (errno.EACCES in errnos or errno.EPERM in errnos):
        return (f"no Docker Engine answers at {where}: permission denied on {socket_path}, which only root and the "
                "docker group may use: add this user to the group (`sudo usermod -aG docker $USER`, then log in "
                "again) or run the task as a user who may")
    if socket_path and errno.ENOENT in errnos:
        return (f"no Docker Engine answers at {where}: there is no socket at {socket_path}, so no engine runs "
                f"there: {start}")
    if socket_path and errno.ECONNREFUSED in errnos:
        return (f"no Docker Engine answers at {where}: nothing listens on {socket_path} (connection refused: the "
                f"engine stopped and left its socket): {start}")
    if isinstance(error, ValueError) or any(isinstance(link, ValueError) for link in links):
        return (f"no Docker Engine answers at {where}: DOCKER_HOST is malformed ({error}); set it as unix:///path "
                "or tcp://host:port, or unset it for the default socket")
    if not socket_path:  # an engine over the network: it is started where it runs
        start = ("check that an engine runs there and listens on that port, or point DOCKER_HOST (or `docker "
                 "context use`) at one that runs")
    failure = next((found for link in links if (found := failures.classify_text(str(link), failures.ENGINE))), None)
    if failure is not None:
        return f"no Docker Engine answers at {where}: {failure.cause} ({failure.why}): {start}"
    said = one_line(str(error), 200)
    return f"no Docker Engine answers at {where} ({said}): is dockerd running? {start}"

"""Pick wheels out of a PyTorch wheel index page (simple index or the old flat torch_stable.html)."""

from __future__ import annotations

from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import unquote, urldefrag, urljoin

from modelarts_images.config.wheels import WheelName, distribution_name, parse_wheel_name, wheel_problem
from modelarts_images.errors import FetchError
from modelarts_images.model import Artifact, ImageSpec, sha256_problem
from modelarts_images.shared import redact


@dataclass(frozen=True, kw_only=True)
class Link:
    url: str  # absolute, without fragment
    filename: str
    sha256: str | None  # from a '#sha256=' fragment, when the index gives one


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.hrefs.append(href)


def parse_links(html: str, page_url: str) -> list[Link]:
    parser = _Anchors()
    parser.feed(html)
    links = []
    for href in parser.hrefs:
        url, fragment = urldefrag(urljoin(page_url, href))
        url = redact.without_credentials(url)  # a page's credentials never reach versions.lock
        sha256 = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else None
        if sha256 is not None and sha256_problem(sha256):
            raise FetchError(f"{redact.url(page_url)} lists {redact.url(url)} with #sha256={sha256[:80]!r}, which "
                             "is not a sha256: refusing an index that cannot say what its files are")
        links.append(Link(url=url, filename=unquote(url.rsplit("/", 1)[-1]), sha256=sha256))
    return links


def page_urls(index_url: str, package: str) -> str:
    """The page listing a package: the flat page itself, or '<variant index>/<package>/'."""
    return index_url if index_url.endswith(".html") else f"{index_url.rstrip('/')}/{package}/"


def choose_wheel(links: list[Link], *, package: str, version: str, image: ImageSpec, page_url: str) -> Artifact:
    """The one wheel of package==version that fits the image's Python, platform and CUDA variant."""
    distribution = distribution_name(package)
    candidates: list[tuple[Link, WheelName]] = []
    for link in links:
        wheel = parse_wheel_name(link.filename)
        if wheel is None or wheel.distribution != distribution or wheel.version != version:
            continue
        if wheel_problem(link.filename, python=image.python, cuda=image.cuda, versions={distribution: version}):
            continue
        # A flat page mixes variants: '+cu102', '+cpu' and, for the default build, no local tag at all.
        if wheel.local not in (None, image.variant):
            continue
        candidates.append((link, wheel))
    if not candidates:
        raise FetchError(f"{image.id}: no {package}=={version} wheel for Python {image.python}, "
                         f"{image.variant}, Linux x86_64 at {redact.url(page_url)}")
    # Prefer the wheel that names the variant over an unlabelled one (old flat pages list both).
    best, _ = sorted(candidates, key=lambda candidate: candidate[1].local is None)[0]
    return Artifact(url=best.url, sha256=best.sha256)

"""Pick wheels out of a PyTorch wheel index page (simple index or the old flat torch_stable.html)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import unquote, urldefrag, urljoin

from modelarts_images.config import compat
from modelarts_images.config.wheels import (
    WheelName,
    distribution_name,
    loads_on,
    parse_wheel_name,
    wheel_problem,
)
from modelarts_images.errors import FetchError
from modelarts_images.model import Accelerator, Artifact, ImageSpec, sha256_problem
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
        if wheel_problem(link.filename, python=image.python, cuda=image.cuda, versions={distribution: version},
                         arch=image.arch):
            continue
        # A flat page mixes variants: '+cu102', '+cpu' and, for the default build, no local tag at all.
        if wheel.local not in (None, image.variant):
            continue
        candidates.append((link, wheel))
    if not candidates:
        raise FetchError(f"{image.id}: no {package}=={version} wheel for Python {image.python}, "
                         f"{image.variant}, Linux {image.arch} at {redact.url(page_url)}"
                         + _what_the_page_has(links, package=package, version=version, image=image))
    # Prefer the wheel that names the variant over an unlabelled one (old flat pages list both).
    best, _ = sorted(candidates, key=lambda candidate: candidate[1].local is None)[0]
    return Artifact(url=best.url, sha256=best.sha256)


# --------------------------------------------------------------------------------------------------------------
# The page against the compatibility table: where they disagree, the table (compat.yaml) is what needs fixing.

_CPYTHON = re.compile(r"^cp(?P<major>\d)(?P<minor>\d+)$")
TABLE = "modelarts_images/config/data/compat.yaml"


def offered_pythons(links: list[Link], *, package: str, version: str, variant: str,
                    arch: str) -> tuple[str, ...] | None:
    """The CPython minors ('3.11') with a Linux wheel of package==version for this variant and machine on the page;
    None when one of them is a pure-Python or stable-ABI wheel (it fits every Python)."""
    distribution = distribution_name(package)
    found: set[str] = set()
    for link in links:
        wheel = parse_wheel_name(link.filename)
        if (wheel is None or wheel.distribution != distribution or wheel.version != version
                or wheel.local not in (None, variant)
                or not any(loads_on(platform, arch) for platform in wheel.platforms)):
            continue
        if wheel.abi in ("none", "abi3"):
            return None
        for tag in wheel.python_tags:
            match = _CPYTHON.match(tag)
            if match and not wheel.abi.endswith("t"):  # free-threaded builds (cp313t) are not the image's Python
                found.add(f"{match['major']}.{match['minor']}")
    return tuple(sorted(found, key=compat.version_key))


def offered_variants(links: list[Link], *, package: str, version: str) -> tuple[str, ...]:
    """The CUDA variants ('cu121', 'cpu') with a wheel of package==version on a page that mixes them (flat)."""
    distribution = distribution_name(package)
    return tuple(sorted({wheel.local for wheel in map(parse_wheel_name, (link.filename for link in links))
                         if wheel is not None and wheel.distribution == distribution and wheel.version == version
                         and wheel.local}))


def _what_the_page_has(links: list[Link], *, package: str, version: str, image: ImageSpec) -> str:
    """For a wheel the page lacks: what it has of that release instead, and where the table claims otherwise."""
    pythons = offered_pythons(links, package=package, version=version, variant=image.variant, arch=image.arch)
    release = compat.load_table().get(image.torch) if package == "torch" else None
    if pythons == ():
        listed = release is not None and image.accelerator in release.accelerators
        claim = (f"; {TABLE} lists {image.accelerator.described} for torch "
                 f"{image.torch}: if this index is PyTorch's own, that entry of the table is wrong (please report "
                 "it)") if listed else ""
        return f"; the page has no {package} {version} wheel for {image.variant} at all{claim}"
    if pythons is None:
        return ""
    has = f"; the page has {package} {version} for Python {compat.span(pythons)} only"
    if release is not None and image.python in release.python:
        has += (f", while {TABLE} lists Python {compat.span(release.python)} for torch {image.torch}: if this index "
                "is PyTorch's own, the table is wrong for this release (please report it)")
    return has


def table_mismatches(links: list[Link], *, version: str, image: ImageSpec) -> list[str]:
    """What a torch page offers beyond the table's row for this release (Python minors, and variants on a flat
    page): the table, not the index, is then out of date."""
    release = compat.load_table().get(version)
    if release is None:
        return []
    notes = []
    pythons = offered_pythons(links, package="torch", version=version, variant=image.variant,
                              arch=image.arch) or ()
    extra = [python for python in pythons if python not in release.python]
    if extra:
        notes.append(f"the index has torch {version} wheels for Python {', '.join(extra)} ({image.variant}) too, "
                     f"which {TABLE} does not list for it")
    listed = {accelerator.tag for accelerator in release.accelerators}
    variants = [variant for variant in offered_variants(links, package="torch", version=version)
                if variant not in listed and Accelerator.is_tag(variant)]
    if variants:
        notes.append(f"the index has torch {version} wheels for {', '.join(variants)} too, which {TABLE} does not "
                     "list for it")
    return notes

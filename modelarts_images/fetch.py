"""fetch: put every artifact the selected images need into the cache, verified, and keep versions.lock current."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import requests

from . import closure as closure_resolver
from . import download, index, lockfile
from .cache import Cache
from .errors import FetchError
from .model import Artifact, FetchedFile, FetchedImage, ImageSpec
from .plan import wheel_source

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int | None], None]


@dataclass(frozen=True, kw_only=True)
class FetchOptions:
    cache_dir: Path
    lock_path: Path
    jobs: int = 4
    offline: bool = False
    locked: bool = False  # refuse anything versions.lock does not pin
    verify_cache: bool = False  # re-hash cached files instead of trusting their recorded size/mtime/inode
    refresh: bool = False  # resolve again even where versions.lock has an entry (`inv lock`)
    closure: bool = True
    mirrors: Mapping[str, str] | None = None  # URL prefix -> replacement


@dataclass(frozen=True, kw_only=True)
class FetchSummary:
    fetched: int
    reused: int
    bytes_transferred: int
    seconds: float
    lock_updated: tuple[str, ...]  # image ids whose versions.lock entry was (re)written


def mirrored(url: str, mirrors: Mapping[str, str] | None) -> str:
    """Rewrite the longest matching prefix; the lock and labels keep the original URL."""
    for prefix in sorted(mirrors or {}, key=len, reverse=True):
        if url.startswith(prefix):
            return (mirrors or {})[prefix] + url[len(prefix):]
    return url


class _Fetcher:
    def __init__(self, options: FetchOptions, progress: Progress | None) -> None:
        self.options = options
        self.progress = progress
        self.cache = Cache(options.cache_dir)
        self.session = requests.Session()
        self.fetched = 0
        self.reused = 0
        self.bytes = 0

    def text(self, url: str, image: ImageSpec) -> str:
        if self.options.offline:
            raise FetchError(f"{image.id}: --offline, but its wheels must be looked up at {url}; "
                             "run `inv lock` online once so versions.lock pins them")
        try:
            return download.get_text(mirrored(url, self.options.mirrors), session=self.session)
        except FetchError as error:
            raise FetchError(f"{image.id}: {error}") from None

    def derive_wheels(self, image: ImageSpec) -> tuple[Artifact, ...]:
        source = wheel_source(image)
        wheels = []
        for name, version in image.packages:
            page = index.page_urls(source.index_url, name)
            links = index.parse_links(self.text(page, image), page)
            wheels.append(index.choose_wheel(links, package=name, version=version, image=image, page_url=page))
        return tuple(wheels)

    def one(self, artifact: Artifact, owner: str) -> FetchedFile:
        """Put one artifact into the cache (or prove it is there) and return where it is."""
        options, cache = self.options, self.cache
        if artifact.sha256 and cache.has(artifact.sha256, rehash=options.verify_cache):
            self.reused += 1
            return FetchedFile(filename=artifact.filename, path=cache.blob(artifact.sha256), url=artifact.url,
                               sha256=artifact.sha256)
        if options.offline:
            raise FetchError(f"{owner}: --offline, and {artifact.filename} is not in the cache ({artifact.url})")
        if options.locked and not artifact.sha256:
            raise FetchError(f"{owner}: --locked, and {artifact.url} has no sha256 in versions.yaml or versions.lock")
        source = mirrored(artifact.url, options.mirrors)
        if artifact.sha256:
            transfer = self._download(source, cache.blob(artifact.sha256), artifact.sha256, owner)
            cache.record(transfer.sha256)
            return FetchedFile(filename=artifact.filename, path=transfer.path, url=artifact.url,
                               sha256=transfer.sha256)
        log.warning("%s: %s has no sha256 to check against; trusting this first download and pinning it in "
                    "versions.lock (trust on first use)", owner, artifact.url)
        key = hashlib.sha256(artifact.url.encode()).hexdigest()[:16] + "-" + artifact.filename
        # Another fetch may be taking the same unpinned file: one downloads and moves it into the store, the
        # other then finds it there through the note left beside the download.
        with cache.exclusive(key):
            note = cache.incoming / f"{key}.sha256"
            known = note.read_text("utf-8").strip() if note.exists() else None
            if known and not options.refresh and cache.has(known):
                self.reused += 1
                return FetchedFile(filename=artifact.filename, path=cache.blob(known), url=artifact.url, sha256=known)
            transfer = self._download(source, cache.incoming / key, None, owner)
            path = cache.adopt(transfer.path, transfer.sha256)
            note.write_text(transfer.sha256, encoding="utf-8")
        return FetchedFile(filename=artifact.filename, path=path, url=artifact.url, sha256=transfer.sha256)

    def _download(self, source: str, target: Path, sha256: str | None, owner: str) -> download.Transfer:
        try:
            transfer = download.download(source, target, expected_sha256=sha256, session=self.session,
                                         progress=self.progress)
        except FetchError as error:
            raise FetchError(f"{owner}: {error}") from None
        self.fetched += transfer.attempts > 0
        self.reused += transfer.attempts == 0
        self.bytes += transfer.bytes_transferred
        return transfer

    def many(self, wanted: Sequence[tuple[Artifact, str]]) -> dict[str, FetchedFile]:
        """Fetch distinct URLs in parallel; returns them by URL."""
        unique: dict[str, tuple[Artifact, str]] = {}
        for artifact, owner in wanted:
            unique.setdefault(artifact.url, (artifact, owner))
        with ThreadPoolExecutor(max_workers=max(1, self.options.jobs)) as pool:
            futures = {url: pool.submit(self.one, artifact, owner) for url, (artifact, owner) in unique.items()}
            return {url: future.result() for url, future in futures.items()}


def _pinned(image: ImageSpec, locked: lockfile.LockedImage | None) -> lockfile.LockedImage | None:
    """The lock entry when it still describes this entry, with versions.yaml's own pins applied over it."""
    if locked is None or locked.inputs != lockfile.inputs_of(image):
        return None
    pinned_by_lock = {artifact.url: artifact.sha256 for artifact in (locked.installer, *locked.wheels)}
    for artifact in (image.installer, *image.wheels):
        if artifact.sha256 and pinned_by_lock.get(artifact.url) != artifact.sha256:
            return None  # versions.yaml pins it differently now: resolve again
    return locked


def fetch_images(images: Sequence[ImageSpec], options: FetchOptions, *, progress: Progress | None = None,
                 ) -> tuple[list[FetchedImage], FetchSummary]:
    started = time.monotonic()
    fetcher = _Fetcher(options, progress)
    fetcher.cache.prepare()
    lock = lockfile.read(options.lock_path)
    plans: dict[str, lockfile.LockedImage] = {}
    for image in images:
        pinned = None if options.refresh else _pinned(image, lock.get(image.id))
        if pinned is None and options.locked:
            raise FetchError(f"{image.id}: --locked, but versions.lock has no current entry for it; run `inv lock`")
        if pinned is None:
            pinned = lockfile.LockedImage(inputs=lockfile.inputs_of(image), installer=image.installer,
                                          wheels=image.wheels or fetcher.derive_wheels(image), closure=None)
        plans[image.id] = pinned
    first = fetcher.many([(artifact, image_id) for image_id, plan in plans.items()
                          for artifact in (plan.installer, *plan.wheels)])
    results: list[FetchedImage] = []
    changes: dict[str, lockfile.LockedImage] = {}
    for image in images:
        plan = plans[image.id]
        wheels = tuple(first[wheel.url] for wheel in plan.wheels)
        closure = plan.closure
        fresh = plan is not lock.get(image.id)
        # A closure missing from the lock (pip failed, or an earlier --no-closure) is tried again.
        if options.closure and (fresh or closure is None) and not options.locked:
            closure = closure_resolver.resolve(image, wheels)
        rest = fetcher.many([(artifact, image.id) for artifact in closure or ()])
        results.append(FetchedImage(
            image=image,
            installer=first[plan.installer.url],
            wheels=wheels,
            closure=None if closure is None else tuple(rest[artifact.url] for artifact in closure),
        ))
        if fresh or closure != plan.closure:
            changes[image.id] = replace(
                plan,
                installer=_as_artifact(first[plan.installer.url]),
                wheels=tuple(_as_artifact(wheel) for wheel in wheels),
                closure=None if closure is None else tuple(_as_artifact(rest[a.url]) for a in closure),
            )
    if changes:
        lockfile.update(options.lock_path, changes, guard=options.cache_dir / "versions-lock.flock")
    summary = FetchSummary(fetched=fetcher.fetched, reused=fetcher.reused, bytes_transferred=fetcher.bytes,
                           seconds=time.monotonic() - started, lock_updated=tuple(changes))
    return results, summary


def _as_artifact(fetched: FetchedFile) -> Artifact:
    return Artifact(url=fetched.url, sha256=fetched.sha256)

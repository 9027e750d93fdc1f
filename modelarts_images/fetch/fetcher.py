"""fetch: put every artifact the selected images need into the cache, verified, and keep versions.lock current
(never under --offline: it asks no server and changes no pin)."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

from modelarts_images.config.wheels import TORCH_NPU, cuda_build_problem, wheel_distribution
from modelarts_images.errors import ConfigError, FetchError
from modelarts_images.fetch import index, lockfile, sources
from modelarts_images.fetch.cache import Cache
from modelarts_images.http import download, pages, pip_resolver, session
from modelarts_images.model import DEFAULT_SOURCE_DATE_EPOCH, Artifact, FetchedFile, FetchedImage, ImageSpec
from modelarts_images.options import FetchOptions
from modelarts_images.plan import wheel_source
from modelarts_images.shared import redact
from modelarts_images.shared.progress import ProgressCallback
from modelarts_images.shared.text import size

log = logging.getLogger(__name__)

@dataclass(frozen=True, kw_only=True)
class FetchSummary:
    fetched: int
    reused: int
    bytes_transferred: int
    seconds: float
    lock_updated: tuple[str, ...]  # image ids whose versions.lock entry was (re)written


def mirrored(url: str, mirrors: Mapping[str, str]) -> str:
    """Rewrite the longest matching prefix; the lock and labels keep the original URL."""
    for prefix in sorted(mirrors, key=len, reverse=True):
        if url.startswith(prefix):
            return mirrors[prefix] + url[len(prefix):]
    return url


class _Fetcher:
    def __init__(self, options: FetchOptions, progress: ProgressCallback | None) -> None:
        self.options = options
        self.progress = progress
        self.cache = Cache(options.cache_dir)
        self.session = session.new_session()
        # Set by the first failure (or Ctrl-C): queued fetches do not start, running downloads stop early.
        self.abort = threading.Event()
        self._counting = threading.Lock()  # worker threads update the summary counters
        self.fetched = 0
        self.reused = 0
        self.bytes = 0

    def count(self, *, fetched: int = 0, reused: int = 0, transferred: int = 0) -> None:
        with self._counting:
            self.fetched += fetched
            self.reused += reused
            self.bytes += transferred

    def prepare(self) -> None:
        try:
            self.cache.prepare()
        except OSError as error:
            raise FetchError(f"cannot use the cache directory {self.options.cache_dir}: {error.strerror or error}; "
                             "set cache_dir in invoke.yaml (or INVOKE_MODELARTS_CACHE_DIR) to a directory this user "
                             "can create and write") from None

    def may_ask_index(self, image: ImageSpec, what: str) -> None:
        """Before anything asks an index for `what` (pip, or a wheel page): --offline refuses, naming it. The check
        of fetch_images names all that is missing first; this one keeps any later path from reaching a server."""
        if self.options.offline:
            raise _offline_refusal(image, [what])

    def text(self, url: str, image: ImageSpec) -> str:
        self.may_ask_index(image, f"the wheels looked up at {redact.url(url)}")
        try:
            return pages.get_text(mirrored(url, self.options.mirrors), session=self.session,
                                     min_speed=self.options.min_speed)
        except FetchError as error:
            raise FetchError(f"{image.id}: {error}") from None

    def derive_wheels(self, image: ImageSpec) -> tuple[Artifact, ...]:
        source = wheel_source(image)
        wheels = []
        for name, version in image.packages:
            if name == TORCH_NPU:  # Ascend's, on PyPI: the index pip uses, not PyTorch's
                self.may_ask_index(image, f"the {name}=={version} wheel")
                wheels.append(pip_resolver.resolve_wheel(image, f"{name}=={version}",
                                                         scratch_parent=self.cache.incoming))
                continue
            page = index.page_urls(source.index_url, name)
            links = index.parse_links(self.text(page, image), page)
            wheels.append(index.choose_wheel(links, package=name, version=version, image=image, page_url=page))
            if name == "torch":
                for note in index.table_mismatches(links, version=version, image=image):
                    log.warning("%s: %s (%s); please report it", image.id, note, redact.url(page))
        return tuple(wheels)

    def one(self, artifact: Artifact, owner: str) -> FetchedFile:
        """Put one artifact into the cache (or prove it is there) and return where it is."""
        options, cache = self.options, self.cache
        if self.abort.is_set():
            raise download.AbortedError(f"{owner}: not started: another download failed")
        if artifact.sha256 and cache.has(artifact.sha256, rehash=options.verify_cache):
            self.count(reused=1)
            return FetchedFile(filename=artifact.filename, path=cache.blob(artifact.sha256), url=artifact.url,
                               sha256=artifact.sha256)
        if options.offline and not artifact.sha256:
            raise FetchError(f"{owner}: --offline, and nothing pins the sha256 of {artifact.filename} "
                             f"({redact.url(artifact.url)}): neither versions.yaml nor versions.lock; run `inv fetch` "
                             "online once to fetch and pin it")
        if options.offline:
            raise FetchError(f"{owner}: --offline, and {artifact.filename} is not in the cache "
                             f"({redact.url(artifact.url)}); run `inv fetch` online once to fetch it")
        if options.locked and not artifact.sha256:
            raise FetchError(f"{owner}: --locked, and {redact.url(artifact.url)} has no sha256 in versions.yaml or "
                             "versions.lock")
        source = mirrored(artifact.url, options.mirrors)
        if artifact.sha256:
            transfer = self._download(source, cache.blob(artifact.sha256), artifact, owner)
            cache.record(transfer.sha256)
            return FetchedFile(filename=artifact.filename, path=transfer.path, url=artifact.url,
                               sha256=transfer.sha256)
        log.warning("%s: %s has no sha256 to check against; trusting this first download and pinning it in "
                    "versions.lock (trust on first use)", owner, redact.url(artifact.url))
        # The URL's hash keeps keys apart; the name, cut to fit beside the key's suffixes, keeps them readable.
        name = artifact.filename.encode("utf-8")[:200].decode("utf-8", "ignore")
        key = hashlib.sha256(artifact.url.encode()).hexdigest()[:16] + "-" + name
        # Another fetch may be taking the same unpinned file: one downloads and moves it into the store, the
        # other then finds it there through the note left beside the download.
        with cache.exclusive(key):
            known = cache.note(f"{key}.sha256")
            if known and not options.refresh and cache.has(known):
                self.count(reused=1)
                return FetchedFile(filename=artifact.filename, path=cache.blob(known), url=artifact.url, sha256=known)
            transfer = self._download(source, cache.entry(key), artifact, owner)
            path = cache.adopt(transfer.path, transfer.sha256)
            cache.write_note(f"{key}.sha256", transfer.sha256)
        return FetchedFile(filename=artifact.filename, path=path, url=artifact.url, sha256=transfer.sha256)

    def _download(self, source: str, target: Path, artifact: Artifact, owner: str) -> download.Transfer:
        options = self.options
        try:
            transfer = download.download(source, target, expected_sha256=artifact.sha256,
                                         expected_size=artifact.size, max_size=options.max_file_size,
                                         min_speed=options.min_speed, session=self.session, progress=self.progress,
                                         abort=self.abort)
        except download.AbortedError as error:
            raise download.AbortedError(f"{owner}: {error}") from None
        except FetchError as error:
            raise FetchError(f"{owner}: {error}") from None
        self.count(fetched=transfer.attempts > 0, reused=transfer.attempts == 0,
                   transferred=transfer.bytes_transferred)
        return transfer

    def _one_or_abort(self, artifact: Artifact, owner: str) -> FetchedFile:
        """one(), setting the abort event when it fails.

        Set by the worker itself, the event is up before this worker takes the next queued artifact, however late
        the waiting thread wakes.
        """
        try:
            return self.one(artifact, owner)
        except BaseException:
            self.abort.set()
            raise

    def many(self, wanted: Sequence[tuple[Artifact, str]]) -> dict[str, FetchedFile]:
        """Fetch distinct URLs in parallel; returns them by URL. The first failure is raised as soon as it happens.

        One URL is fetched once however many images want it; a pool's `with` would wait for every running
        download before a failure (or Ctrl-C) could end the run, hence the explicit abort and shutdown.
        """
        unique: dict[str, tuple[Artifact, str]] = {}
        for artifact, owner in wanted:
            unique.setdefault(artifact.url, (artifact, owner))
        pool = ThreadPoolExecutor(max_workers=max(1, self.options.jobs))
        try:
            futures = {url: pool.submit(self._one_or_abort, artifact, owner)
                       for url, (artifact, owner) in unique.items()}
            wait(futures.values(), return_when=FIRST_EXCEPTION)
            _raise_first_failure(futures.values())
            return {url: future.result() for url, future in futures.items()}
        except BaseException:  # Ctrl-C included: stop the workers before the exception leaves
            self.abort.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _raise_first_failure(futures: Iterable[Future[FetchedFile]]) -> None:
    """Re-raise the failure that caused the others: the downloads it aborted only say they were stopped."""
    failures = [future.exception() for future in futures if future.done() and not future.cancelled()]
    errors = [error for error in failures if error is not None]
    if errors:
        raise next((error for error in errors if not isinstance(error, download.AbortedError)), errors[0])


def _pinned(image: ImageSpec, locked: lockfile.LockedImage | None) -> lockfile.LockedImage | None:
    """The lock entry when it still describes this entry, with versions.yaml's own pins applied over it."""
    if locked is None or locked.inputs != lockfile.inputs_of(image):
        return None
    pinned_by_lock = {artifact.url: artifact.sha256 for artifact in (locked.installer, *locked.wheels)}
    for artifact in (image.installer, *image.wheels):
        if artifact.sha256 and pinned_by_lock.get(artifact.url) != artifact.sha256:
            return None  # versions.yaml pins it differently now: resolve again
    return locked


_TOOL = f"the install tool {pip_resolver.INSTALL_TOOL} (tools:)"


def _stack_of(image: ImageSpec) -> str:
    return f"the stack ({' '.join(requirement.text for requirement in image.stack.requirements)})"


def _offline_refusal(image: ImageSpec, missing: Sequence[str], *, why: str = "versions.lock does not pin",
                     hint: str = "") -> FetchError:
    return FetchError(f"{image.id}: --offline, and {why} {', '.join(missing)}; run `inv fetch` (or `inv lock`) "
                      f"online once to pin what is missing{hint}")


def _refuse_offline_gaps(image: ImageSpec, pinned: lockfile.LockedImage | None,
                         earlier: lockfile.LockedImage | None, options: FetchOptions) -> None:
    """FetchError naming everything fetching `image` would ask an index for because versions.lock does not pin it
    (the conditions of fetch_images and _resolved, read before anything is asked or downloaded). The build
    requirements of a stack's sdists are read from the sdists themselves: that check waits for the cache."""
    if options.refresh:
        raise FetchError(f"{image.id}: --offline, and resolving it again (what `inv lock` does) needs the package "
                         "index; run `inv lock` online")
    missing = []
    if pinned is None and not image.wheels:
        source = wheel_source(image)
        missing += [f"the {name}=={version} wheel (looked up "
                    + ("with pip" if name == TORCH_NPU else f"at {redact.url(index.page_urls(source.index_url, name))}")
                    + ")" for name, version in image.packages]
    closure = None if pinned is None else pinned.closure
    if options.closure and closure is None:
        missing.append("the dependency wheels of torch" + (" (an earlier --no-closure left them out, or pip could "
                                                           "not resolve them)" if pinned is not None else ""))
    if (closure is not None or options.closure) and (pinned is None or pinned.tools is None) \
            and pip_resolver.serves_tool(image):
        missing.append(_TOOL)
    if image.stack.requirements and (pinned is None or pinned.stack is None):
        missing.append(_stack_of(image))
    if not missing:
        return
    if pinned is None:
        why = ("versions.lock has no entry for it" if earlier is None else "its versions.lock entry was locked for "
               "other inputs (versions.yaml changed since)") + ", so nothing pins"
    else:
        why = "versions.lock does not pin"
    closure_only = options.closure and closure is None and not image.stack.requirements
    raise _offline_refusal(image, missing, why=why,
                           hint=", or pass --no-closure to build without the dependency wheels" if closure_only
                           else "")


def locked_plan(image: ImageSpec, options: FetchOptions) -> FetchedImage | None:
    """What fetching `image` would give, read from versions.lock alone (nothing is downloaded or checked, the
    paths are where the cache would keep the files), or None when the lock does not pin all of it: for deciding
    from the artifacts' sha256 whether a cell changed before fetching gigabytes."""
    if options.refresh:
        return None
    plan = _pinned(image, lockfile.read(options.lock_path).get(image.id))
    if plan is None or (options.closure and plan.closure is None):
        return None
    if plan.closure is not None and plan.tools is None and not options.locked:
        return None  # fetch looks for the install tool first
    if image.stack.requirements and plan.stack is None:
        return None
    if any(sources.is_sdist(artifact.filename) for artifact in plan.stack or ()) and not plan.build_deps:
        return None
    if any(not artifact.sha256 for artifact in plan.artifacts):
        return None

    def planned(artifact: Artifact) -> FetchedFile:
        return FetchedFile(filename=artifact.filename, path=options.cache_dir / artifact.filename, url=artifact.url,
                           sha256=artifact.sha256 or "")

    return FetchedImage(image=image, installer=planned(plan.installer),
                        wheels=tuple(planned(wheel) for wheel in plan.wheels),
                        closure=None if plan.closure is None else tuple(planned(item) for item in plan.closure),
                        stack=tuple(planned(item) for item in plan.stack or ()),
                        build_deps=tuple(planned(item) for item in plan.build_deps),
                        tools=tuple(planned(item) for item in plan.tools or ()),
                        source_date_epoch=plan.source_date_epoch)


def fetch_images(images: Sequence[ImageSpec], options: FetchOptions, *, progress: ProgressCallback | None = None,
                 ) -> tuple[list[FetchedImage], FetchSummary]:
    started = time.monotonic()
    fetcher = _Fetcher(options, progress)
    fetcher.prepare()
    lock = lockfile.read(options.lock_path)
    plans: dict[str, lockfile.LockedImage] = {}
    for image in images:
        pinned = None if options.refresh else _pinned(image, lock.get(image.id))
        if pinned is None and options.locked:
            raise FetchError(f"{image.id}: --locked, but versions.lock has no current entry for it; run `inv lock`")
        if options.offline and not options.locked:  # --locked takes the lock's word for what it leaves out
            _refuse_offline_gaps(image, pinned, lock.get(image.id), options)
        if pinned is None:
            earlier = lock.get(image.id)  # a time chosen for the entry's layers stays when its inputs change
            pinned = lockfile.LockedImage(inputs=lockfile.inputs_of(image), installer=image.installer,
                                          wheels=image.wheels or fetcher.derive_wheels(image), closure=None,
                                          source_date_epoch=earlier.source_date_epoch if earlier
                                          else DEFAULT_SOURCE_DATE_EPOCH)
        plans[image.id] = pinned
        if image.stack.requirements and (pinned.stack is None or pinned is not lock.get(image.id)) \
                and not options.locked:
            fetcher.may_ask_index(image, _stack_of(image))
            pip_resolver.refuse_pinned_torch_needs(image, scratch_parent=fetcher.cache.incoming)
    first = fetcher.many([(artifact, image_id) for image_id, plan in plans.items()
                          for artifact in (plan.installer, *plan.wheels)])
    results: list[FetchedImage] = []
    changes: dict[str, lockfile.LockedImage] = {}
    for image in images:
        plan = plans[image.id]
        wheels = tuple(first[wheel.url] for wheel in plan.wheels)
        _refuse_cuda_build(image, wheels)
        fresh = plan is not lock.get(image.id)
        resolved = _resolved(image, plan, wheels, fresh=fresh, options=options, fetcher=fetcher)
        rest = fetcher.many([(artifact, image.id) for artifact in
                             (*(resolved.closure or ()), *(resolved.stack or ()), *(resolved.tools or ()))])
        stack = tuple(rest[artifact.url] for artifact in resolved.stack or ())
        _check_hashes(image, rest.values())
        build_deps = resolved.build_deps
        sdists = [item for item in stack if sources.is_sdist(item.filename)]
        if sdists and (fresh or not build_deps) and not options.locked:
            requirements = sources.build_requirements(sdists)
            if requirements:  # read from the cached sdists; only looking them up asks the index
                fetcher.may_ask_index(image, f"the wheels that building {', '.join(item.filename for item in sdists)}"
                                             f" needs ({', '.join(requirements)})")
            build_deps = pip_resolver.resolve_build_requirements(image, requirements,
                                                                 scratch_parent=fetcher.cache.incoming)
        built = fetcher.many([(artifact, image.id) for artifact in build_deps])
        results.append(FetchedImage(
            image=image,
            installer=first[plan.installer.url],
            wheels=wheels,
            closure=None if resolved.closure is None else tuple(rest[artifact.url] for artifact in resolved.closure),
            stack=stack,
            build_deps=tuple(built[artifact.url] for artifact in build_deps),
            tools=tuple(rest[artifact.url] for artifact in resolved.tools or ()),
            source_date_epoch=plan.source_date_epoch,
        ))
        unsized = any(artifact.size is None for artifact in replace(resolved, build_deps=build_deps).artifacts)
        if fresh or resolved != replace(plan, build_deps=build_deps) or (unsized and not options.locked):
            changes[image.id] = replace(
                plan,
                installer=_as_artifact(first[plan.installer.url]),
                wheels=tuple(_as_artifact(wheel) for wheel in wheels),
                closure=None if resolved.closure is None else tuple(_as_artifact(rest[a.url])
                                                                    for a in resolved.closure),
                stack=None if resolved.stack is None else tuple(_as_artifact(item) for item in stack),
                build_deps=tuple(_as_artifact(built[a.url]) for a in build_deps),
                tools=None if resolved.tools is None else tuple(_as_artifact(rest[a.url]) for a in resolved.tools),
            )
    if changes and options.offline:
        # --offline changes no pin: the entry fetched from versions.yaml's own pins stays to be locked online.
        for image_id in changes:
            if plans[image_id] is not lock.get(image_id):
                log.warning("%s: versions.lock not updated (--offline pins nothing); `inv fetch` online pins its "
                            "entry", image_id)
        changes = {}
    if changes:
        lockfile.update(options.lock_path, changes, guard=options.cache_dir / "versions-lock.flock")
    summary = FetchSummary(fetched=fetcher.fetched, reused=fetcher.reused, bytes_transferred=fetcher.bytes,
                           seconds=time.monotonic() - started, lock_updated=tuple(changes))
    return results, summary


def _resolved(image: ImageSpec, plan: lockfile.LockedImage, wheels: Sequence[FetchedFile], *, fresh: bool,
              options: FetchOptions, fetcher: _Fetcher) -> lockfile.LockedImage:
    """The plan with its dependency closure and its stack resolved where versions.lock does not pin them yet.

    A closure missing from the lock (pip failed, or an earlier --no-closure) is tried again; a stack is resolved
    together with the torch family, which may move the closure's versions (the stack's layer then never replaces
    a file of the torch layer)."""
    closure, stack, tools = plan.closure, plan.stack, plan.tools
    scratch = fetcher.cache.incoming
    if options.closure and (fresh or closure is None) and not options.locked:
        fetcher.may_ask_index(image, "the dependency wheels of torch")
        closure = pip_resolver.resolve(image, wheels, scratch_parent=scratch)
    # The install tool serves only an install without an index: with the closure, looked for once.
    if closure is None:
        tools = None
    elif (fresh or tools is None) and not options.locked:
        if pip_resolver.serves_tool(image):
            fetcher.may_ask_index(image, _TOOL)
        tools = pip_resolver.resolve_tools(image, scratch_parent=scratch)
    plan = replace(plan, tools=tools)
    if not image.stack.requirements:
        return replace(plan, closure=closure, stack=None, build_deps=())
    if stack is not None and not fresh:
        return replace(plan, closure=closure)
    if options.locked:
        raise FetchError(f"{image.id}: --locked, but versions.lock pins no stack for it; run `inv lock`")
    if closure is None:
        why = "--no-closure leaves them out" if not options.closure else "pip could not resolve them (the " \
              "warning above says why)"
        raise FetchError(f"{image.id}: a stack is installed only from files pinned in versions.lock, resolved with "
                         f"the dependency wheels of torch, and {why}")
    fetcher.may_ask_index(image, _stack_of(image))
    resolution = pip_resolver.resolve_stack(image, wheels, closure, scratch_parent=scratch)
    return replace(plan, closure=resolution.closure, stack=resolution.stack, build_deps=())


def _refuse_cuda_build(image: ImageSpec, wheels: Iterable[FetchedFile]) -> None:
    """An image without CUDA (CPU, Ascend) gets torch's CPU build: a torch wheel that depends on NVIDIA's CUDA
    wheels on the image's platform is refused, from its own metadata, before anything else is resolved."""
    if not image.is_cpu:
        return
    for wheel in wheels:
        if wheel_distribution(wheel.filename) != "torch":
            continue
        problem = cuda_build_problem(wheel.filename, sources.wheel_requires(wheel), python=image.python,
                                     arch=image.arch)
        if problem:
            raise ConfigError(f"{image.id}: {problem} (the entry's {image.accelerator.described})")


def _check_hashes(image: ImageSpec, resolved: Iterable[FetchedFile]) -> None:
    """A requirements file's `--hash` values, honoured: the file a requirement resolved to must be one of them,
    whether it went into the stack's layer or, being a dependency of torch too, into the torch layer's."""
    by_project = {sources.project_of(item.filename): item for item in resolved}
    for requirement in image.stack.requirements:
        item = by_project.get(requirement.name)
        if requirement.hashes and item is not None and item.sha256 not in requirement.hashes:
            raise FetchError(f"{image.id}: {requirement.text} resolved to {item.filename} (sha256 {item.sha256}), "
                             f"which its requirements file does not allow (--hash: {', '.join(requirement.hashes)})")


def _as_artifact(fetched: FetchedFile) -> Artifact:
    """What versions.lock records of a fetched file: its URL, sha256 and size (a later download stops there)."""
    return Artifact(url=fetched.url, sha256=fetched.sha256, size=fetched.path.stat().st_size)


def format_fetched(fetched: Sequence[FetchedImage], summary: FetchSummary) -> str:
    """What fetch did: one line per image, the totals, the images whose lock entry was written."""
    lines = []
    for image in fetched:
        closure = "no dependency wheels" if image.closure is None else f"{len(image.closure)} dependency wheels"
        stack = f", {len(image.stack)} stack files" if image.stack else ""
        tools = "".join(f", {sources.project_of(tool.filename)} to install them" for tool in image.tools)
        lines.append(f"{image.image.id}: installer, {len(image.wheels)} wheels, {closure}{stack}{tools}")
    lines.append(f"fetched {summary.fetched}, reused {summary.reused}, {size(summary.bytes_transferred)} "
                 f"transferred in {summary.seconds:.1f} s")
    if summary.lock_updated:
        lines.append(f"versions.lock: pinned {', '.join(summary.lock_updated)}")
    return "\n".join(lines)

"""What the engine knows of images: whether a base is there, an image's config, its size and layers."""

from __future__ import annotations

import dataclasses
import logging
import re

import docker
import docker.errors
import requests

from modelarts_images.engine.api import BaseImage, BaseImageSource, ImageConfig, ImageSummary, Layer
from modelarts_images.errors import EngineError
from modelarts_images.shared.text import one_line

log = logging.getLogger("modelarts_images.engine")

# Words in the engine's answer that mean its registry could not be reached (rather than lacks the image).
_NETWORK_TROUBLE = ("dial tcp", "no such host", "i/o timeout", "connection refused", "tls handshake",
                    "network is unreachable", "timeout", "eof")


def explanation(error: docker.errors.DockerException | requests.RequestException) -> str:
    """The engine's own words for a failed API call."""
    return str(getattr(error, "explanation", None) or error)


def base_image(client: docker.DockerClient, reference: str, endpoint: str) -> BaseImage:
    """Where the base is: in the engine, in a registry that answers, missing there, or unreachable."""
    try:
        local = client.images.get(reference)
        return BaseImage(reference=reference, source=BaseImageSource.LOCAL, arch=local.attrs.get("Architecture"))
    except docker.errors.ImageNotFound:
        pass
    except (docker.errors.DockerException, requests.RequestException) as error:
        raise EngineError(f"base image {reference}: the engine at {endpoint} did not answer: {error}") from error
    try:
        client.images.get_registry_data(reference)
        return BaseImage(reference=reference, source=BaseImageSource.REGISTRY)
    except (docker.errors.DockerException, requests.RequestException) as error:
        reason = explanation(error)
    trouble = any(word in reason.lower() for word in _NETWORK_TROUBLE)
    return BaseImage(reference=reference, reason=reason,
                     source=BaseImageSource.UNREACHABLE if trouble else BaseImageSource.MISSING)


def image_config(client: docker.DockerClient, reference: str) -> ImageConfig | None:
    """The config of a local image, or None when the engine does not have it."""
    try:
        image = client.images.get(reference)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as error:
        raise EngineError(f"could not inspect image {reference}: {explanation(error)}") from error
    attrs = image.attrs
    config = attrs.get("Config") or {}
    return ImageConfig(
        reference=reference,
        image_id=str(attrs.get("Id", "")),
        user=str(config.get("User") or ""),
        working_dir=str(config.get("WorkingDir") or ""),
        size=int(attrs.get("Size") or 0),
        labels=tuple(sorted((config.get("Labels") or {}).items())),
        environment=tuple(config.get("Env") or ()),
        entrypoint=tuple(config.get("Entrypoint") or ()),
        cmd=tuple(config.get("Cmd") or ()),
        layers=tuple((attrs.get("RootFS") or {}).get("Layers") or ()),
    )


_RUN_ARGS = re.compile(r"^(?:RUN )?\|\d+ (?:\S+=\S* )*?/bin/sh -c ")


def step_of(created_by: str) -> str:
    """The Dockerfile step a history entry records, as written: 'RUN ...', 'COPY ...'."""
    text = " ".join(created_by.split())
    text = text.removesuffix(" # buildkit")
    if text.startswith("/bin/sh -c #(nop) "):
        # the classic builder writes `COPY --chown=1000:100dir:<hash> in <dest>`
        return re.sub(r"^(COPY --chown=\S+?)((?:dir|file|multi):)", r"\1 \2", text.removeprefix("/bin/sh -c #(nop) "))
    if _RUN_ARGS.match(text):
        return "RUN " + _RUN_ARGS.sub("", text, count=1)
    if text.startswith("/bin/sh -c "):
        return "RUN " + text.removeprefix("/bin/sh -c ")
    return text


def image_summary(client: docker.DockerClient, image_id: str, *, base_image: str | None = None, top: int = 5,
                  ) -> ImageSummary:
    """Size and the `top` largest layers of an image; layers of `base_image` are marked as such."""
    try:
        image = client.images.get(image_id)
        size = int(image.attrs["Size"])
        history = image.history()
    except (docker.errors.DockerException, requests.RequestException) as error:
        raise EngineError(f"{image_id}: cannot read the built image back from the engine: {error}") from error
    base_entries = _history_length(client, base_image) if base_image else 0
    entries = []  # oldest first
    for index, entry in enumerate(reversed(history)):
        step = step_of(str(entry.get("CreatedBy") or "")) or str(entry.get("Comment") or "(no record)")
        entries.append(Layer(size=int(entry.get("Size") or 0), step=one_line(step, 120),
                             from_base=index < base_entries))
    stack = layer_stack(entries, tuple((image.attrs.get("RootFS") or {}).get("Layers") or ()))
    largest = sorted((entry for entry in (stack or entries) if entry.size > 0), key=lambda layer: layer.size,
                     reverse=True)
    return ImageSummary(image_id=image_id, size=size, layers=tuple(largest[:top]), stack=stack)


_MAKES_A_LAYER = ("RUN ", "COPY ", "ADD ", "Imported from")


def layer_stack(entries: list[Layer], diff_ids: tuple[str, ...]) -> tuple[Layer, ...]:
    """The history entries that made the image's layers, oldest first, each with its diff id.

    The engine's history does not say which entries are empty (ENV, USER, LABEL) and which made a layer; a RUN,
    COPY, ADD or any entry with a size did, and a WORKDIR did where BuildKit wrote an (empty) layer for it. When
    neither reading gives as many entries as there are layers, the layers are listed by diff id alone."""
    made = [entry for entry in entries if entry.size > 0 or entry.step.startswith(_MAKES_A_LAYER)]
    if len(made) != len(diff_ids):
        made = [entry for entry in entries
                if entry.size > 0 or entry.step.startswith((*_MAKES_A_LAYER, "WORKDIR "))]
    if len(made) != len(diff_ids):
        return tuple(Layer(size=0, step="", from_base=False, diff_id=diff_id) for diff_id in diff_ids)
    return tuple(dataclasses.replace(entry, diff_id=diff_id) for entry, diff_id in zip(made, diff_ids, strict=True))


def _history_length(client: docker.DockerClient, reference: str) -> int:
    """How many history entries the base has; 0 when the engine does not list it, which is the case for a base
    BuildKit pulled into its own store: the layers are then shown without telling the base's apart."""
    try:
        return len(client.images.get(reference).history())
    except (docker.errors.DockerException, requests.RequestException) as error:
        log.debug("no history for base %s (%s): its layers are not marked", reference, error)
        return 0

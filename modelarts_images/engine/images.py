"""What the engine knows of images: whether a base is there, an image's config, its size and layers."""

from __future__ import annotations

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
        client.images.get(reference)
        return BaseImage(reference=reference, source=BaseImageSource.LOCAL)
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
    layers = []
    for index, entry in enumerate(history):  # newest first; the base's entries are the oldest
        from_base = index >= len(history) - base_entries
        step = step_of(str(entry.get("CreatedBy") or "")) or str(entry.get("Comment") or "(no record)")
        if int(entry.get("Size") or 0) > 0:
            layers.append(Layer(size=int(entry["Size"]), step=one_line(step, 120), from_base=from_base))
    layers.sort(key=lambda layer: layer.size, reverse=True)
    return ImageSummary(image_id=image_id, size=size, layers=tuple(layers[:top]))


def _history_length(client: docker.DockerClient, reference: str) -> int:
    """How many history entries the base has; 0 when the engine does not list it, which is the case for a base
    BuildKit pulled into its own store: the layers are then shown without telling the base's apart."""
    try:
        return len(client.images.get(reference).history())
    except (docker.errors.DockerException, requests.RequestException) as error:
        log.debug("no history for base %s (%s): its layers are not marked", reference, error)
        return 0

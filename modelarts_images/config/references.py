"""Image references and tags: naming rules that need no network."""

from __future__ import annotations

from modelarts_images.model import Accelerator


def derived_tag(*, torch: str, cuda: str) -> str:
    """The tag an entry gets when it names none: '1.8.1-cuda10.2', '2.5.1-cpu'."""
    return f"{torch}-{Accelerator.of(cuda).label}"

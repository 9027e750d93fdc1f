"""Image references and tags: naming rules that need no network."""

from __future__ import annotations

from modelarts_images.model import Accelerator


def derived_tag(*, torch: str, accelerator: Accelerator) -> str:
    """The tag an entry gets when it names none: '1.8.1-cuda10.2', '2.5.1-cpu', '2.6.0-cann8.2.RC1-910b'."""
    return f"{torch}-{accelerator.label}"
